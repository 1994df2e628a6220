"""Malformed bytes and wrong types on every consumed subject: typed errors, nothing stuck."""

from __future__ import annotations

import asyncio
import hashlib

import msgspec
import pytest

from proto import codec
from proto.errors import ErrorCode
from proto.events import KeyCreated
from proto.orders import Decision, SignOrder
from proto.results import SignResult
from proto.subjects import (
    CREATE_KEY_ORDER,
    CREATE_KEY_REQUEST,
    EVENT_KEY_CREATED,
    HDR_REQUEST_ID,
    SIGN_ORDER,
    SIGN_REQUEST,
    dead_letter_subject,
    hsm_rpc_subject,
)

GARBAGE = b"\xc1\xff not msgpack"
A_RESULT = codec.encode(SignResult(request_id="x", status="signed"))
AN_ORDER = codec.encode(
    SignOrder(
        request_id="o1",
        request_hash="h",
        requester="desk-a",
        key_id="desk-a-p",
        payload=b"1" * 32,
        payload_kind="digest",
        decision=Decision(policy_version="t", rule="t", explanation="t"),
        requested_at_ms=1,
        deadline_ms=2**41,
    )
)
BAD_FIELD = msgspec.msgpack.encode({"type": "sign_request", "request_id": "has space"})

# subject, stream, payload, expected code
CASES = [
    (SIGN_REQUEST, "LANTAU_REQUESTS", GARBAGE, ErrorCode.MALFORMED_MESSAGE),
    (SIGN_REQUEST, "LANTAU_REQUESTS", AN_ORDER, ErrorCode.WRONG_MESSAGE_TYPE),
    (CREATE_KEY_REQUEST, "LANTAU_REQUESTS", A_RESULT, ErrorCode.WRONG_MESSAGE_TYPE),
    (SIGN_REQUEST, "LANTAU_REQUESTS", BAD_FIELD, ErrorCode.INVALID_FIELD),
    (SIGN_ORDER, "LANTAU_ORDERS", GARBAGE, ErrorCode.MALFORMED_MESSAGE),
    (CREATE_KEY_ORDER, "LANTAU_ORDERS", A_RESULT, ErrorCode.WRONG_MESSAGE_TYPE),
    (EVENT_KEY_CREATED, "LANTAU_EVENTS", GARBAGE, ErrorCode.MALFORMED_MESSAGE),
    (EVENT_KEY_CREATED, "LANTAU_EVENTS", AN_ORDER, ErrorCode.WRONG_MESSAGE_TYPE),
]


async def dead_letter_for(js, stream: str, seq: int, timeout_s: float = 15.0):
    sub = await js.subscribe(dead_letter_subject(stream), ordered_consumer=True)
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            try:
                msg = await sub.next_msg(timeout=1)
            except TimeoutError:
                continue
            record = codec.REJECTED.decode(msg.data)
            if record.stream_seq == seq:
                return record
    finally:
        await sub.unsubscribe()
    raise AssertionError(f"no dead-letter record for {stream} seq {seq}")


@pytest.mark.parametrize(("subject", "stream", "payload", "code"), CASES)
async def test_poison_without_request_id_is_dead_lettered_with_its_code(
    platform, client, subject, stream, payload, code
):
    ack = await client.connection.jetstream().publish(subject, payload)
    record = await dead_letter_for(client.connection.jetstream(), stream, ack.seq)
    assert record.code == code
    assert record.message and record.subject == subject


@pytest.mark.parametrize(("subject", "stream", "payload", "code"), CASES[:6])
async def test_poison_with_request_id_gets_a_typed_result(
    platform, client, subject, stream, payload, code
):
    rid = f"poison-{hashlib.sha256(subject.encode() + payload).hexdigest()[:16]}"
    await client.connection.jetstream().publish(subject, payload, headers={HDR_REQUEST_ID: rid})
    for _ in range(150):
        result = await client.get_result(rid)
        if result is not None:
            break
        await asyncio.sleep(0.1)
    assert result is not None, "no typed result for a poison message that named its request"
    assert result.status in ("rejected", "failed")
    assert result.error is not None and result.error.code == code


@pytest.mark.parametrize("op", ["generate", "public_key", "sign", "wrap", "unwrap"])
async def test_hsm_node_answers_bad_rpc_with_a_typed_failure(platform, nc, op):
    for payload, code in (
        (GARBAGE, ErrorCode.MALFORMED_MESSAGE),
        (A_RESULT, ErrorCode.WRONG_MESSAGE_TYPE),
    ):
        reply = await nc.request(hsm_rpc_subject("hsm-1", op), payload, timeout=5)
        failure = codec.HSM_REPLY.decode(reply.data)
        assert failure.code == code and failure.retryable is False


async def test_everything_keeps_serving_after_poison(platform, client, nc):
    # Poison of every kind, including to the beats the pool listens to.
    for subject, _, payload, _ in CASES:
        await client.connection.jetstream().publish(subject, payload)
    await nc.publish("lantau.hsm.beat.hsm-1", GARBAGE)
    await nc.publish(
        EVENT_KEY_CREATED,
        codec.encode(
            KeyCreated(
                key_id="desk-a-nope",
                curve="secp256k1",
                public_key=b"",
                node="hsm-1",
                request_id="r",
                at_ms=1,
            )
        ),
    )
    created = await client.create_key("desk-a-after-poison", "secp256k1")
    assert created.status == "created"
    signed = await client.sign("desk-a-after-poison", hashlib.sha256(b"ok").digest())
    assert signed.status == "signed"
    for name, proc in platform.procs.processes.items():
        assert proc.alive, f"{name} died:\n{proc.log_tail()}"
