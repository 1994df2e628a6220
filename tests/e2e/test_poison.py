"""Malformed bytes and wrong types on every consumed subject: typed errors, nothing stuck.

Junk is published by the identity allowed to publish there (a requester on its request
subject, policy on orders, the signer on key events and hsm-node RPCs, the node on its
beat): the bus keeps everyone else out, so these test the consumers behind it. Dead
letters are read as the provisioner, the one identity that may open a consumer.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import msgspec
import nacl.signing
import pytest
from nats.aio.client import Client

from devkit import forge
from libs.bus.permissions import (
    BACKUP,
    HSM_CALLS,
    POLICY,
    PROVISIONER,
    SIGNER,
    node_identity,
)
from proto import codec
from proto.errors import ErrorCode
from proto.events import KeyCreated
from proto.results import SignResult
from proto.subjects import (
    CREATE_KEY_ORDER,
    EVENT_KEY_CREATED,
    HDR_REQUEST_ID,
    SIGN_ORDER,
    create_key_request_subject,
    dead_letter_subject,
    hsm_rpc_subject,
    sign_request_subject,
)
from tests.conftest import TRADER

GARBAGE = b"\xc1\xff not msgpack"
A_RESULT = codec.encode(SignResult(request_id="x", status="signed"))
_FORGER = nacl.signing.SigningKey.generate()
_SOME_REQUEST = forge.signed_request(_FORGER, "desk-a", "desk-a-p", b"1" * 32, request_id="o1")
AN_ORDER = codec.encode(
    forge.order(_SOME_REQUEST, forge.authorization(_FORGER, _SOME_REQUEST, b""))
)
BAD_FIELD = msgspec.msgpack.encode({"type": "sign_request", "request_id": "has space"})

SIGN_REQUEST = sign_request_subject(TRADER)
CREATE_KEY_REQUEST = create_key_request_subject(TRADER)
# Who may publish on each subject (the requester's own connection for its requests).
PUBLISHER = {SIGN_ORDER: POLICY, CREATE_KEY_ORDER: POLICY, EVENT_KEY_CREATED: SIGNER}

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


@pytest.fixture(scope="module")
async def conns(platform, client) -> AsyncIterator[dict[str, Client]]:
    """A connection per identity the tests publish or look as."""
    found = {TRADER: client.connection}
    for identity in (POLICY, SIGNER, BACKUP, PROVISIONER, node_identity("hsm-1")):
        found[identity] = await platform.connect_as(identity)
    yield found
    for identity, conn in found.items():
        if identity != TRADER:
            await conn.close()


def js_for(conns: dict[str, Client], subject: str):
    return conns[PUBLISHER.get(subject, TRADER)].jetstream()


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
    platform, conns, subject, stream, payload, code
):
    ack = await js_for(conns, subject).publish(subject, payload)
    record = await dead_letter_for(conns[PROVISIONER].jetstream(), stream, ack.seq)
    assert record.code == code
    assert record.message and record.subject == subject


@pytest.mark.parametrize(("subject", "stream", "payload", "code"), CASES[:6])
async def test_poison_naming_a_request_gets_no_result_and_cannot_squat_its_id(
    platform, client, conns, subject, stream, payload, code
):
    """Junk carrying `Lantau-Request-Id: R` is dead-lettered; it never writes a result
    for R, so the genuine request R sent afterwards is the one that owns it."""
    rid = f"squat-{hashlib.sha256(subject.encode() + payload).hexdigest()[:16]}"
    ack = await js_for(conns, subject).publish(subject, payload, headers={HDR_REQUEST_ID: rid})
    record = await dead_letter_for(conns[PROVISIONER].jetstream(), stream, ack.seq)
    assert record.code == code and record.request_id == rid
    assert await client.get_result(rid) is None
    await client.create_key("desk-a-squat", "secp256k1")
    digest = hashlib.sha256(rid.encode()).digest()
    genuine = await client.sign("desk-a-squat", digest, request_id=rid)
    assert genuine.status == "signed", genuine.error
    # The client can hear of a result a moment before the stream serves it back.
    stored = await wait_stored(client, rid)
    assert stored is not None and stored.status == "signed"
    assert stored.signature == genuine.signature


async def test_a_forged_request_cannot_squat_the_id_of_the_real_one(platform, client, conns):
    """A request under R signed by the wrong key is refused without a result; the real
    request R is signed, and its stored result and the client agree."""
    import nacl.signing

    from libs.client import CustodyClient

    await client.create_key("desk-a-squat2", "secp256k1")
    digest = hashlib.sha256(b"real").digest()
    forger = CustodyClient(client.connection, client.requester, nacl.signing.SigningKey.generate())
    forged = forger.sign_request(
        "desk-a-squat2", hashlib.sha256(b"evil").digest(), request_id="sq-2"
    )
    js = conns[PROVISIONER].jetstream()
    await forger.submit(forged)
    found = []
    for _ in range(50):  # policy has seen and refused the forgery
        found = [m for m in await _dead_letters(js) if m.request_id == "sq-2"]
        if found:
            break
        await asyncio.sleep(0.1)
    assert found and found[0].code == ErrorCode.BAD_SIGNATURE
    assert await client.get_result("sq-2") is None
    real = await client.sign("desk-a-squat2", digest, request_id="sq-2")
    assert real.status == "signed", real.error
    assert (await wait_stored(client, "sq-2")).signature == real.signature


async def wait_stored(client, request_id: str):
    for _ in range(30):
        stored = await client.get_result(request_id)
        if stored is not None:
            return stored
        await asyncio.sleep(0.1)
    return None


async def _dead_letters(js):
    sub = await js.subscribe(dead_letter_subject("LANTAU_REQUESTS"), ordered_consumer=True)
    found = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except TimeoutError:
                return found
            found.append(codec.REJECTED.decode(msg.data))
    finally:
        await sub.unsubscribe()


@pytest.mark.parametrize(
    ("subject", "stream"), [(SIGN_REQUEST, "LANTAU_REQUESTS"), (SIGN_ORDER, "LANTAU_ORDERS")]
)
async def test_a_huge_request_id_header_is_dead_lettered_and_signing_goes_on(
    platform, client, conns, subject, stream
):
    """A header thousands of characters long once became a result subject, made
    nats-server close the service's connection and stopped all signing for good."""
    js = js_for(conns, subject)
    for header in ("R" * 5000, "a b", "x.*.>", "\u00e9t\u00e9"):
        ack = await js.publish(subject, GARBAGE, headers={HDR_REQUEST_ID: header})
        record = await dead_letter_for(conns[PROVISIONER].jetstream(), stream, ack.seq)
        assert record.code == ErrorCode.MALFORMED_MESSAGE
        assert record.request_id is None  # an invalid id is never carried on
    await client.create_key("desk-a-after-header", "secp256k1")
    signed = await client.sign("desk-a-after-header", hashlib.sha256(b"still").digest())
    assert signed.status == "signed"
    for name, proc in platform.procs.processes.items():
        assert proc.alive, f"{name} died:\n{proc.log_tail()}"
        assert await asyncio.to_thread(_ready, platform.url(name, "/healthz"))


def _ready(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


@pytest.mark.parametrize("op", ["generate", "public_key", "sign", "wrap", "unwrap"])
async def test_hsm_node_answers_bad_rpc_with_a_typed_failure(platform, conns, op):
    for payload, code in (
        (GARBAGE, ErrorCode.MALFORMED_MESSAGE),
        (A_RESULT, ErrorCode.WRONG_MESSAGE_TYPE),
    ):
        caller = next(role for role, ops in HSM_CALLS.items() if op in ops)
        reply = await conns[caller].request(hsm_rpc_subject("hsm-1", op), payload, timeout=5)
        failure = codec.HSM_REPLY.decode(reply.data)
        assert failure.code == code and failure.retryable is False


async def test_everything_keeps_serving_after_poison(platform, client, conns):
    # Poison of every kind, including to the beats the pool listens to.
    for subject, _, payload, _ in CASES:
        await js_for(conns, subject).publish(subject, payload)
    await conns[node_identity("hsm-1")].publish("lantau.hsm.beat.hsm-1", GARBAGE)
    await conns[SIGNER].publish(
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
