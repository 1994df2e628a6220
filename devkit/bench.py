"""``lantau bench`` / ``make bench``: the platform measured against the raw HSM limit.

One run, per key type: the raw limit (the same SoftHSM tokens driven directly through
PKCS#11, one process per token with the hsm-node's parallelism, no bus; for a type
kept as sealed material, the node's own sealed-key code: unseal on the token, derive,
sign, wipe, and for HSS its leases by CAS); sustained
end-to-end throughput through client, policy, signer, hsm-node and result with audit
on; open-loop latency at 25/50/80 % of that throughput, measured from each request's
scheduled send time so queueing is never hidden; scaling over 1, 2 and 3 HSM nodes;
a node SIGKILLed at 50 % load; CPU time per signed request spent outside the HSM; and
the cost of a three-server NATS cluster with every stream at three replicas against one
server (throughput, and p99 at the same offered load; the one-server figures are the
main stage's, the cluster gets a platform of its own).
Writes a JSON file, prints a table and draws latency against throughput (PNG).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing

from devkit import bench_spread
from devkit.chaos import wait_replicated
from devkit.stack import DevStack, start_platform
from libs.client import CustodyClient, CustodyError
from libs.config import RequesterConfig
from libs.keytypes import kinds
from proto.common import Curve, HssShape

REQUESTER = "bench"
KEY_OF: dict[Curve, str] = {
    "secp256k1": "bench-k1",
    "ed25519": "bench-ed",
    "bip32-secp256k1": "bench-hd",
    "slip10-ed25519": "bench-sol",
    "ml-dsa-65": "bench-pq",
    "lms-hss": "bench-hss",
}
ALL_CURVES: list[Curve] = list(KEY_OF)
# HD keys sign with a child five steps down (BIP44 shape), derived for every signature.
PATH_OF: dict[str, str] = {
    "bip32-secp256k1": "m/44'/60'/0'/0/1",
    "slip10-ed25519": "m/44'/501'/0'/0'",
}
# HSS: small trees (leases of 1 024 open in a fraction of a second; 32 768 signatures).
BENCH_HSS = HssShape(levels=3, height=5, winternitz=4)


@dataclass
class Durations:
    raw_s: float = 5.0
    sustained_s: float = 8.0
    open_loop_s: float = 6.0
    scaling_s: float = 5.0
    kill_s: float = 10.0
    replicas_s: float = 8.0

    @staticmethod
    def smoke() -> Durations:
        return Durations(
            raw_s=1.0, sustained_s=2.0, open_loop_s=1.5, scaling_s=1.5, kill_s=4.0, replicas_s=2.0
        )


@dataclass
class Latency:
    offered_per_s: float
    sent: int
    signed: int
    lost: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    achieved_per_s: float


@dataclass
class CurveRun:
    curve: str
    nodes_holding_key: int
    raw_per_s: float
    raw_cpu_us_per_sign: float
    sustained_per_s: float
    ratio_to_raw: float
    latency: list[Latency] = field(default_factory=list)
    overhead_cpu_us: float = 0.0
    overhead_cpu_us_with_nats: float = 0.0
    # CPU microseconds per signed request, by process (hsm-nodes include the HSM's own).
    cpu_us_by_process: dict[str, float] = field(default_factory=dict)


@dataclass
class KillRun:
    offered_per_s: float
    sent: int
    signed: int
    lost: int
    failed: int
    in_flight_at_kill: int
    baseline_p50_ms: float
    worst_in_flight_ms: float
    added_latency_ms: float


@dataclass
class ReplicaRun:
    """One NATS layout measured: ``servers`` nats-servers, every stream at ``replicas``."""

    servers: int
    replicas: int
    sustained_per_s: float
    # Open loop at the same offered load for every layout (half of the first's sustained).
    latency: Latency
    nats_cpu_us: float  # CPU of every nats-server per signed request (sustained run)


@dataclass
class Report:
    machine: dict[str, Any]
    curves: list[CurveRun] = field(default_factory=list)
    # End to end over raw, per key type: the headline figure, for a reader of the JSON.
    ratio: dict[str, float] = field(default_factory=dict)
    scaling: list[dict[str, float]] = field(default_factory=list)
    kill: KillRun | None = None
    replicas: list[ReplicaRun] = field(default_factory=list)
    json_path: str = ""
    chart_path: str = ""


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_ms:
        return 0.0
    rank = max(1, min(len(sorted_ms), int(-(-q * len(sorted_ms) // 1))))
    return sorted_ms[rank - 1]


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    def soft() -> str:
        out = subprocess.run(["softhsm2-util", "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    from devkit.natsserver import binary

    nats_v = subprocess.run([binary(), "--version"], capture_output=True, text=True).stdout
    return {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "softhsm": soft(),
        "nats_server": nats_v.strip(),
        "nats_py": version("nats-py"),
        "python_pkcs11": version("python-pkcs11"),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- the raw limit: tokens straight through PKCS#11 ---------------------------------------


def raw_worker(args: argparse.Namespace) -> int:
    """Child process: sign on one token for ``seconds``; print ops and CPU seconds."""
    from libs import config as config_mod
    from libs.hsm.token import Pkcs11Token

    cfg = config_mod.load(args.config)
    node = cfg.hsm_node(args.node)
    pin = config_mod.read_pin(node)
    backend = Pkcs11Token(node.module, node.token_label, pin, sessions=node.sessions)
    scheme = kinds.scheme(args.curve)
    payload = hashlib.sha256(b"raw").digest() if scheme == "secp256k1" else b"raw" * 11

    async def loop() -> int:
        if kinds.is_sealed(args.curve):
            return await _sealed_loop(cfg, node.id, backend, args, payload)
        await backend.sign(args.key, args.curve, payload)  # warm the key cache
        ops, stop_at = 0, time.monotonic() + args.seconds
        while time.monotonic() < stop_at:
            await backend.sign(args.key, args.curve, payload)
            ops += 1
        return ops

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    ops = asyncio.run(loop())
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"ops": ops, "seconds": elapsed, "cpu_s": cpu}))
    return 0


async def _sealed_loop(cfg: Any, node_id: str, token: Any, args: Any, payload: bytes) -> int:
    """The hsm-node's sealed-key signing with no bus in the way: the sealed record and
    (HSS) the index ledger are read from the stack's KV, as a node reads them."""
    from libs.bus.permissions import node_identity
    from libs.hsm.ceremony import sealing_label
    from libs.hsm.sealed_keys import SealedKeys
    from libs.hsm.sealed_store import KvIndexLedger, KvSealedStore
    from services.cli.identity import connect_cli

    # As the node itself: the identity allowed to read the sealed records and ledgers.
    nc = await connect_cli(cfg, node_identity(node_id), config_path=args.config)
    try:
        js = nc.jetstream()
        sealed = SealedKeys(
            token,
            node_id=f"bench-raw-{node_id}",  # a node of its own: its own leases
            sealing_label=sealing_label(cfg.backup.kek_label),
            store=KvSealedStore(js),
            ledger=KvIndexLedger(js),
        )
        record = await sealed.load(args.key)
        path = PATH_OF.get(args.curve)
        await sealed.sign(record, path, [payload])  # warm: the record, a lease
        ops, stop_at = 0, time.monotonic() + args.seconds
        while time.monotonic() < stop_at:
            await sealed.sign(record, path, [payload])
            ops += 1
        return ops
    finally:
        await nc.close()


