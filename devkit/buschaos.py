"""Chaos on the bus: a three-server NATS cluster losing a server under load.

Each scenario runs sign requests from independent clients (``devkit.chaos.run_chaos``)
while one fault plays on the cluster, then checks what a custody platform must keep:
every request answered once (none lost, none duplicated), every signature verified
outside the platform, no request signed twice by the HSMs, and the audit trail intact
(``lantau audit verify`` with its pinned keys and witness). The tests
(``tests/cluster/test_bus_chaos.py``) and ``lantau chaos --bus`` run the same scenarios.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devkit.chaos import (
    ALL_SERVERS,
    META_LEADER,
    ORDERS_LEADER,
    ChaosReport,
    Fault,
    chaos_requester,
    hsm_signatures,
    run_chaos,
    wait_replicated,
)
from devkit.stack import DevStack
from libs.client import CustodyClient

# A frozen server is held longer than every heartbeat that could notice it: the clients'
# pings (2 s, stale after 3: about 6 s) and the raft election timeout (4-9 s).
FREEZE_S = 10.0
# The long version (``LANTAU_CHAOS_LONG=1``, ``make chaos-bus``) stretches every time.
LONG_SCALE = 4.0


@dataclass(frozen=True)
class BusScenario:
    name: str
    title: str
    faults: tuple[Fault, ...]
    duration_s: float


def bus_scenarios(scale: float = 1.0) -> dict[str, BusScenario]:
    """The five scenarios, by name; ``scale`` stretches load and outages alike."""

    def at(t: float) -> float:
        return round(t * scale, 2)

    kill_then_back = (4.0, 8.0)
    return {
        s.name: s
        for s in (
            BusScenario(
                "meta-leader",
                "SIGKILL the JetStream meta leader, restart it on its store",
                (
                    Fault(at(2.0), "kill", META_LEADER),
                    Fault(at(2.0 + kill_then_back[0]), "restart", META_LEADER),
                ),
                at(2.0 + kill_then_back[1]),
            ),
            BusScenario(
                "orders-leader",
                "SIGKILL the leader of LANTAU_ORDERS, restart it on its store",
                (
                    Fault(at(2.0), "kill", ORDERS_LEADER),
                    Fault(at(2.0 + kill_then_back[0]), "restart", ORDERS_LEADER),
                ),
                at(2.0 + kill_then_back[1]),
            ),
            BusScenario(
                "freeze",
                f"SIGSTOP the leader of LANTAU_ORDERS for {FREEZE_S:g} s, then SIGCONT",
                (
                    Fault(at(2.0), "stop", ORDERS_LEADER),
                    Fault(at(2.0) + FREEZE_S, "cont", ORDERS_LEADER),
                ),
                at(2.0) + FREEZE_S + at(4.0),
            ),
            BusScenario(
                "rolling",
                "rolling restart of all three servers, each caught up before the next",
                (Fault(at(2.0), "rolling", ALL_SERVERS),),
                at(8.0),
            ),
            BusScenario(
                "wipe",
                "SIGKILL the leader of LANTAU_ORDERS, delete its store, start it empty",
                (Fault(at(2.0), "wipe", ORDERS_LEADER),),
                at(10.0),
            ),
        )
    }


def scale_from_env() -> float:
    return LONG_SCALE if os.environ.get("LANTAU_CHAOS_LONG") else 1.0


@dataclass
class AuditCheck:
    ok: bool
    output: str


@dataclass
class BusChaosResult:
    scenario: BusScenario
    report: ChaosReport
    # Requests signed by two HSM nodes: an attempt whose answer the bus lost fails over
    # to another node (docs/architecture.md); allowed when each is on the record.
    two_nodes: dict[str, list[str]] = field(default_factory=dict)
    # What must never happen: a node signing one request twice, or a signature with no
    # audit intent naming its node.
    signed_twice: dict[str, list[str]] = field(default_factory=dict)
    unrecorded: list[str] = field(default_factory=list)
    audit: AuditCheck | None = None

    @property
    def added_latency_ms(self) -> float:
        return max((f.added_latency_ms for f in self.report.faults), default=0.0)

    @property
    def clean(self) -> bool:
        r = self.report
        return (
            r.lost == r.duplicates == r.unverified == 0
            and not self.signed_twice
            and not self.unrecorded
            and self.audit is not None
            and self.audit.ok
        )

    def lines(self) -> list[str]:
        r = self.report
        audit = "not run" if self.audit is None else ("OK" if self.audit.ok else "FAILED")
        out = [
            f"== {self.scenario.name}: {self.scenario.title}",
            f"sent {r.sent}, signed {r.signed}, failed {r.failed}, lost {r.lost}, "
            f"duplicated {r.duplicates}, unverified {r.unverified}; signed twice by a node "
            f"{len(self.signed_twice)}, signatures without an intent {len(self.unrecorded)}, "
            f"failed over to a second node {len(self.two_nodes)}; added latency of requests "
            f"in flight +{self.added_latency_ms:.0f} ms; lantau audit verify {audit}",
            *r.lines()[1:],
        ]
        if self.audit is not None and not self.audit.ok:
            out.append(self.audit.output)
        return out


async def _keys_for_verify(stack: DevStack) -> tuple[bytes, bytes]:
    """(record key, checkpoint key): what an auditor pins, read as the operator would."""
    from libs.audit import keyfile
    from libs.bus.permissions import OPERATOR
    from libs.keys.directory import KeyDirectory
    from proto.subjects import AUDIT_CHECKPOINT_KEY

    assert stack.config.audit.record_key_file
    record = keyfile.load(stack.config.audit.record_key_file).public_key
    nc = await stack.connect_as(OPERATOR)
    try:
        directory = await KeyDirectory.open(nc.jetstream())
        for _ in range(300):
            found, _ = await directory.get(AUDIT_CHECKPOINT_KEY, fresh=True)
            if found is not None and found.public_key:
                return record, found.public_key
            await asyncio.sleep(0.2)
    finally:
        await nc.close()
    raise RuntimeError("the audit service never made its checkpoint key")


async def _caught_up(stack: DevStack, record: bytes, checkpoint: bytes, timeout_s: float) -> str:
    """Wait until the trail records every message its source streams held when asked, under
    a checkpoint (devkit/auditrest.py); returns what was still missing when time ran out
    ("" when caught up)."""
    from devkit import auditrest
    from libs.audit.trail import Keys
    from libs.bus.permissions import OPERATOR
    from proto.subjects import AUDIT_SOURCE_STREAMS

    keys = Keys(frozenset({record}), (checkpoint,))
    nc = await stack.connect_as(OPERATOR)
    js = nc.jetstream()
    behind = "nothing read yet"
    expected: list[tuple[str, int]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if not expected:
                    for s in AUDIT_SOURCE_STREAMS:
                        expected.append((s.name, (await js.stream_info(s.name)).state.last_seq))
                behind = await auditrest.behind(js, keys, expected)
            except Exception as e:  # a server still catching up: ask again
                expected.clear()
                behind = f"cannot read yet ({type(e).__name__}: {e})"
                await asyncio.sleep(0.5)
                continue
            if not behind:
                return ""
            await asyncio.sleep(0.5)
    finally:
        await nc.close()
    return behind


async def audit_verify(stack: DevStack, timeout_s: float = 90.0) -> AuditCheck:
    """``lantau audit verify`` as an auditor runs it (pinned keys, the witness), once the
    trail has caught up with every source stream."""
    record, checkpoint = await _keys_for_verify(stack)
    behind = await _caught_up(stack, record, checkpoint, timeout_s)
    argv = [
        sys.executable,
        "-m",
        "services.cli.main",
        "audit",
        "verify",
        "--config",
        str(stack.config_path),
        "--trusted-key",
        checkpoint.hex(),
        "--record-key",
        record.hex(),
    ]
    for sink in stack.config.audit.witness_files:
        argv += ["--witness", sink]
    proc = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, check=False, timeout=180
    )
    output = (proc.stdout + proc.stderr).strip()
    ok = proc.returncode == 0 and proc.stdout.startswith("OK") and not behind
    if behind:
        output = f"the trail did not catch up within {timeout_s:.0f} s: {behind}\n{output}"
    return AuditCheck(ok, output)


async def run_bus_scenario(
    stack: DevStack,
    clients: list[CustodyClient],
    scenario: BusScenario,
    key_id: str,
    *,
    in_flight_per_client: int = 8,
) -> BusChaosResult:
    """Create ``key_id``, put load on the platform while the scenario's faults play, then
    count and verify everything; the stack must run a NATS cluster."""
    if stack.cluster is None:
        raise ValueError("bus chaos needs a NATS cluster: start_platform(nats_cluster=3)")
    created = await clients[0].create_key(key_id, "secp256k1")
    if created.status != "created":
        raise RuntimeError(f"cannot create {key_id}: {created.error}")
    await wait_replicated(clients[0], stack, key_id)
    report = await run_chaos(
        stack,
        clients,
        key_id,
        list(scenario.faults),
        duration_s=scenario.duration_s,
        in_flight_per_client=in_flight_per_client,
    )
    # Every server back (a scenario ends with all of them up) before the audit is read.
    for server in stack.cluster.servers:
        if not server.proc.alive:
            await asyncio.to_thread(stack.cluster.start_server, server.name)
    made = hsm_signatures(stack)
    result = BusChaosResult(
        scenario,
        report,
        two_nodes={k: n for k, n in made.items() if len(n) > 1},
        signed_twice={k: n for k, n in made.items() if len(set(n)) < len(n)},
        unrecorded=await unrecorded_signatures(stack, made),
    )
    result.audit = await audit_verify(stack)
    return result


async def unrecorded_signatures(stack: DevStack, made: dict[str, list[str]]) -> list[str]:
    """Requests an HSM node signed without a durable audit intent naming that node."""
    from libs.bus.permissions import OPERATOR
    from proto import codec
    from proto.subjects import AUDIT, AUDIT_INTENT, intent_subject

    nc = await stack.connect_as(OPERATOR)
    try:
        js = nc.jetstream()
        info = await js.stream_info(AUDIT.name, subjects_filter=f"{AUDIT_INTENT}.>")
        with_intents = set(info.state.subjects or {})
        missing = []
        for key, nodes in made.items():
            requester, request_id = key.split(".", 1)
            subject = intent_subject(requester, request_id)
            if subject not in with_intents:
                missing.append(key)
                continue
            raw = await js.get_last_msg(AUDIT.name, subject)
            last = codec.AUDIT_INTENT.decode(raw.data or b"")
            if not set(nodes) <= {*last.earlier_nodes, last.node}:
                missing.append(key)
        return missing
    finally:
        await nc.close()


async def chaos_bus_demo(run_dir: Path, names: list[str], scale: float = 1.0) -> int:
    """``lantau chaos --bus``: each scenario on a fresh dev stack with a 3-server cluster."""
    import shutil

    from devkit.stack import start_platform

    scenarios = bus_scenarios(scale)
    unknown = [n for n in names if n not in scenarios]
    if unknown:
        print(f"unknown scenario(s) {unknown}; choose from {sorted(scenarios)}", file=sys.stderr)
        return 2
    results: list[BusChaosResult] = []
    for name in names or list(scenarios):
        scenario = scenarios[name]
        key, requester = chaos_requester()
        where = run_dir / name
        shutil.rmtree(where, ignore_errors=True)
        print(
            f"\n{scenario.name}: starting a dev stack with a 3-server NATS cluster ...", flush=True
        )
        stack = await start_platform(where, nodes=3, requesters=[requester], nats_cluster=3)
        clients = []
        try:
            servers = stack.config.nats.servers
            options = stack.requester_options("chaos")
            clients = [
                await CustodyClient.connect(servers, "chaos", key, **options) for _ in range(3)
            ]
            print(f"{scenario.title}; load for {scenario.duration_s:g} s ...", flush=True)
            result = await run_bus_scenario(stack, clients, scenario, "chaos-bus")
            results.append(result)
            print("\n".join(result.lines()), flush=True)
        finally:
            for c in clients:
                await c.close()
            await stack.stop()
    print("\n" + summary_table(results), flush=True)
    return 0 if all(r.clean for r in results) else 1


def summary_table(results: list[BusChaosResult]) -> str:
    lines = [
        f"{'scenario':<14}{'sent':>6}{'signed':>8}{'failed':>8}{'lost':>6}{'dup':>5}"
        f"{'+ms':>7}{'worst ms':>10}  audit verify"
    ]
    for r in results:
        rep = r.report
        lines.append(
            f"{r.scenario.name:<14}{rep.sent:>6}{rep.signed:>8}{rep.failed:>8}{rep.lost:>6}"
            f"{rep.duplicates:>5}{r.added_latency_ms:>7.0f}{rep.max_ms:>10.0f}  "
            + ("OK" if r.audit and r.audit.ok else "FAILED")
        )
    return "\n".join(lines)
