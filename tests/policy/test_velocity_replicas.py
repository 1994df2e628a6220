"""Several policy replicas fed the same traffic, against a real JetStream KV: a velocity
window never goes past its limit and no request is counted twice."""

from __future__ import annotations

import asyncio
import uuid

import nats
import nats.js.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.natsserver import NatsServer
from libs.policy_file import parse
from proto.requests import SignRequest, Transfer
from proto.subjects import request_key
from services.policy import velocity as vel
from services.policy.velocity_state import VelocityBook

POLICY = """
version = "v"
[[rules]]
name = "cap"
keys = ["k-*"]
velocity = {{ per = "key", window_s = 3600, max_amount = {limit}, max_count = {count} }}
action = "deny"
[[rules]]
name = "ok"
keys = ["k-*"]
action = "allow"
"""


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server.url
    server.stop()


def request(i: int, amount: int) -> SignRequest:
    return SignRequest(
        request_id=f"r{i}",
        requester="desk",
        key_id="k-1",
        payload=b"x",
        payload_kind="message",
        transfer=Transfer(asset="ETH", amount=amount, destination="d"),
        created_at_ms=1,
        expires_at_ms=2,
    )


async def scenario(url: str, limit: int, count: int, amounts: list[int], replicas: int):
    policy = parse(POLICY.format(limit=limit, count=count))
    conns = [await nats.connect(url) for _ in range(replicas)]
    try:
        bucket = f"vel_{uuid.uuid4().hex[:12]}"
        await conns[0].jetstream().create_key_value(bucket=bucket, history=1)
        books = [VelocityBook(await c.jetstream().key_value(bucket)) for c in conns]
        traffic = [request(i, a) for i, a in enumerate(amounts)]
        now = 10_000_000

        async def replica(book: VelocityBook, order: list[SignRequest]):
            return [
                (request_key(r.requester, r.request_id), (await book.decide(policy, r, now)).action)
                for r in order
            ]

        # Every replica sees every request (as after redeliveries), in its own order.
        runs = await asyncio.gather(
            *(replica(b, traffic[i:] + traffic[:i]) for i, b in enumerate(books))
        )
        try:
            window = vel.decode((await books[0].kv.get("cap.key.k-1")).value)
        except nats.js.errors.KeyNotFoundError:
            window = vel.Window()
        return runs, window
    finally:
        for c in conns:
            await c.close()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    limit=st.integers(50, 600),
    count=st.integers(1, 12),
    amounts=st.lists(st.integers(0, 200), min_size=1, max_size=20),
    replicas=st.integers(2, 4),
)
def test_concurrent_replicas_never_exceed_a_window(nats_url, limit, count, amounts, replicas):
    runs, window = asyncio.run(scenario(nats_url, limit, count, amounts, replicas))
    ids = [e.request_id for e in window.entries]
    assert len(ids) == len(set(ids)), "a request was counted twice"
    total = sum(e.amount for e in window.entries)
    assert total <= limit and len(ids) <= count
    charged = set(ids)
    # One decision per request, whichever replica asks; exactly the allowed are counted.
    decided = {r: {a for run in runs for rid, a in run if rid == r} for r, _ in runs[0]}
    assert all(len(actions) == 1 for actions in decided.values()), decided
    assert {r for r, a in decided.items() if a == {"allow"}} == charged
    # Liveness: the first request that fits alone is never refused everywhere.
    if amounts[0] <= limit:
        assert charged, "nothing was allowed although the first request fits"
