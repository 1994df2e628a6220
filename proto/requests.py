"""What trading systems send: sign requests and key-creation requests.

A request is signed by its requester's Ed25519 key over ``signing_bytes``: sorted-key
JSON of every field except ``signature``, behind a domain-separation prefix, so any
language can reproduce it from the JSON Schema.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import msgspec

from proto.base import Message
from proto.common import (
    Curve,
    DerivationPath,
    HssShape,
    Identity,
    KeyId,
    Payload,
    PayloadKind,
    RequestId,
    TimestampMs,
    canonical_json,
    whole,
)


class Transfer(msgspec.Struct, frozen=True, kw_only=True):
    """What the requester says the payload moves: asset, integer minor units, destination.

    For a decoded transaction policy judges what it parses and refuses a declaration
    that disagrees; for a blind payload the declaration is all there is to judge."""

    # A native symbol (BTC, ETH, SOL) or a token as libs/chains names it (erc20:0x...).
    asset: Annotated[str, msgspec.Meta(pattern=whole("[A-Za-z0-9:._-]{1,80}"))]
    # Minor units; a decimal string when it does not fit 64 bits (wei, token units).
    amount: (
        Annotated[int, msgspec.Meta(ge=0)]
        | Annotated[str, msgspec.Meta(pattern=whole("(0|[1-9][0-9]{0,77})"))]
    )
    destination: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]

    @property
    def value(self) -> int:
        return int(self.amount)


class SignRequest(Message, tag="sign_request", frozen=True, kw_only=True):
    request_id: RequestId
    requester: Identity
    key_id: KeyId
    payload: Payload
    payload_kind: PayloadKind = "digest"
    # Where a transaction does not say its own network: "bitcoin", "testnet", "signet",
    # "regtest" for a PSBT; the cluster name for Solana. EVM transactions carry their chain
    # (a hint that disagrees is CHAIN_MISMATCH). Bare or CAIP-2: "testnet", "bip122:testnet",
    # "solana:devnet", "eip155:1".
    chain: (
        Annotated[str, msgspec.Meta(pattern=whole("([a-z0-9-]{3,8}:)?[a-z0-9-]{1,32}"))] | None
    ) = None
    transfer: Transfer | None = None
    created_at_ms: TimestampMs
    expires_at_ms: TimestampMs
    signature: bytes = b""
    # HD keys (bip32-secp256k1, slip10-ed25519): the child key that signs, derived from
    # the wallet's root in the hsm-node for this one signature. Required for HD keys,
    # absent for every other key type.
    path: DerivationPath | None = None


class CreateKeyRequest(Message, tag="create_key_request", frozen=True, kw_only=True):
    request_id: RequestId
    requester: Identity
    key_id: KeyId
    curve: Curve
    # Residency: a key tagged with a region is only ever held by HSMs of that region.
    region: Annotated[str, msgspec.Meta(pattern=whole("[a-z0-9-]{1,32}"))] | None = None
    created_at_ms: TimestampMs
    expires_at_ms: TimestampMs
    signature: bytes = b""
    # lms-hss only: the tree shape (policy fills in the default when absent).
    hss: HssShape | None = None


Request = SignRequest | CreateKeyRequest

_PREFIX = b"lantau/request/v1\n"
# Fields added after the first version: left out of the signed bytes while None, so a
# request without them is signed exactly as before they existed.
_LATE_FIELDS = ("path", "hss")


def signing_bytes(request: Request) -> bytes:
    """Canonical bytes the requester signs: every field but ``signature``, sorted-key JSON
    (``path`` and ``hss`` only when set)."""
    unsigned = msgspec.structs.replace(request, signature=b"")
    return _PREFIX + canonical_json(unsigned, late_fields=_LATE_FIELDS)


_ENVELOPE = {"signature": b"", "created_at_ms": 0, "expires_at_ms": 0}


def message_id(request: Request) -> str:
    """JetStream's de-duplication id for a request: the requester's id *and* its signature,
    so a byte-identical resend is dropped but a forgery published first under the same id
    can never make the bus drop the genuine request as a duplicate."""
    tag = hashlib.sha256(request.signature).hexdigest()[:32]
    return f"{request.requester}.{request.request_id}.{tag}"


def request_hash(request: Request) -> str:
    """Hash of what is asked (key, payload, transfer, ...), not of when or the signature.

    A resend of the same request id re-signs a fresh envelope but keeps this hash, so
    it is recognised as the same request and answered with the same result.
    """
    content = msgspec.structs.replace(request, **_ENVELOPE)
    return hashlib.sha256(
        b"lantau/request-content/v1\n" + canonical_json(content, late_fields=_LATE_FIELDS)
    ).hexdigest()
