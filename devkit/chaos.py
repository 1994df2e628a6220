"""Load with faults injected: the chaos tests and ``lantau chaos`` share this runner.

Several clients keep a steady number of sign requests in flight; faults (SIGKILL,
SIGSTOP, SIGCONT, restart of hsm-nodes or NATS servers) fire at set times. Every request
is followed to its terminal result and checked: exactly one result, signature verified
independently, no request lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing

from devkit.stack import DevStack
from libs.bus.permissions import OPERATOR
from libs.client import CustodyClient, CustodyError, RequestIdConflict, ResultTimeout
from libs.config import RequesterConfig
from proto.common import PayloadKind
from proto.results import SignResult
from proto.subjects import ORDERS, RESULT_PREFIX, RESULTS, result_subject

Action = str  # "kill" | "stop" | "cont" | "restart"; for NATS also "wipe" and "rolling"
# NATS targets: "nats" (the one server of a single-server stack), a cluster server by name
# ("nats-2"), or the server leading at the first fault that names it, remembered for the
# rest of the run (a later "restart" brings back the same one): "nats:meta-leader" (the
# JetStream meta leader), "nats:orders-leader" (the leader of LANTAU_ORDERS). "wipe":
# SIGKILL, delete the server's store, start it empty. "rolling" on "nats:all": restart
# every server in turn (SIGTERM, start, wait until it caught up).
META_LEADER = "nats:meta-leader"
ORDERS_LEADER = "nats:orders-leader"
ALL_SERVERS = "nats:all"


@dataclass(frozen=True)
class Fault:
    at_s: float
    action: Action
    target: str


@dataclass
class Outcome:
    request_id: str
    sent_at: float
    done_at: float | None = None
    status: str | None = None
    node: str | None = None
    verified: bool = False


@dataclass
class FaultReport:
    fault: Fault
    at: float
    in_flight: int = 0
    worst_latency_ms: float = 0.0
    added_latency_ms: float = 0.0
    # The NATS server a fault on a leader or a cluster hit.
    server: str = ""


@dataclass
class ChaosReport:
    sent: int = 0
    signed: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    unverified: int = 0
    baseline_p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    by_node: dict[str, int] = field(default_factory=dict)
    faults: list[FaultReport] = field(default_factory=list)
    signed_after: dict[str, int] = field(default_factory=dict)
    # Every signed result with the payload it signed (request id -> (payload, result)).
    results: dict[str, tuple[bytes, SignResult]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"requests sent {self.sent}, signed {self.signed}, failed {self.failed}, "
            f"lost {self.lost}, duplicates {self.duplicates}, unverified {self.unverified}",
            f"baseline latency p50 {self.baseline_p50_ms:.1f} ms, p99 {self.p99_ms:.0f} ms, "
            f"worst {self.max_ms:.0f} ms; signed per node {self.by_node}",
        ]
        for f in self.faults:
            hit = f" ({f.server})" if f.server and f.server != f.fault.target else ""
            out.append(
                f"{f.fault.action:>7} {f.fault.target}{hit} at {f.fault.at_s:.1f}s: "
                f"{f.in_flight} in flight, worst latency {f.worst_latency_ms:.0f} ms "
                f"(+{f.added_latency_ms:.0f} ms over p50)"
            )
        for node, n in self.signed_after.items():
            if node.startswith("nats"):
                continue
            out.append(f"after its restart {node} signed {n} requests")
        return out


def _verify(result: SignResult, digest: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    if result.signature is None or result.public_key is None:
        return False
    r = int.from_bytes(result.signature[:32], "big")
    s = int.from_bytes(result.signature[32:], "big")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), result.public_key).verify(
            utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
        )
    except InvalidSignature:
        return False
    return True


async def wait_replicated(
    client: CustodyClient, stack: DevStack, key_id: str, timeout_s: float = 90
) -> None:
    """Chaos needs the key on every node first: wait for the backup service's clones."""
    from libs.keys.directory import KeyDirectory

    # The key directory is not the requester's to read: look as the operator.
    nc = await stack.connect_as(OPERATOR)
    try:
        directory = await KeyDirectory.open(nc.jetstream())
        want = {n.id for n in stack.config.hsm_nodes}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            record, _ = await directory.get(key_id, fresh=True)
            if record is not None and want <= set(record.nodes):
                return
            await asyncio.sleep(0.2)
    finally:
        await nc.close()
    raise RuntimeError(f"key {key_id} not replicated to {sorted(want)} within {timeout_s:.0f} s")