async def raw_limit(
    stack: DevStack, nodes: list[str], curve: Curve, seconds: float
) -> tuple[float, float]:
    """(signatures per second over ``nodes`` together, CPU microseconds per signature)."""
    procs = []
    for node_id in nodes:
        node = stack.config.hsm_node(node_id)
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.cli.main",
                "bench-raw-worker",
                "--config",
                str(stack.config_path),
                "--node",
                node_id,
                "--key",
                KEY_OF[curve],
                "--curve",
                curve,
                "--seconds",
                str(seconds),
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "SOFTHSM2_CONF": node.softhsm_conf or ""},
            )
        )
    outs = [json.loads((await p.communicate())[0]) for p in procs]
    rate = sum(o["ops"] / o["seconds"] for o in outs)
    cpu_us = sum(o["cpu_s"] for o in outs) / max(1, sum(o["ops"] for o in outs)) * 1e6
    return rate, cpu_us


# -- end to end -----------------------------------------------------------------------------


def _payload(curve: Curve, n: int) -> tuple[bytes, str]:
    data = hashlib.sha256(f"bench-{curve}-{n}-{time.monotonic_ns()}".encode()).digest()
    if kinds.scheme(curve) == "secp256k1":
        return data, "digest"
    return data + b"-message", "message"


async def sustained(
    clients: list[CustodyClient], curve: Curve, seconds: float, in_flight: int
) -> tuple[int, float]:
    """Closed loop with ``in_flight`` requests outstanding: (signed, seconds)."""
    signed = 0
    stop_at = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def worker(client: CustodyClient) -> None:
        nonlocal signed
        while time.monotonic() < stop_at:
            payload, kind = _payload(curve, next(counter))
            result = await client.sign(
                KEY_OF[curve],
                payload,
                payload_kind=kind,  # type: ignore[arg-type]
                timeout=60,
                path=PATH_OF.get(curve),
            )
            signed += result.status == "signed"

    started = time.monotonic()
    await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(in_flight)))
    return signed, time.monotonic() - started


