"""The service runtime: a bus connection that closes for good ends the process."""

from __future__ import annotations

import asyncio
import urllib.request

from devkit.natsserver import free_port
from libs.config import Config
from libs.service import Runtime, run


async def test_a_connection_the_server_closes_for_good_makes_the_service_exit(nats_server):
    """nats-py does not reconnect after some server errors; a service left without a bus
    must not keep answering /healthz 200 (a supervisor would never restart it)."""
    _, nats_cfg = nats_server()
    rt = Runtime("t", Config(nats=nats_cfg), free_port(), identity="tester")
    health: list[int] = []

    async def body(rt: Runtime) -> None:
        # A subject past the server's control-line limit: the server drops the client.
        await rt.nc.publish("x" * 5000, b"")
        await asyncio.wait_for(rt.stopping.wait(), timeout=10)
        health.append(
            await asyncio.to_thread(_status, f"http://127.0.0.1:{rt.metrics_port}/healthz")
        )

    code = await asyncio.wait_for(run(rt, body), timeout=20)
    assert code == 1 and rt.lost_bus
    assert health == [503]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
