"""The sign path end to end: real nats-server, SoftHSM tokens and service processes."""

from __future__ import annotations

import asyncio
import hashlib

import msgspec
import nacl.signing
import pytest

from libs.bus.permissions import PROVISIONER
from libs.client import CustodyClient, PermissionDenied, RequestIdConflict
from libs.clock import now_ms
from proto import codec
from proto.errors import ErrorCode
from proto.subjects import HDR_REQUEST_ID, intent_subject, sign_request_subject
from tests.e2e.helpers import results_on_subject, verify_independently
from tests.e2e.test_poison import dead_letter_for


async def test_both_curves_are_signed_and_verify_with_an_independent_library(client):
    btc = await client.create_key("desk-a-btc", "secp256k1")
    sol = await client.create_key("desk-a-sol", "ed25519")
    assert (btc.status, sol.status) == ("created", "created")
    assert len(btc.public_key) == 33 and len(sol.public_key) == 32

    digest = hashlib.sha256(b"pay 1 BTC").digest()
    r1 = await client.sign("desk-a-btc", digest)
    assert r1.status == "signed", r1.error
    assert r1.curve == "secp256k1" and len(r1.signature) == 64 and r1.recovery_id in (0, 1)
    assert int.from_bytes(r1.signature[32:], "big") <= (
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 // 2
    )
    verify_independently(r1, digest)

    message = b"transfer 3 SOL"
    r2 = await client.sign("desk-a-sol", message, payload_kind="message")
    assert r2.status == "signed", r2.error
    verify_independently(r2, message)


async def test_resending_a_request_id_returns_the_same_result_and_signs_once(platform, client, nc):
    await client.create_key("desk-a-idem", "secp256k1")
    digest = hashlib.sha256(b"once").digest()
    first = await client.sign("desk-a-idem", digest, request_id="idem-1")
    again = await client.sign("desk-a-idem", digest, request_id="idem-1")
    # A resend submitted concurrently is just as idempotent.
    many = await asyncio.gather(
        *(client.sign("desk-a-idem", digest, request_id="idem-1") for _ in range(5))
    )
    assert first.status == "signed"
    assert {r.signature for r in (again, *many)} == {first.signature}
    js = nc.jetstream()  # stream views are the operator's, not the requester's
    assert await results_on_subject(js, client.requester, "idem-1") == 1
    # The audit intent exists once per HSM attempt: exactly one signature was made.
    subject = intent_subject(client.requester, "idem-1")
    info = await js.stream_info("LANTAU_AUDIT", subjects_filter=subject)
    assert info.state.subjects == {subject: 1}


async def test_reusing_a_request_id_for_other_content_is_refused(client):
    await client.create_key("desk-a-conf", "secp256k1")
    ok = await client.sign("desk-a-conf", hashlib.sha256(b"a").digest(), request_id="conf-1")
    assert ok.status == "signed"
    with pytest.raises(RequestIdConflict):
        await client.sign(
            "desk-a-conf", hashlib.sha256(b"b").digest(), request_id="conf-1", timeout=10
        )


@pytest.mark.parametrize(
    ("mutate", "code", "status"),
    [
        # Unauthenticated: refused onto the dead-letter stream only, never a result (a
        # forgery owns no request id); the client times out. (A request naming a
        # requester other than the connection's identity never reaches policy: the bus
        # refuses it, test_a_request_in_another_requesters_name_is_refused_by_the_bus.)
        ("bad_signature", ErrorCode.BAD_SIGNATURE, None),
        ("expired", ErrorCode.REQUEST_EXPIRED, "expired"),
        ("future", ErrorCode.REQUEST_FROM_FUTURE, "rejected"),
        ("no_access", ErrorCode.ACCESS_DENIED, "rejected"),
        ("unknown_key", ErrorCode.UNKNOWN_KEY, "rejected"),
        ("short_digest", ErrorCode.INVALID_PAYLOAD, "rejected"),
    ],
)
async def test_bad_requests_get_typed_errors(platform, client, trader_key, mutate, code, status):
    await client.create_key("desk-a-typed", "secp256k1")
    key_id, payload = "desk-a-typed", hashlib.sha256(b"x").digest()
    signer_key = trader_key
    requester = client.requester
    created = now_ms()
    if mutate == "no_access":
        key_id = "someone-elses-key"
    elif mutate == "unknown_key":
        key_id = "desk-a-missing"
    elif mutate == "short_digest":
        payload = b"short"
    elif mutate == "bad_signature":
        signer_key = nacl.signing.SigningKey.generate()
    elif mutate == "expired":
        created = now_ms() - 10 * 60_000
    elif mutate == "future":
        created = now_ms() + 10 * 60_000
    forger = CustodyClient(client.connection, requester, signer_key)
    request = forger.sign_request(key_id, payload)
    request = msgspec.structs.replace(
        request, created_at_ms=created, expires_at_ms=created + 60_000, signature=b""
    )
    request = forger.signed(request)
    if status is None:
        ack = await forger.connection.jetstream().publish(
            sign_request_subject(requester),
            codec.encode(request),
            headers={HDR_REQUEST_ID: "typed-x"},
        )
        admin = await platform.connect_as(PROVISIONER)  # dead letters: read as provisioner
        try:
            record = await dead_letter_for(admin.jetstream(), "LANTAU_REQUESTS", ack.seq)
        finally:
            await admin.close()
        assert record.code == code and record.message
        assert await forger.get_result(request.request_id) is None
    else:
        result = await forger.send(request, timeout=15)
        assert result.status == status
        assert result.error is not None and result.error.code == code
        assert result.error.message  # a sentence for humans
        assert result.signature is None
    # The platform keeps serving.
    good = await client.sign("desk-a-typed", hashlib.sha256(b"after").digest())
    assert good.status == "signed"


async def test_a_request_in_another_requesters_name_is_refused_by_the_bus(client, trader_key):
    """Requests travel on lantau.request.sign.<requester>: desk-a's identity may publish
    only its own, so a request naming an unregistered requester never reaches policy."""
    forger = CustodyClient(client.connection, "mallory", trader_key)
    with pytest.raises(PermissionDenied) as refused:
        await forger.send(forger.sign_request("desk-a-typed", b"x" * 32), timeout=15)
    assert refused.value.code == ErrorCode.PERMISSION_DENIED