@dataclass
class _Sent:
    scheduled: float
    done: float | None = None
    status: str | None = None
    request_id: str = ""


async def open_loop(
    clients: list[CustodyClient],
    curve: Curve,
    rate: float,
    seconds: float,
    on_tick: Any = None,
) -> list[_Sent]:
    """Send at fixed intervals whatever happens; latency counts from the scheduled time."""
    sent: list[_Sent] = []
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    total = max(1, int(rate * seconds))

    async def one(n: int, s: _Sent) -> None:
        payload, kind = _payload(curve, n)
        client = clients[n % len(clients)]
        request = client.sign_request(
            KEY_OF[curve],
            payload,
            payload_kind=kind,  # type: ignore[arg-type]
            path=PATH_OF.get(curve),
        )
        s.request_id = request.request_id
        try:
            result = await client.send(request, timeout=60)
        except CustodyError:
            return
        s.done, s.status = time.monotonic(), result.status

    for n in range(total):
        scheduled = start + n / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        s = _Sent(scheduled)
        sent.append(s)
        tasks.append(asyncio.create_task(one(n, s)))
        if on_tick is not None:
            await on_tick(time.monotonic() - start, sent)
    await asyncio.gather(*tasks)
    for s in sent:  # a result we missed live is still stored: look once more
        if s.status is None and s.request_id:
            stored = await clients[0].get_result(s.request_id)
            if stored is not None:
                s.status = stored.status
    return sent


def summarise(offered: float, sent: list[_Sent], seconds: float) -> Latency:
    lat = sorted((s.done - s.scheduled) * 1000 for s in sent if s.done and s.status == "signed")
    signed = sum(s.status == "signed" for s in sent)
    return Latency(
        offered_per_s=round(offered, 1),
        sent=len(sent),
        signed=signed,
        lost=sum(s.status is None for s in sent),
        p50_ms=round(percentile(lat, 0.50), 2),
        p99_ms=round(percentile(lat, 0.99), 2),
        p999_ms=round(percentile(lat, 0.999), 2),
        achieved_per_s=round(signed / seconds, 1),
    )


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(stack: DevStack) -> dict[str, float]:
    snap = {name: _cpu_s(p.pid) for name, p in stack.procs.processes.items() if p.alive}
    snap["nats"] = sum(_cpu_s(s.proc.pid) for s in stack.nats_servers if s.proc.alive)
    return snap


# -- one stack -------------------------------------------------------------------------------


async def _stack(
    run_dir: Path, nodes: int, nats_cluster: int = 1
) -> tuple[DevStack, list[CustodyClient]]:
    key = nacl.signing.SigningKey.generate()
    requester = RequesterConfig(
        name=REQUESTER,
        public_key=key.verify_key.encode().hex(),
        keys=["bench-*"],
        may_create_keys=True,
        blind_keys=["bench-*"],
    )
    where = run_dir / (f"{nodes}-nodes" + (f"-{nats_cluster}-nats" if nats_cluster > 1 else ""))
    stack = await start_platform(
        where, nodes=nodes, requesters=[requester], nats_cluster=nats_cluster
    )
    servers = stack.config.nats.servers
    clients = [
        await CustodyClient.connect(servers, REQUESTER, key, **stack.requester_options(REQUESTER))
        for _ in range(2)
    ]
    return stack, clients


