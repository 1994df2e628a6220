"""HSS (stateful hash-based) signatures under chaos: the one-time-key check.

Four hsm-nodes; an lms-hss key made while hsm-4 is down. Under steady load, nodes are
SIGKILLed, SIGSTOPped (hung, then resumed on the lease they held), restarted (memory
gone: they lease afresh), and hsm-4 joins mid-run with a copy the backup service
restores onto it (wrap on a holder, unwrap on hsm-4: what a backup restore calls).

Then every signature every node made is collected from the nodes' replay records (the
ones in results and the ones a failover made twice), each is verified by a second
implementation (hsslms, not the pyhsslms the nodes sign with), and the one-time keys
are read from the signatures themselves: no (tree, leaf) may have signed two different
things, no global index may appear in two signatures. The ledger says how many indices
were leased; what was leased and never used is burned (dead nodes, replaced leases).

The CI test runs one short cycle; ``lantau chaos --hss --seconds 120`` (or
``make chaos-hss``) runs many.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import hsslms
import msgspec
from nats.aio.client import Client

from devkit.chaos import ChaosReport, Fault, chaos_requester, run_chaos
from devkit.stack import DevStack
from libs.bus.permissions import OPERATOR
from libs.client import CustodyClient
from libs.hsm.sealed_store import KvIndexLedger
from libs.keys.directory import KeyDirectory
from libs.keytypes import kinds, lms
from libs.keytypes.lms_state import IndexState
from proto.common import HssShape, PayloadKind
from proto.results import SignResult

# 3 levels of height 5: 32 768 signatures; a lease is one top-level subtree (1 024), so a
# node that dies burns at most 1 024, and opening a lease builds trees of 32 leaves only.
SHAPE = HssShape(levels=3, height=5, winternitz=4)
CYCLE_S = 12.0
_SIGNATURES = msgspec.msgpack.Decoder(list[bytes])


def faults(duration_s: float, nodes: tuple[str, ...] = ("hsm-1", "hsm-2", "hsm-3")) -> list[Fault]:
    """One cycle per CYCLE_S: kill one node, hang another, bring the fresh hsm-4 in (the
    first cycle), resume the hung one, restart the killed one, kill and restart a third.
    Every node is running again at the end of each cycle."""
    out: list[Fault] = []
    cycle = 0
    while cycle * CYCLE_S + 11 < duration_s:
        at = cycle * CYCLE_S
        a, b, c = (nodes[(cycle + i) % len(nodes)] for i in range(3))
        out += [
            Fault(at + 1.5, "kill", a),
            Fault(at + 3.0, "stop", b),
            Fault(at + 6.0, "cont", b),
            Fault(at + 7.0, "restart", a),
            Fault(at + 9.0, "kill", c),
            Fault(at + 10.5, "restart", c),
        ]
        if cycle == 0:
            out.append(Fault(at + 4.0, "restart", "hsm-4"))
        cycle += 1
    return sorted(out, key=lambda f: f.at_s)


@dataclass
class HssChaosReport:
    chaos: ChaosReport
    key_id: str
    public_key: bytes
    total: int
    # Every signature any node made (its replay record), and how many are in results.
    signatures_made: int = 0
    signatures_in_results: int = 0
    second_opinion_failed: int = 0
    unmatched: int = 0  # made for a request whose payload the run never saw signed
    indices_used: int = 0
    reused_indices: int = 0
    reused_one_time_keys: int = 0
    leased: int = 0
    outstanding: int = 0  # inside live leases, above what their nodes used
    burned: int = 0
    signatures_left: int = 0
    leases_granted: int = 0
    killed: list[str] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    joined_with_copy: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        c = self.chaos
        return (
            c.lost == c.duplicates == c.failed == c.unverified == 0
            and self.second_opinion_failed == self.reused_indices == 0
            and self.reused_one_time_keys == 0
            and self.signatures_made >= self.signatures_in_results > 0
        )

    def lines(self) -> list[str]:
        c = self.chaos
        return [
            *c.lines(),
            f"HSS key {self.key_id} ({SHAPE.levels} levels of height {SHAPE.height}, "
            f"W{SHAPE.winternitz}: {self.total} signatures)",
            f"signatures made by the nodes {self.signatures_made} ({self.signatures_in_results}"
            f" in results, the rest made twice by a failover), verified by hsslms: "
            f"{self.signatures_made - self.second_opinion_failed} of {self.signatures_made}",
            f"one-time indices used {self.indices_used}, used twice {self.reused_indices}; "
            f"one-time keys (tree, leaf) that signed two different things "
            f"{self.reused_one_time_keys}",
            f"leased {self.leased} in {self.leases_granted} leases: used {self.indices_used}, "
            f"burned {self.burned}, still in live leases {self.outstanding}; "
            f"{self.signatures_left} never leased",
            f"nodes killed {self.killed}, hung {self.hung}, restarted {self.restarted}, "
            f"joined with a restored copy {self.joined_with_copy}",
        ]


def _payload(name: str) -> tuple[bytes, PayloadKind]:
    return f"hss chaos {name}".encode(), "message"


def _second_opinion(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        hsslms.HSS_Pub(public).verify(message, signature)
    except Exception:  # hsslms signals rejection with exceptions
        return False
    return True


def replay_signatures(stack: DevStack) -> list[tuple[str, str, bytes]]:
    """(node, request key, signature) for every signature each node's replay record holds."""
    made = []
    for node in stack.config.hsm_nodes:
        path = Path(node.state_dir or "") / "replay.sqlite"
        if not path.exists():
            continue
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for request_key, blob in db.execute("select request_id, signature from signed"):
                made += [(node.id, request_key, s) for s in _SIGNATURES.decode(blob)]
        finally:
            db.close()
    return made


