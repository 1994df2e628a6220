"""Processes killed or stopped mid-flight: nothing accepted is lost, nothing happens twice."""

from __future__ import annotations

import asyncio
import hashlib

import nats
import pytest

from libs.bus.permissions import OPERATOR
from libs.client import CustodyClient
from proto.requests import SignRequest
from tests.conftest import connect_client
from tests.e2e.helpers import results_on_subject, verify_independently

N = 300


async def _submit_all(
    client: CustodyClient, key_id: str, n: int
) -> list[tuple[SignRequest, bytes]]:
    requests = []
    for i in range(n):
        digest = hashlib.sha256(f"{key_id}-{i}".encode()).digest()
        requests.append((client.sign_request(key_id, digest), digest))
    await asyncio.gather(*(client.submit(r) for r, _ in requests))
    return requests


async def _results_so_far(client: CustodyClient, requests) -> int:
    found = await asyncio.gather(*(client.get_result(r.request_id) for r, _ in requests))
    return sum(x is not None for x in found)


async def _wait_all(client: CustodyClient, requests, timeout_s: float = 90.0) -> list:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        found = await asyncio.gather(*(client.get_result(r.request_id) for r, _ in requests))
        if all(x is not None for x in found) or loop.time() > deadline:
            return found
        await asyncio.sleep(0.5)


async def _assert_exactly_once(stack, requests, results) -> None:
    lost = [r.request_id for (r, _), res in zip(requests, results, strict=True) if res is None]
    assert not lost, f"{len(lost)} accepted requests never got a result"
    for (request, digest), result in zip(requests, results, strict=True):
        assert result.status == "signed", (request.request_id, result.error)
        verify_independently(result, digest)
    operator = await stack.connect_as(OPERATOR)  # stream views are not a requester's
    try:
        js = operator.jetstream()
        counts = await asyncio.gather(
            *(results_on_subject(js, r.requester, r.request_id) for r, _ in requests)
        )
    finally:
        await operator.close()
    assert set(counts) == {1}, "some request got more than one result"


@pytest.fixture
async def fresh_client(fresh_platform, trader_key):
    c = await connect_client(fresh_platform, trader_key)
    yield c
    await c.close()


async def _wait_for_progress(client, requests, at_least: int) -> int:
    for _ in range(400):
        done = await _results_so_far(client, requests)
        if done >= at_least:
            return done
        await asyncio.sleep(0.02)
    raise AssertionError("no progress before the fault")


async def test_signer_sigkilled_with_orders_in_flight_completes_each_exactly_once(
    fresh_platform, fresh_client
):
    await fresh_client.create_key("desk-a-kill", "secp256k1")
    requests = await _submit_all(fresh_client, "desk-a-kill", N)
    done_at_kill = await _wait_for_progress(fresh_client, requests, 5)
    fresh_platform.service("signer").kill()
    assert done_at_kill < N, "the fault came too late to leave orders in flight"
    await fresh_platform.restart("signer")
    results = await _wait_all(fresh_client, requests)
    await _assert_exactly_once(fresh_platform, requests, results)
    print(
        f"\nSIGKILL signer: {done_at_kill}/{N} done at the kill, {N} signed after restart, 0 lost"
    )


@pytest.mark.parametrize("service", ["signer", "policy"])
async def test_sigterm_drains_without_loss(fresh_platform, fresh_client, service):
    await fresh_client.create_key("desk-a-term", "secp256k1")
    requests = await _submit_all(fresh_client, "desk-a-term", N)
    await _wait_for_progress(fresh_client, requests, 5)
    proc = fresh_platform.service(service)
    code = await proc.terminate_async(timeout_s=20)
    assert code == 0, f"{service} did not exit cleanly on SIGTERM:\n{proc.log_tail()}"
    assert "stopped cleanly" in proc.log_tail(50)
    await fresh_platform.restart(service)
    results = await _wait_all(fresh_client, requests)
    await _assert_exactly_once(fresh_platform, requests, results)


async def test_nats_outage_pauses_then_resumes(fresh_platform, fresh_client):
    await fresh_client.create_key("desk-a-nats", "secp256k1")
    await asyncio.to_thread(fresh_platform.nats.restart)
    # Services reconnect on their own; the client library too.
    for _ in range(100):
        try:
            r = await fresh_client.sign("desk-a-nats", hashlib.sha256(b"after").digest(), timeout=5)
            break
        except Exception:
            await asyncio.sleep(0.2)
    assert r.status == "signed"
    for name, proc in fresh_platform.procs.processes.items():
        assert proc.alive, f"{name} died when NATS restarted:\n{proc.log_tail()}"
    assert isinstance(fresh_client.connection, nats.aio.client.Client)
