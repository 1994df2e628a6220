"""Publishes that meet a leader election or lose their ack, against a real nats-server.

A lost ack is made real: the publish reaches the server and is stored, then the caller
sees a timeout instead of the ack (what a client sees when a stream leader dies between
storing and answering). The retry must then store nothing twice and know its own write;
a write someone else made in between must not pass for ours.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import nacl.signing
import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from libs.bus import kv as kv_ops
from libs.bus.connect import connect
from libs.bus.publish import (
    maybe_stored,
    next_delay,
    not_stored,
    publish,
    publish_after,
    retryable,
    until_stored,
)
from libs.client import CustodyClient
from proto.events import NodeStateChanged

STREAM = "T"


def event(n: int) -> NodeStateChanged:
    return NodeStateChanged(
        node_id="hsm-1", observer="t", old="up", new="down", reason=f"{n}", at_ms=n
    )


def flaky(js: JetStreamContext, plan: list[str]) -> list[dict[str, Any]]:
    """Replace ``js.publish``: each call takes the next step of ``plan`` ("lose-ack": store,
    then time out; "no-leader": store nothing, no responders; "other": someone else's
    message lands first, then time out; "ok"), then every call is real. Returns the calls."""
    real = js.publish
    calls: list[dict[str, Any]] = []

    async def publish_(subject: str, payload: bytes = b"", **kw: Any) -> Any:
        calls.append({"subject": subject, "payload": payload, **kw})
        step = plan.pop(0) if plan else "ok"
        if step == "no-leader":
            raise nats.js.errors.NoStreamResponseError
        if step == "other":
            await real(subject, b"someone else", headers=None)
            raise nats.errors.TimeoutError
        ack = await real(subject, payload, **kw)
        if step == "lose-ack":
            raise nats.errors.TimeoutError
        return ack

    js.publish = publish_  # type: ignore[method-assign,assignment]
    return calls


@pytest.fixture
async def js(nats_server):
    _, cfg = nats_server()
    nc = await connect(cfg, "t", identity="tester")
    stream = nc.jetstream()
    await stream.add_stream(
        StreamConfig(name=STREAM, subjects=["t.>", "lantau.request.>"], allow_direct=True)
    )
    yield stream
    await nc.close()


async def count(js: JetStreamContext, subject: str) -> int:
    info = await js.stream_info(STREAM, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


# -- classification and backoff (pure) ---------------------------------------------------


def test_which_failures_are_retried_and_which_may_have_stored():
    timeout, no_leader = nats.errors.TimeoutError(), nats.js.errors.NoStreamResponseError()
    unavailable = nats.js.errors.ServiceUnavailableError(code=503)
    refused = nats.js.errors.BadRequestError(code=400)
    assert all(
        retryable(e) for e in (timeout, no_leader, unavailable, nats.errors.NoRespondersError())
    )
    assert not retryable(refused) and not retryable(nats.errors.ConnectionClosedError())
    assert maybe_stored(timeout) and not maybe_stored(no_leader)
    assert not_stored(no_leader) and not_stored(unavailable) and not not_stored(timeout)


def test_backoff_doubles_up_to_a_ceiling():
    delays = [0.0]
    for _ in range(12):
        delays.append(next_delay(delays[-1]))
    assert delays[1] == 0.05 and delays[2] == 0.1
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert max(delays) == 1.0


# -- publish_after: the signer's audit intents --------------------------------------------


async def test_publish_after_knows_its_own_write_when_the_ack_was_lost(js):
    calls = flaky(js, ["lose-ack"])
    seq = await publish_after(js, "t.intent.a", event(1), 0, stream=STREAM)
    raw = await js.get_last_msg(STREAM, "t.intent.a")
    assert seq == raw.seq and await count(js, "t.intent.a") == 1
    assert len(calls) == 2 and calls[0]["headers"] == calls[1]["headers"]


async def test_publish_after_does_not_take_someone_elses_write_for_its_own(js):
    flaky(js, ["other"])
    assert await publish_after(js, "t.intent.b", event(2), 0, stream=STREAM) is None
    assert (await js.get_last_msg(STREAM, "t.intent.b")).data == b"someone else"


async def test_publish_after_without_its_stream_is_tried_once(js):
    calls = flaky(js, ["no-leader"])
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await publish_after(js, "t.intent.c", event(3), 0)
    assert len(calls) == 1


async def test_publish_after_waits_out_a_leader_election(js):
    calls = flaky(js, ["no-leader", "no-leader", "no-leader"])
    seq = await publish_after(js, "t.intent.d", event(4), 0, stream=STREAM)
    assert seq is not None and len(calls) == 4 and await count(js, "t.intent.d") == 1


# -- publish: results (first on the subject), messages with ids, the rest ----------------


async def test_first_on_subject_with_its_stream_knows_its_own_result(js):
    flaky(js, ["lose-ack"])
    assert await publish(js, "t.result.a", event(5), first_on_subject=True, stream=STREAM)
    assert await count(js, "t.result.a") == 1
    # A second, different result is still refused: one result per request, forever.
    assert not await publish(js, "t.result.a", event(6), first_on_subject=True, stream=STREAM)


async def test_a_message_id_makes_the_retry_a_duplicate_the_stream_drops(js):
    calls = flaky(js, ["lose-ack", "no-leader"])
    assert await publish(js, "t.order.a", event(7), msg_id="order:a")
    assert len(calls) == 3 and await count(js, "t.order.a") == 1


async def test_a_publish_that_cannot_be_repeated_safely_is_tried_once(js):
    calls = flaky(js, ["lose-ack"])
    with pytest.raises(nats.errors.TimeoutError):
        await publish(js, "t.receipt.a", event(8))
    assert len(calls) == 1 and await count(js, "t.receipt.a") == 1


# -- the client's submit ------------------------------------------------------------------


async def test_the_client_resubmits_a_request_with_the_same_message_id(js):
    client = CustodyClient(js._nc, "desk", nacl.signing.SigningKey.generate())
    request = client.sign_request("desk-k", b"\x01" * 32)
    calls = flaky(client._js, ["no-leader", "lose-ack"])
    seen_before = await client.submit(request)
    assert seen_before  # the third try met the second, stored one: JetStream's duplicate
    assert len(calls) == 3 and await count(js, "lantau.request.sign.desk") == 1
    assert len({c["headers"]["Nats-Msg-Id"] for c in calls}) == 1


# -- KV compare-and-set -----------------------------------------------------------------


async def _bucket(js: JetStreamContext):
    return await js.create_key_value(bucket="t_kv", history=4)


async def test_kv_write_waits_out_a_leader_election(js):
    bucket = await _bucket(js)
    calls = flaky(bucket._js, ["no-leader", "no-leader"])
    assert await kv_ops.write(bucket, "k", b"v", 0) == 1
    assert len(calls) == 3


async def test_kv_write_leaves_a_timeout_to_the_caller(js):
    bucket = await _bucket(js)
    calls = flaky(bucket._js, ["lose-ack"])
    with pytest.raises(nats.errors.TimeoutError):
        await kv_ops.write(bucket, "k", b"v", 0)
    assert len(calls) == 1


async def test_until_stored_gives_up_when_time_is_up():
    tries = 0

    async def never() -> None:
        nonlocal tries
        tries += 1
        raise nats.js.errors.NoStreamResponseError

    write: Callable[[], Awaitable[None]] = never
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await until_stored(write, retry_for_s=0.3)
    assert 2 <= tries <= 6