async def _wait_down(stack: DevStack, node: str, timeout_s: float = 10.0) -> None:
    from services.cli.hsm_admin import pool_status

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        views = await pool_status(stack.config, wait_s=0.2, config_path=str(stack.config_path))
        states = {n.node_id: n.state for v in views for n in v.nodes}
        if states.get(node) in ("down", "suspect"):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the signer never saw {node} down")


async def run_hss_chaos(
    stack: DevStack,
    clients: list[CustodyClient],
    *,
    duration_s: float,
    key_id: str,
    in_flight_per_client: int = 6,
) -> HssChaosReport:
    """Run the scenario on a stack of four nodes; the report says what held."""
    stack.service("hsm-4").kill()  # the fresh node that joins mid-run with a copy
    await _wait_down(stack, "hsm-4")
    created = await clients[0].create_key(key_id, "lms-hss", hss=SHAPE)
    if created.status != "created" or created.public_key is None:
        raise RuntimeError(f"cannot create {key_id}: {created.error}")
    public = created.public_key
    # The key directory and the ledger are not the requester's to read: as the operator.
    operator = await stack.connect_as(OPERATOR)
    try:
        return await _run(
            stack, clients, operator, key_id, public, duration_s, in_flight_per_client
        )
    finally:
        await operator.close()