_SIGNED = re.compile(r"signed request (\S+) with key")


def hsm_signatures(stack: DevStack) -> dict[str, list[str]]:
    """Every signature the HSM nodes made for a request, by request key: the nodes that
    made them (read from each node's log, one line per signature made)."""
    made: dict[str, list[str]] = {}
    for node in stack.config.hsm_nodes:
        log_path = stack.service(node.id).log_path
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        for match in _SIGNED.finditer(text):
            made.setdefault(match.group(1), []).append(node.id)
    return made


async def run_chaos(
    stack: DevStack,
    clients: list[CustodyClient],
    key_id: str,
    faults: list[Fault],
    *,
    duration_s: float,
    in_flight_per_client: int = 8,
    tick: Callable[[float, list[Outcome]], Awaitable[None]] | None = None,
    payload_for: Callable[[str], tuple[bytes, PayloadKind]] | None = None,
    verify: Callable[[SignResult, bytes], bool] = _verify,
) -> ChaosReport:
    """``payload_for`` makes each request's payload from a unique name (default: its
    SHA-256 as a digest); ``verify`` checks a signed result independently."""
    outcomes: list[Outcome] = []
    digests: dict[str, bytes] = {}
    start = time.monotonic()
    stop_at = start + duration_s
    report = ChaosReport()

    async def one(client: CustodyClient, n: int) -> None:
        name = f"{key_id}-{id(client)}-{n}"
        digest, kind = (
            payload_for(name) if payload_for else (hashlib.sha256(name.encode()).digest(), "digest")
        )
        request = client.sign_request(key_id, digest, payload_kind=kind)
        outcome = Outcome(request.request_id, time.monotonic())
        outcomes.append(outcome)
        digests[request.request_id] = digest
        while True:
            try:
                result = await client.send(request, timeout=60)
                break
            except (ResultTimeout, RequestIdConflict):
                return  # counted as lost unless it turns up when we look again at the end
            except CustodyError:
                # Not accepted (the bus is away): a real client sends the same id again.
                if time.monotonic() > stop_at + 60:
                    return
                await asyncio.sleep(0.2)
        outcome.done_at, outcome.status = time.monotonic(), result.status
        if isinstance(result, SignResult):
            outcome.node = result.node
            outcome.verified = result.status == "signed" and verify(result, digest)
            if result.status == "signed":
                report.results[request.request_id] = (digest, result)

    async def worker(client: CustodyClient, w: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            await one(client, w * 1_000_000 + n)

    def note(fault: Fault, at: float, server: str = "") -> None:
        in_flight = [o for o in outcomes if o.done_at is None]
        report.faults.append(FaultReport(fault, at, in_flight=len(in_flight), server=server))
        fault_in_flight[id(report.faults[-1])] = in_flight

    async def fire() -> None:
        chosen: dict[str, str] = {}
        for fault in sorted(faults, key=lambda f: f.at_s):
            await asyncio.sleep(max(0.0, start + fault.at_s - time.monotonic()))
            now = time.monotonic()
            if fault.target.startswith("nats") and stack.cluster is not None:
                if fault.action == "rolling":
                    for server in stack.cluster.servers:
                        note(Fault(time.monotonic() - start, "restart", server.name), now)
                        await asyncio.to_thread(stack.cluster.restart, server.name)
                        now = time.monotonic()
                    continue
                if fault.target not in chosen:
                    chosen[fault.target] = await asyncio.to_thread(
                        nats_server_for, stack, fault.target
                    )
                name = chosen[fault.target]
                note(fault, now, name)
                await asyncio.to_thread(cluster_fault, stack, fault.action, name)
                continue
            if fault.target == "nats":
                if fault.action == "kill":
                    stack.nats.kill()
                else:  # the same store: what JetStream had acknowledged must still be there
                    await asyncio.to_thread(stack.nats.start)
                note(fault, now)
                continue
            proc = stack.service(fault.target)
            if fault.action == "kill":
                proc.kill()
            elif fault.action == "stop":
                proc.stop()
            elif fault.action == "cont":
                proc.cont()
            elif fault.action == "restart":
                await stack.restart(fault.target, wait_ready=False)
            in_flight = [o for o in outcomes if o.done_at is None]
            report.faults.append(FaultReport(fault, now, in_flight=len(in_flight)))
            fault_in_flight[id(report.faults[-1])] = in_flight

    async def ticker() -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(1.0)
            if tick is not None:
                await tick(time.monotonic() - start, outcomes)

    fault_in_flight: dict[int, list[Outcome]] = {}
    tasks = [
        asyncio.create_task(worker(c, i * in_flight_per_client + j))
        for i, c in enumerate(clients)
        for j in range(in_flight_per_client)
    ]
    await asyncio.gather(fire(), ticker(), *tasks)

    # Anything without a result yet: look again (a result is durable even if we missed it).
    for o in outcomes:
        if o.status is None:
            stored = await clients[0].get_result(o.request_id)
            if stored is not None:
                o.status, o.done_at = stored.status, o.done_at or time.monotonic()
                if isinstance(stored, SignResult):
                    o.node = stored.node
                    o.verified = stored.status == "signed" and verify(stored, digests[o.request_id])
                    if stored.status == "signed":
                        report.results[o.request_id] = (digests[o.request_id], stored)

    report.sent = len(outcomes)
    report.signed = sum(o.status == "signed" for o in outcomes)
    report.lost = sum(o.status is None for o in outcomes)
    report.failed = report.sent - report.signed - report.lost
    report.unverified = sum(o.status == "signed" and not o.verified for o in outcomes)
    counts = await _result_counts(stack)
    requester = clients[0].requester
    report.duplicates = sum(
        max(0, counts.get(result_subject(requester, o.request_id), 0) - 1) for o in outcomes
    )
    for o in outcomes:
        if o.node:
            report.by_node[o.node] = report.by_node.get(o.node, 0) + 1
    first_fault = min((f.at for f in report.faults), default=stop_at)
    calm = [
        (o.done_at - o.sent_at) * 1000 for o in outcomes if o.done_at and o.done_at < first_fault
    ]
    report.baseline_p50_ms = statistics.median(calm) if calm else 0.0
    every = sorted((o.done_at - o.sent_at) * 1000 for o in outcomes if o.done_at)
    if every:
        report.p99_ms = every[max(0, -(-99 * len(every) // 100) - 1)]
        report.max_ms = every[-1]
    for f in report.faults:
        latencies = [(o.done_at - o.sent_at) * 1000 for o in fault_in_flight[id(f)] if o.done_at]
        f.worst_latency_ms = max(latencies, default=0.0)
        f.added_latency_ms = max(0.0, f.worst_latency_ms - report.baseline_p50_ms)
        if f.fault.action == "restart":
            report.signed_after[f.fault.target] = sum(
                o.node == f.fault.target and o.sent_at > f.at for o in outcomes
            )
    return report


def nats_server_for(stack: DevStack, target: str) -> str:
    """The cluster server a NATS target names now (leaders found by /jsz)."""
    cluster = stack.cluster
    assert cluster is not None, "leader targets need a NATS cluster (nats_cluster=3)"
    if target == META_LEADER:
        return cluster.wait_meta_leader(30.0)
    if target == ORDERS_LEADER:
        return cluster.wait_stream_leader(ORDERS.name, 30.0)
    return cluster.server(target).name


def cluster_fault(stack: DevStack, action: Action, name: str) -> None:
    """One fault on one server of the cluster (blocking: run it in a thread)."""
    cluster = stack.cluster
    assert cluster is not None
    if action == "kill":
        cluster.kill(name)
    elif action == "stop":
        cluster.freeze(name)
    elif action == "cont":
        cluster.thaw(name)
    elif action == "restart":
        if cluster.server(name).proc.alive:
            cluster.restart(name)
        else:  # on the store it had: what it acknowledged must still be there
            cluster.start_server(name)
    elif action == "wipe":
        cluster.wipe(name)
    else:
        raise ValueError(f"no NATS fault {action!r}")


async def _result_counts(stack: DevStack) -> dict[str, int]:
    """Messages per result subject, in one call: more than one would be a duplicate result.
    Stream info is the operator's to ask, not a requester's."""
    nc = await stack.connect_as(OPERATOR)
    try:
        info = await nc.jetstream().stream_info(RESULTS.name, subjects_filter=f"{RESULT_PREFIX}.>")
    finally:
        await nc.close()
    return dict(info.state.subjects or {})


DEMO_FAULTS = [
    Fault(4.0, "kill", "hsm-2"),
    Fault(8.0, "stop", "hsm-3"),
    Fault(11.0, "cont", "hsm-3"),
    Fault(13.0, "restart", "hsm-2"),
]


def chaos_requester() -> tuple[nacl.signing.SigningKey, RequesterConfig]:
    """A throwaway requester for a chaos run on its own stack: its key and its config (it
    may create, and blind-sign with, ``chaos-*`` keys)."""
    key = nacl.signing.SigningKey.generate()
    requester = RequesterConfig(
        name="chaos",
        public_key=key.verify_key.encode().hex(),
        keys=["chaos-*"],
        may_create_keys=True,
        blind_keys=["chaos-*"],
    )
    return key, requester


async def chaos_demo(run_dir: Path, duration_s: float = 18.0) -> int:
    """``lantau chaos``: a 3-node dev stack under load, with nodes killed and frozen live."""

    from devkit.stack import start_platform
    from services.cli.hsm_admin import pool_status

    key, requester = chaos_requester()
    print(f"starting a 3-node dev stack in {run_dir} ...", flush=True)
    stack = await start_platform(run_dir, nodes=3, requesters=[requester])
    servers = stack.config.nats.servers
    clients = [
        await CustodyClient.connect(servers, "chaos", key, **stack.requester_options("chaos"))
        for _ in range(3)
    ]
    try:
        created = await clients[0].create_key("chaos-hot", "secp256k1")
        await wait_replicated(clients[0], stack, "chaos-hot")
        print(f"key chaos-hot on {created.node}, cloned to every node; load starts", flush=True)
        print("faults: " + ", ".join(f"{f.action} {f.target} at {f.at_s:g}s" for f in DEMO_FAULTS))
        print(
            f"{'t':>5} {'signed/s':>9} {'p99 ms':>7} {'failed':>7}  pool (signer's view)",
            flush=True,
        )
        seen = 0

        async def tick(t: float, outcomes: list[Outcome]) -> None:
            nonlocal seen
            done = [o for o in outcomes[seen:] if o.done_at is not None]
            seen = len(outcomes) - sum(1 for o in outcomes[seen:] if o.done_at is None)
            lat = sorted((o.done_at - o.sent_at) * 1000 for o in done if o.done_at)
            p99 = lat[int(len(lat) * 0.99) - 1] if lat else 0.0
            failed = sum(o.status not in (None, "signed") for o in done)
            views = await pool_status(stack.config, wait_s=0.2, config_path=str(stack.config_path))
            pool = (
                " ".join(f"{n.node_id}:{n.state}/{n.circuit}" for n in views[0].nodes)
                if views
                else "?"
            )
            print(f"{t:5.1f} {len(done):>9} {p99:>7.0f} {failed:>7}  {pool}", flush=True)

        report = await run_chaos(
            stack, clients, "chaos-hot", DEMO_FAULTS, duration_s=duration_s, tick=tick
        )
        print("\n" + "\n".join(report.lines()), flush=True)
        return 0 if report.lost == report.duplicates == report.failed == 0 else 1
    finally:
        for c in clients:
            await c.close()
        await stack.stop()
