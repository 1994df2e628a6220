"""Chaos: three hsm-nodes under steady load from several clients while nodes die or hang.

Each test asserts: every accepted request has exactly one terminal result, none lost,
every signature verifies; the figures are printed (run with -s to see them).
"""

from __future__ import annotations

import pytest

from devkit.chaos import Fault, run_chaos, wait_replicated
from tests.conftest import connect_client


@pytest.fixture(scope="module")
def platform_options() -> dict[str, object]:
    return {"nodes": 3}


@pytest.fixture
async def clients(fresh_platform, trader_key):
    made = [await connect_client(fresh_platform, trader_key) for _ in range(3)]
    yield made
    for c in made:
        await c.close()


async def _chaos(stack, clients, key_id, faults, duration_s):
    created = await clients[0].create_key(key_id, "secp256k1")
    assert created.status == "created"
    await wait_replicated(clients[0], stack, key_id)
    report = await run_chaos(stack, clients, key_id, faults, duration_s=duration_s)
    print("\n" + "\n".join(report.lines()))
    assert report.sent > 200
    assert report.lost == 0, "accepted requests without a terminal result"
    assert report.duplicates == 0, "a request got two results"
    assert report.failed == 0, "requests failed although two nodes were always up"
    assert report.unverified == 0
    return report


async def test_sigkill_one_node_then_a_second(fresh_platform, clients):
    report = await _chaos(
        fresh_platform,
        clients,
        "desk-a-chaos-kill",
        [Fault(2.0, "kill", "hsm-1"), Fault(5.0, "kill", "hsm-2")],
        duration_s=8.0,
    )
    assert set(report.by_node) == {"hsm-1", "hsm-2", "hsm-3"}


async def test_sigstop_then_sigcont_a_node(fresh_platform, clients):
    report = await _chaos(
        fresh_platform,
        clients,
        "desk-a-chaos-stop",
        [Fault(2.0, "stop", "hsm-2"), Fault(6.0, "cont", "hsm-2")],
        duration_s=10.0,
    )
    # A hung node costs at most about one HSM deadline for requests caught on it.
    hsm_timeout_ms = fresh_platform.config.hsm.timeout_ms
    assert report.faults[0].worst_latency_ms < hsm_timeout_ms * 3


async def test_killed_node_restarts_and_is_used_again(fresh_platform, clients):
    report = await _chaos(
        fresh_platform,
        clients,
        "desk-a-chaos-back",
        [Fault(1.5, "kill", "hsm-3"), Fault(4.0, "restart", "hsm-3")],
        duration_s=10.0,
    )
    assert report.signed_after["hsm-3"] > 0, "the restarted node was never used again"
