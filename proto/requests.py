"""What trading systems send: sign requests and key-creation requests.

A request is signed by its requester's Ed25519 key over ``signing_bytes``: sorted-key
JSON of every field except ``signature``, behind a domain-separation prefix, so any
language can reproduce it from the JSON Schema.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import msgspec

from proto import SCHEMA_VERSION
from proto.common import (
    Curve,
    KeyId,
    Name,
    Payload,
    PayloadKind,
    RequestId,
    TimestampMs,
    Version,
    whole,
)


class Transfer(msgspec.Struct, frozen=True, kw_only=True):
    """What the payload moves, for policy rules: asset, integer minor units, destination."""

    asset: Annotated[str, msgspec.Meta(pattern=whole("[A-Z0-9]{1,16}"))]
    amount: Annotated[int, msgspec.Meta(ge=0)]
    destination: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class SignRequest(msgspec.Struct, frozen=True, kw_only=True, tag="sign_request", tag_field="type"):
    request_id: RequestId
    requester: Name
    key_id: KeyId
    payload: Payload
    payload_kind: PayloadKind = "digest"
    transfer: Transfer | None = None
    created_at_ms: TimestampMs
    expires_at_ms: TimestampMs
    signature: bytes = b""
    v: Version = SCHEMA_VERSION


class CreateKeyRequest(
    msgspec.Struct, frozen=True, kw_only=True, tag="create_key_request", tag_field="type"
):
    request_id: RequestId
    requester: Name
    key_id: KeyId
    curve: Curve
    # Residency: a key tagged with a region is only ever held by HSMs of that region.
    region: Annotated[str, msgspec.Meta(pattern=whole("[a-z0-9-]{1,32}"))] | None = None
    created_at_ms: TimestampMs
    expires_at_ms: TimestampMs
    signature: bytes = b""
    v: Version = SCHEMA_VERSION


Request = SignRequest | CreateKeyRequest

_PREFIX = b"lantau/request/v1\n"


def signing_bytes(request: Request) -> bytes:
    """Canonical bytes the requester signs: every field but ``signature``, sorted-key JSON."""
    unsigned = msgspec.structs.replace(request, signature=b"")
    return _PREFIX + msgspec.json.encode(unsigned, order="sorted")


_ENVELOPE = {"signature": b"", "created_at_ms": 0, "expires_at_ms": 0}


def request_hash(request: Request) -> str:
    """Hash of what is asked (key, payload, transfer, ...), not of when or the signature.

    A resend of the same request id re-signs a fresh envelope but keeps this hash, so
    it is recognised as the same request and answered with the same result.
    """
    content = msgspec.structs.replace(request, **_ENVELOPE)
    return hashlib.sha256(
        b"lantau/request-content/v1\n" + msgspec.json.encode(content, order="sorted")
    ).hexdigest()