async def _keys(
    stack: DevStack, client: CustodyClient, curves: list[Curve]
) -> dict[str, list[str]]:
    holders: dict[str, list[str]] = {}
    for curve in curves:
        hss = BENCH_HSS if curve == "lms-hss" else None
        made = await client.create_key(KEY_OF[curve], curve, hss=hss)
        if made.status != "created":
            raise RuntimeError(f"cannot create the {curve} bench key: {made.error}")
        if curve == "secp256k1" or kinds.is_sealed(curve):  # sealed keys clone everywhere
            await wait_replicated(client, stack, KEY_OF[curve])
            holders[curve] = [n.id for n in stack.config.hsm_nodes]
        else:  # SoftHSM cannot wrap EdDSA keys: this one lives where it was made
            holders[curve] = [made.node or ""]
    return holders


async def run_bench(
    out_dir: Path,
    *,
    curves: list[Curve],
    durations: Durations,
    in_flight: int = 48,
    say: Any = print,
    scaling: tuple[int, ...] = (1, 2),
    replicas: bool = True,
    before_json: Path | None = None,
) -> Report:
    """``scaling``: also measure secp256k1 over these node counts on stacks of their own
    (the 3-node figure comes from the main stack). ``replicas``: the 3-server NATS stage.
    ``before_json``: an earlier run's report, drawn on the chart beside this one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(machine=machine())
    # The stacks' state is this run's alone, in a directory made for it (a previous run's
    # tokens under the same labels would make two tokens match each label); removed once
    # the run succeeds, kept for its logs when it fails. Nothing that was there is deleted.
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=out_dir))
    one_server: ReplicaRun | None = None

    # Scaling: smaller pools on their own stacks, then 3 nodes for everything else.
    for nodes in scaling:
        stack, clients = await _stack(run_dir, nodes)
        try:
            await _keys(stack, clients[0], ["secp256k1"])
            raw, _ = await raw_limit(
                stack, [n.id for n in stack.config.hsm_nodes], "secp256k1", durations.raw_s
            )
            signed, secs = await sustained(clients, "secp256k1", durations.scaling_s, in_flight)
            report.scaling.append(
                {"nodes": nodes, "raw_per_s": round(raw, 1), "e2e_per_s": round(signed / secs, 1)}
            )
            say(f"  {nodes} node(s): raw {raw:.0f}/s, end to end {signed / secs:.0f}/s")
        finally:
            for c in clients:
                await c.close()
            await stack.stop()

    stack, clients = await _stack(run_dir, 3)
    try:
        holders = await _keys(stack, clients[0], curves)
        for curve in curves:
            say(f"[{curve}] raw limit over {len(holders[curve])} node(s) ...")
            raw, raw_cpu = await raw_limit(stack, holders[curve], curve, durations.raw_s)
            await sustained(clients, curve, 1.0, in_flight)  # warm up
            before = cpu_snapshot(stack)
            signed, secs = await sustained(clients, curve, durations.sustained_s, in_flight)
            after = cpu_snapshot(stack)
            rate = signed / secs
            used = {k: after[k] - before.get(k, after[k]) for k in after}
            services = sum(v for k, v in used.items() if k != "nats")
            overhead = max(0.0, services / max(1, signed) * 1e6 - raw_cpu)
            run = CurveRun(
                curve=curve,
                nodes_holding_key=len(holders[curve]),
                raw_per_s=round(raw, 1),
                raw_cpu_us_per_sign=round(raw_cpu, 1),
                sustained_per_s=round(rate, 1),
                ratio_to_raw=round(rate / raw, 3) if raw else 0.0,
                overhead_cpu_us=round(overhead, 1),
                overhead_cpu_us_with_nats=round(overhead + used["nats"] / max(1, signed) * 1e6, 1),
                cpu_us_by_process={
                    k: round(v / max(1, signed) * 1e6, 1) for k, v in sorted(used.items())
                },
            )
            say(
                f"  raw {raw:.0f}/s, sustained {rate:.0f}/s ({run.ratio_to_raw:.0%}), "
                f"overhead {overhead:.0f} us CPU/request"
            )
            for share in (0.25, 0.5, 0.8):
                sent = await open_loop(clients, curve, rate * share, durations.open_loop_s)
                point = summarise(rate * share, sent, durations.open_loop_s)
                run.latency.append(point)
                say(
                    f"  open loop {share:.0%} ({point.offered_per_s:.0f}/s): "
                    f"p50 {point.p50_ms} ms, p99 {point.p99_ms} ms, "
                    f"p99.9 {point.p999_ms} ms, lost {point.lost}"
                )
            report.curves.append(run)
        k1 = next((c for c in report.curves if c.curve == "secp256k1"), None)
        if k1 is not None:
            report.scaling.append(
                {"nodes": 3, "raw_per_s": k1.raw_per_s, "e2e_per_s": k1.sustained_per_s}
            )
            # The main stack is the one-server layout of the NATS stage: its sustained run
            # and its 50 % point are that layout's figures (one stack less to start).
            one_server = ReplicaRun(
                servers=len(stack.nats_servers),
                replicas=stack.config.nats.stream_replicas,
                sustained_per_s=k1.sustained_per_s,
                latency=k1.latency[1],
                nats_cpu_us=k1.cpu_us_by_process.get("nats", 0.0),
            )
            report.kill = await kill_at_half_load(
                stack, clients, k1.sustained_per_s * 0.5, durations.kill_s
            )
            say(
                f"  SIGKILL hsm-2 at 50% load: lost {report.kill.lost}, "
                f"added latency {report.kill.added_latency_ms} ms"
            )
    finally:
        for c in clients:
            await c.close()
        await stack.stop()

    if replicas:
        report.replicas = await replica_cost(run_dir, durations, in_flight, say, one_server)

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report.ratio = {c.curve: c.ratio_to_raw for c in report.curves}
    report.json_path = str(out_dir / f"bench-{stamp}.json")
    report.chart_path = str(out_dir / f"bench-{stamp}.png")
    Path(report.json_path).write_text(json.dumps(asdict(report), indent=2) + "\n")
    chart(report, Path(report.chart_path), before=before_json)
    shutil.rmtree(run_dir, ignore_errors=True)
    return report


async def replica_cost(
    run_dir: Path,
    durations: Durations,
    in_flight: int,
    say: Any = print,
    one_server: ReplicaRun | None = None,
) -> list[ReplicaRun]:
    """One nats-server (streams at 1 replica), then a 3-server cluster (3 replicas), each
    a 3-node platform: sustained secp256k1 throughput, and open-loop latency at the same
    offered load for both (half the single server's throughput). ``one_server``: that
    layout already measured (the main stage), else it gets a stack of its own."""
    runs: list[ReplicaRun] = [one_server] if one_server else []
    offered = one_server.latency.offered_per_s if one_server else None
    for servers in (3,) if one_server else (1, 3):
        # Platforms of their own (the main stage's 3-node stack has its own directory).
        stack, clients = await _stack(run_dir / "replicas", 3, nats_cluster=servers)
        try:
            await _keys(stack, clients[0], ["secp256k1"])
            await sustained(clients, "secp256k1", 1.0, in_flight)  # warm up
            before = cpu_snapshot(stack)
            signed, secs = await sustained(clients, "secp256k1", durations.replicas_s, in_flight)
            nats_cpu = cpu_snapshot(stack)["nats"] - before["nats"]
            rate = signed / secs
            offered = offered or rate * 0.5
            sent = await open_loop(clients, "secp256k1", offered, durations.open_loop_s)
            run = ReplicaRun(
                servers=servers,
                replicas=stack.config.nats.stream_replicas,
                sustained_per_s=round(rate, 1),
                latency=summarise(offered, sent, durations.open_loop_s),
                nats_cpu_us=round(nats_cpu / max(1, signed) * 1e6, 1),
            )
            runs.append(run)
            say(
                f"  {servers} NATS server(s), {run.replicas} replica(s): {rate:.0f}/s; at "
                f"{offered:.0f}/s p50 {run.latency.p50_ms} ms, p99 {run.latency.p99_ms} ms, "
                f"lost {run.latency.lost}; NATS CPU {run.nats_cpu_us:.0f} us/request"
            )
        finally:
            for c in clients:
                await c.close()
            await stack.stop()
    return runs


def replica_lines(runs: list[ReplicaRun]) -> list[str]:
    """The 3-replica cost against 1, for the table."""
    if len(runs) < 2:
        return []
    one, three = runs[0], runs[-1]
    drop = 1 - three.sustained_per_s / one.sustained_per_s if one.sustained_per_s else 0.0
    load = f"{one.latency.offered_per_s:.0f}/s"
    lines = ["", f"NATS replicas (secp256k1, 3 HSM nodes; open loop at {load}):"]
    for r in runs:
        lines.append(
            f"  {r.servers} server(s), R{r.replicas}: {r.sustained_per_s:.0f}/s, p50 "
            f"{r.latency.p50_ms:.1f} ms, p99 {r.latency.p99_ms:.1f} ms, lost {r.latency.lost}, "
            f"NATS CPU {r.nats_cpu_us:.0f} us/request"
        )
    lines.append(
        f"  cost of 3 replicas: throughput {-drop:+.0%}, p99 "
        f"{three.latency.p99_ms - one.latency.p99_ms:+.1f} ms"
    )
    return lines


async def kill_at_half_load(
    stack: DevStack, clients: list[CustodyClient], rate: float, seconds: float
) -> KillRun:
    kill_at = seconds / 2
    state: dict[str, Any] = {}

    async def tick(t: float, sent: list[_Sent]) -> None:
        if "at" not in state and t >= kill_at:
            stack.service("hsm-2").kill()
            state["at"] = time.monotonic()
            state["in_flight"] = [s for s in sent if s.done is None]

    sent = await open_loop(clients, "secp256k1", rate, seconds, on_tick=tick)
    at = state.get("at", float("inf"))
    calm = sorted((s.done - s.scheduled) * 1000 for s in sent if s.done and s.done < at)
    in_flight = state.get("in_flight", [])
    worst = max(((s.done - s.scheduled) * 1000 for s in in_flight if s.done), default=0.0)
    p50 = percentile(calm, 0.5)
    signed = sum(s.status == "signed" for s in sent)
    lost = sum(s.status is None for s in sent)
    return KillRun(
        offered_per_s=round(rate, 1),
        sent=len(sent),
        signed=signed,
        lost=lost,
        failed=len(sent) - signed - lost,
        in_flight_at_kill=len(in_flight),
        baseline_p50_ms=round(p50, 2),
        worst_in_flight_ms=round(worst, 2),
        added_latency_ms=round(max(0.0, worst - p50), 2),
    )


# -- output ----------------------------------------------------------------------------------


def table(report: Report) -> str:
    lines = [
        f"machine: {report.machine['cores']} cores, {report.machine['softhsm']}, "
        f"{report.machine['nats_server']}, Python {report.machine['python']}",
        "",
    ]
    lines.append(
        f"{'key type':<16}{'nodes':>6}{'raw/s':>9}{'e2e/s':>9}{'ratio':>7}"
        f"{'overhead us':>13}{'+nats us':>10}"
    )
    for c in report.curves:
        lines.append(
            f"{c.curve:<16}{c.nodes_holding_key:>6}{c.raw_per_s:>9.0f}"
            f"{c.sustained_per_s:>9.0f}{c.ratio_to_raw:>7.0%}{c.overhead_cpu_us:>13.0f}"
            f"{c.overhead_cpu_us_with_nats:>10.0f}"
        )
    lines += [
        "",
        f"{'key type':<16}{'load':>6}{'offered/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p99.9 ms':>10}{'lost':>6}",
    ]
    for c in report.curves:
        for share, p in zip(("25%", "50%", "80%"), c.latency, strict=False):
            lines.append(
                f"{c.curve:<16}{share:>6}{p.offered_per_s:>11.0f}{p.p50_ms:>9.1f}"
                f"{p.p99_ms:>9.1f}{p.p999_ms:>10.1f}{p.lost:>6}"
            )
    lines += [
        "",
        "scaling (secp256k1): "
        + ", ".join(
            f"{int(s['nodes'])} node(s) raw {s['raw_per_s']:.0f}/s e2e {s['e2e_per_s']:.0f}/s"
            for s in report.scaling
        ),
    ]
    if report.kill:
        k = report.kill
        lines.append(
            f"SIGKILL of hsm-2 at {k.offered_per_s:.0f}/s: sent {k.sent}, signed "
            f"{k.signed}, lost {k.lost}, failed {k.failed}; {k.in_flight_at_kill} in "
            f"flight, worst {k.worst_in_flight_ms:.0f} ms (+{k.added_latency_ms:.0f} ms "
            f"over p50 {k.baseline_p50_ms:.1f} ms)"
        )
    lines += replica_lines(report.replicas)
    lines += ["", f"json  {report.json_path}", f"chart {report.chart_path}"]
    return "\n".join(lines)


def chart(report: Report, path: Path, before: Path | None = None) -> list[str]:
    """Latency against throughput, with the raw limits marked; an earlier run's JSON
    (``before``) is drawn faded beside it. Returns the series' labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    if before is not None:
        earlier: dict[str, Any] = json.loads(before.read_text())
        for c in earlier.get("curves", []):
            xs = [p["achieved_per_s"] for p in c["latency"]]
            for q, style in (("p50", "o-"), ("p99", "s--")):
                ys = [p[f"{q}_ms"] for p in c["latency"]]
                ax.plot(xs, ys, style, color="grey", alpha=0.5, label=f"before: {c['curve']} {q}")
    for c in report.curves:
        xs = [p.achieved_per_s for p in c.latency]
        ax.plot(xs, [p.p50_ms for p in c.latency], "o-", label=f"{c.curve} p50")
        ax.plot(xs, [p.p99_ms for p in c.latency], "s--", label=f"{c.curve} p99")
        ax.axvline(c.raw_per_s, linestyle=":", color="grey")
        ax.text(c.raw_per_s, ax.get_ylim()[1] * 0.9, f" raw {c.curve}", fontsize=8)
    ax.set_xlabel("signed requests per second (open loop)")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.set_title("Lantau: latency against throughput")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    labels = [str(line.get_label()) for line in ax.get_lines()]
    labels = [label for label in labels if not label.startswith("_")]  # matplotlib's own
    plt.close(fig)
    return labels


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of runs (1 or more)")
    return n


def _existing_json(value: str) -> Path:
    """--before: a bench JSON that can be read, or argparse's usage error (exit 2)."""
    path = Path(value)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"{value}: not a readable bench JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("curves"), list):
        raise argparse.ArgumentTypeError(f"{value}: not a bench JSON (no curves)")
    point = {"achieved_per_s", "p50_ms", "p99_ms"}
    for c in data["curves"]:
        latency = c.get("latency") if isinstance(c, dict) else None
        if not isinstance(c, dict) or "curve" not in c or not isinstance(latency, list):
            why = "a curve without latency"
        elif not all(isinstance(p, dict) and point <= p.keys() for p in latency):
            why = "a latency point lacks figures"
        else:
            continue
        raise argparse.ArgumentTypeError(f"{value}: not a bench JSON ({why})")
    return path


def cmd_bench(args: argparse.Namespace) -> int:
    durations = Durations.smoke() if args.smoke else Durations()
    curves: list[Curve] = args.curve or ALL_CURVES
    reports: list[Report] = []
    lost = 0
    for n in range(1, args.runs + 1):
        which = f"run {n} of {args.runs}, " if args.runs > 1 else ""
        print(
            f"benchmark in {args.out} ({which}{'smoke' if args.smoke else 'full'} run) ...",
            flush=True,
        )
        report = asyncio.run(
            run_bench(
                Path(args.out),
                curves=curves,
                durations=durations,
                say=lambda s: print(s, flush=True),
                before_json=args.before,
            )
        )
        print("\n" + table(report) + "\n", flush=True)
        reports.append(report)
        lost += sum(p.lost for c in report.curves for p in c.latency)
        lost += report.kill.lost if report.kill else 0
        lost += sum(r.latency.lost for r in report.replicas)
    if len(reports) > 1:
        figures = bench_spread.spread([asdict(r) for r in reports])
        path = Path(reports[-1].json_path).with_name(
            Path(reports[-1].json_path).name.replace("bench-", "spread-")
        )
        path.write_text(
            json.dumps({"runs": [r.json_path for r in reports], "figures": figures}, indent=2)
            + "\n"
        )
        print(f"{len(reports)} consecutive runs:")
        print("\n".join(bench_spread.lines(figures)))
        print(f"\nspread {path}")
    return 1 if lost else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure throughput and latency against the raw HSM limit")
    p.add_argument("--out", default=".lantau/bench")
    p.add_argument("--smoke", action="store_true", help="a few seconds per stage (CI)")
    p.add_argument(
        "--runs",
        type=_positive,
        default=1,
        help="consecutive runs, each figure then reported with its spread (make bench: 3)",
    )
    p.add_argument(
        "--before", type=_existing_json, help="an earlier run's bench-*.json, drawn on the chart"
    )
    p.add_argument(
        "--curve", "--type", dest="curve", action="append", choices=ALL_CURVES, help="key type"
    )
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("bench-raw-worker", help=argparse.SUPPRESS)
    p.add_argument("--config", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--curve", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.set_defaults(fn=raw_worker)