async def _run(
    stack: DevStack,
    clients: list[CustodyClient],
    operator: Client,
    key_id: str,
    public: bytes,
    duration_s: float,
    in_flight_per_client: int,
) -> HssChaosReport:
    js = operator.jetstream()
    directory = await KeyDirectory.open(js)
    # Generous: seconds on a quiet machine, much longer on a loaded CI runner.
    deadline = time.monotonic() + 90
    while True:  # the backup service clones it to the three live nodes first
        record, _ = await directory.get(key_id, fresh=True)
        if record is not None and {"hsm-1", "hsm-2", "hsm-3"} <= set(record.nodes):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{key_id} was not cloned to hsm-1..3 within 90 s")
        await asyncio.sleep(0.2)
    params = kinds.hss_parameters(SHAPE)
    schedule = faults(duration_s)
    chaos = await run_chaos(
        stack,
        clients,
        key_id,
        schedule,
        duration_s=duration_s,
        in_flight_per_client=in_flight_per_client,
        payload_for=_payload,
        verify=lambda r, m: r.signature is not None and _second_opinion(public, m, r.signature),
    )
    report = HssChaosReport(chaos, key_id, public, lms.total_signatures(params))
    report.killed = [f.target for f in schedule if f.action == "kill"]
    report.hung = [f.target for f in schedule if f.action == "stop"]
    report.restarted = [f.target for f in schedule if f.action == "restart" and f.target != "hsm-4"]
    record, _ = await directory.get(key_id, fresh=True)
    if record is not None and "hsm-4" in record.nodes and chaos.by_node.get("hsm-4", 0):
        report.joined_with_copy = ["hsm-4"]
    used = _check_signatures(report, stack, params, chaos.results)
    state, _ = await KvIndexLedger(js).read(key_id)
    if state is not None:
        report.leased = state.next_unleased
        report.signatures_left = state.total - state.next_unleased
        report.leases_granted = state.next_unleased // state.alignment
        _burned(report, state, used)
    return report


def _check_signatures(
    report: HssChaosReport,
    stack: DevStack,
    params: lms.HssParameters,
    results: dict[str, tuple[bytes, SignResult]],
) -> list[int]:
    """Check every signature the nodes made; the one-time indices they used."""
    message_of = {request_id: payload for request_id, (payload, _) in results.items()}
    in_results = {r.signature for _, r in results.values() if r.signature is not None}
    made: dict[bytes, str] = {}
    for _node, request_key, signature in replay_signatures(stack):
        made[signature] = request_key.split(".", 1)[1]
    report.signatures_made = len(made)
    report.signatures_in_results = len(in_results & set(made))
    by_index: dict[int, set[bytes]] = defaultdict(set)
    by_key: dict[tuple[bytes, int], set[bytes]] = defaultdict(set)
    for signature, request_id in made.items():
        message = message_of.get(request_id)
        if message is None:
            report.unmatched += 1
        elif not _second_opinion(report.public_key, message, signature):
            report.second_opinion_failed += 1
        by_index[lms.signature_index(params, signature)].add(signature)
        for ident, leaf, ots in lms.one_time_keys(report.public_key, signature):
            by_key[(ident, leaf)].add(ots)
    report.indices_used = len(by_index)
    report.reused_indices = sum(len(v) > 1 for v in by_index.values())
    report.reused_one_time_keys = sum(len(v) > 1 for v in by_key.values())
    return sorted(by_index)


def _burned(report: HssChaosReport, state: IndexState, used: list[int]) -> None:
    """Leased but never used, and never usable again: ranges of nodes that died or were
    replaced. Indices above a live lease's last use may still be signed with."""
    outstanding = 0
    for lease in state.leases:
        inside = [i for i in used if lease.start <= i < lease.end]
        outstanding += lease.end - (max(inside) + 1 if inside else lease.start)
    report.outstanding = outstanding
    report.burned = max(0, report.leased - report.indices_used - outstanding)


async def hss_chaos_demo(run_dir: Path, duration_s: float) -> int:
    """``lantau chaos --hss``: the scenario on a fresh four-node dev stack, with its report."""

    from devkit.stack import start_platform

    key, requester = chaos_requester()
    print(f"starting a 4-node dev stack in {run_dir} ...", flush=True)
    stack = await start_platform(run_dir, nodes=4, requesters=[requester])
    clients = [
        await CustodyClient.connect(
            stack.config.nats.servers, "chaos", key, **stack.requester_options("chaos")
        )
        for _ in range(3)
    ]
    try:
        report = await run_hss_chaos(stack, clients, duration_s=duration_s, key_id="chaos-hss")
        print("\n".join(report.lines()), flush=True)
        return 0 if report.ok() else 1
    finally:
        for c in clients:
            await c.close()
        await stack.stop()
