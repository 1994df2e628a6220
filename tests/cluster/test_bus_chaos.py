"""Chaos on the bus: the platform on a three-server NATS cluster loses a server under load.

Each scenario (devkit/buschaos.py) runs on a fresh stack: sign requests from three
independent clients while the fault plays, then the invariants a custody platform must
keep. Only invariants are asserted (nothing lost, nothing answered twice, nothing signed
twice, every signature verified outside the platform, the audit trail verified with its
pinned keys and witness) and bounds generous enough for a loaded 2-core machine; the
figures are printed (-s). ``LANTAU_CHAOS_LONG=1`` (``make chaos-bus``) runs each four
times longer.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request

import pytest

from devkit.buschaos import BusChaosResult, bus_scenarios, run_bus_scenario, scale_from_env
from tests.conftest import connect_client

SCALE = scale_from_env()
SCENARIOS = bus_scenarios(SCALE)
# A request may wait out a leader election (4-9 s), a client's move off a dead or hung
# server (up to ~6 s), then a redelivery: far below this, far above a normal p99.
WORST_LATENCY_MS = 45_000


@pytest.fixture
def platform_options() -> dict[str, object]:
    return {"nodes": 2, "nats_cluster": 3}


@pytest.fixture
async def clients(fresh_platform, trader_key):
    made = [await connect_client(fresh_platform, trader_key) for _ in range(3)]
    yield made
    for c in made:
        await c.close()


async def _scenario(stack, clients, name: str) -> BusChaosResult:
    result = await run_bus_scenario(stack, clients, SCENARIOS[name], f"desk-a-bus-{name}")
    print("\n" + "\n".join(result.lines()))
    report = result.report
    assert report.sent > 50 * SCALE, "too little load to say anything"
    assert report.lost == 0, "accepted requests without a terminal result"
    assert report.duplicates == 0, "a request got two results"
    assert not result.signed_twice, f"a node signed these twice: {result.signed_twice}"
    assert not result.unrecorded, (
        f"signed with no audit intent naming the node: {result.unrecorded}"
    )
    assert report.unverified == 0
    assert report.signed == report.sent, f"{report.failed} requests did not end signed"
    assert report.max_ms < WORST_LATENCY_MS
    assert result.audit is not None and result.audit.ok, result.audit
    return result


async def test_sigkill_of_the_meta_leader(fresh_platform, clients):
    result = await _scenario(fresh_platform, clients, "meta-leader")
    killed = result.report.faults[0].server
    cluster = fresh_platform.cluster
    assert killed and cluster.meta_leader() is not None
    # The restarted server is back in the meta group, current.
    assert cluster.server(killed).proc.alive


async def test_sigkill_of_the_orders_stream_leader(fresh_platform, clients):
    result = await _scenario(fresh_platform, clients, "orders-leader")
    killed = result.report.faults[0].server
    assert killed.startswith("nats-")
    assert fresh_platform.cluster.stream_leader("LANTAU_ORDERS") is not None


async def test_sigstop_of_a_server_longer_than_its_heartbeats(fresh_platform, clients):
    result = await _scenario(fresh_platform, clients, "freeze")
    frozen = fresh_platform.cluster.server(result.report.faults[0].server)
    # Thawed, it rejoined: healthy again (JetStream current on every stream it holds).
    await asyncio.to_thread(frozen.wait_healthy, 60.0)


async def test_rolling_restart_of_all_three(fresh_platform, clients):
    result = await _scenario(fresh_platform, clients, "rolling")
    restarted = [f.fault.target for f in result.report.faults]
    assert restarted == [s.name for s in fresh_platform.cluster.servers]


async def test_a_server_rejoins_with_its_store_deleted(fresh_platform, clients):
    result = await _scenario(fresh_platform, clients, "wipe")
    wiped = fresh_platform.cluster.server(result.report.faults[0].server)
    # It came back empty and the cluster filled it: it holds the orders stream again.
    detail = fresh_platform.cluster.jsz(wiped, "streams=true")
    names = {
        s["name"] for a in detail.get("account_details") or () for s in a.get("stream_detail") or ()
    }
    assert "LANTAU_ORDERS" in names


def _gauge(stack, name: str, stream: str) -> float | None:
    text = urllib.request.urlopen(stack.url("audit"), timeout=2).read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{stream="{stream}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _gauges_reach(stack, stream: str, current: float, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = (
            _gauge(stack, "lantau_nats_stream_replicas", stream),
            _gauge(stack, "lantau_nats_stream_replicas_current", stream),
        )
        if seen == (3.0, current):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{stream}: replicas, current = {seen}; wanted (3, {current})")


async def test_a_lost_server_shows_on_the_gauges_the_alert_reads(fresh_platform):
    """LantauNatsReplicaLost's input, end to end: a killed server takes one current replica
    from the streams (the audit service's sweep sees it), and gives it back on restart."""
    stack = fresh_platform
    await _gauges_reach(stack, "LANTAU_ORDERS", 3.0)
    await _gauges_reach(stack, "LANTAU_AUDIT_LOG", 3.0)
    # Whichever server it is (a leader, the audit service's own): 0 while a stream elects
    # a leader or the audit service moves, then 2 until the server is back.
    victim = stack.cluster.servers[-1]
    victim.kill()
    await _gauges_reach(stack, "LANTAU_ORDERS", 2.0)
    await asyncio.to_thread(stack.cluster.start_server, victim.name)
    await _gauges_reach(stack, "LANTAU_ORDERS", 3.0)


def lantau(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real ``lantau`` command line, as an operator runs it."""
    argv = [sys.executable, "-m", "services.cli.main", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


def test_lantau_chaos_bus_names_the_scenarios_it_knows(tmp_path):
    out = lantau("chaos", "--bus", "no-such", "--dir", str(tmp_path))
    assert out.returncode == 2
    assert "unknown scenario(s) ['no-such']" in out.stderr
    assert all(name in out.stderr for name in SCENARIOS)


def test_lantau_chaos_bus_runs_a_scenario_for_an_operator(tmp_path):
    """The operator's command: its own stack, the scenario, the figures, audit verify."""
    out = lantau("chaos", "--bus", "orders-leader", "--dir", str(tmp_path), timeout=280)
    print(out.stdout[-3000:])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    row = next(ln for ln in out.stdout.splitlines() if ln.startswith("orders-leader "))
    sent, signed, failed, lost, dup = (int(v) for v in row.split()[1:6])
    assert sent > 50 and signed == sent and failed == lost == dup == 0
    assert row.rstrip().endswith("OK")
