"""Decoding failures become typed errors with the right code."""

import msgspec
import nacl.signing
import pytest

from devkit import forge
from proto import codec
from proto.errors import ErrorCode, LantauError
from proto.requests import SignRequest, request_hash, signing_bytes

REQ = SignRequest(
    request_id="r1",
    requester="desk",
    key_id="k1",
    payload=b"\x01" * 32,
    created_at_ms=1,
    expires_at_ms=2,
)

RAW = dict(msgspec.structs.asdict(REQ), type="sign_request")


def test_round_trip():
    assert codec.REQUEST.decode(codec.encode(REQ)) == REQ


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xc1", ErrorCode.MALFORMED_MESSAGE),
        (b"", ErrorCode.MALFORMED_MESSAGE),
        (msgspec.msgpack.encode(5), ErrorCode.MALFORMED_MESSAGE),
        (msgspec.msgpack.encode({"type": "nope"}), ErrorCode.WRONG_MESSAGE_TYPE),
        (msgspec.msgpack.encode({"request_id": "x"}), ErrorCode.WRONG_MESSAGE_TYPE),
        (
            msgspec.msgpack.encode(RAW | {"request_id": "a b"}),
            ErrorCode.INVALID_FIELD,
        ),
        (
            msgspec.msgpack.encode(RAW | {"v": 99}),
            ErrorCode.UNSUPPORTED_VERSION,
        ),
    ],
)
def test_bad_bytes_get_typed_errors(data, code):
    with pytest.raises(LantauError) as e:
        codec.REQUEST.decode(data)
    assert e.value.code == code
    assert e.value.message


def test_an_order_is_not_a_request():
    key = nacl.signing.SigningKey.generate()
    request = forge.signed_request(key, "d", "k", b"\x01" * 32)
    order = forge.order(request, forge.authorization(key, request, b""))
    with pytest.raises(LantauError) as e:
        codec.REQUEST.decode(codec.encode(order))
    assert e.value.code == ErrorCode.WRONG_MESSAGE_TYPE


def test_request_hash_ignores_envelope_but_not_content():
    later = msgspec.structs.replace(REQ, created_at_ms=100, expires_at_ms=200, signature=b"s")
    assert request_hash(later) == request_hash(REQ)
    assert signing_bytes(later) != signing_bytes(REQ)
    other = msgspec.structs.replace(REQ, payload=b"\x02" * 32)
    assert request_hash(other) != request_hash(REQ)
