"""HSS under chaos (devkit/hss_chaos.py): nodes killed, hung, restarted and a fresh node
joining with a restored copy while thousands of HSS signatures are made; every
signature any node made verifies with a second implementation and no one-time key is
used twice. LANTAU_HSS_CHAOS_S sets the length (CI: two 12 s fault cycles, about
2 000 signatures on the 2-core machine; `make chaos-hss` runs longer). Run with -s to
see the figures."""

from __future__ import annotations

import os

import pytest

from devkit.hss_chaos import run_hss_chaos
from tests.conftest import TRADER, connect_client

DURATION_S = float(os.environ.get("LANTAU_HSS_CHAOS_S", "24"))


@pytest.fixture(scope="module")
def platform_options() -> dict[str, object]:
    return {"nodes": 4}


@pytest.mark.timeout(max(300, int(DURATION_S * 6)))
async def test_no_one_time_key_is_used_twice_whatever_dies(fresh_platform, trader_key):
    clients = [await connect_client(fresh_platform, trader_key, TRADER) for _ in range(3)]
    try:
        report = await run_hss_chaos(
            fresh_platform, clients, duration_s=DURATION_S, key_id="desk-a-hss-chaos"
        )
    finally:
        for c in clients:
            await c.close()
    print("\n" + "\n".join(report.lines()))
    chaos = report.chaos
    # A floor, not a figure: a busy machine signs fewer, and the checks hold at any count.
    assert chaos.sent >= 500, "too few signatures to mean anything"
    assert chaos.lost == 0 and chaos.duplicates == 0, "requests without exactly one result"
    assert chaos.failed == 0, "requests failed although a node was always up"
    assert chaos.unverified == 0, "a result that hsslms does not verify"
    assert report.signatures_made >= report.signatures_in_results == chaos.signed
    assert report.second_opinion_failed == 0 and report.unmatched == 0
    assert report.reused_indices == 0, "a one-time index signed twice"
    assert report.reused_one_time_keys == 0, "a one-time key signed two different things"
    assert report.indices_used == report.signatures_made
    assert report.joined_with_copy == ["hsm-4"], "the restored copy never signed"
    # Every range ever leased is accounted for: used, burned, or still in a live lease.
    assert report.leased == report.indices_used + report.burned + report.outstanding
