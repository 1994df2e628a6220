"""Signed authorizations: what the hsm-node checks before it lets its HSM sign, generate
or clone anything.

Each is a party's signature over a canonical, domain-separated statement: policy says
"this exact request may be signed (these digests, under this rule, with these
approvals, until then)" or "this key may be created"; the backup service says "this key
may be cloned from there to here". The hsm-node pins the public keys of the parties in
its configuration; a statement signed by anyone else, for other bytes, or too late, is
refused there, whatever the bus or the signer did.

Canonical bytes: the domain line, then sorted-key JSON of every field but ``signature``.
"""

from __future__ import annotations

import hashlib

import msgspec

from proto.base import Message
from proto.common import (
    Curve,
    DerivationPath,
    HssShape,
    Identity,
    KeyId,
    PayloadKind,
    RequestId,
    TimestampMs,
    canonical_json,
)

HexDigest = str


class SignAuthorization(Message, tag="sign_authorization", frozen=True, kw_only=True):
    requester: Identity
    request_id: RequestId
    # proto.requests.request_hash of the requester's signed request.
    request_hash: HexDigest
    key_id: KeyId
    curve: Curve
    payload_kind: PayloadKind
    # True for a raw digest or message nobody decoded: a permission of its own.
    blind: bool
    # SHA-256 of each exact byte string the HSM signs, in order (one per PSBT input).
    digests: list[HexDigest]
    # What approvers saw (libs.chains.view_digest) for a decoded transaction.
    view_sha256: HexDigest = ""
    rule: str
    policy_version: str
    # When the rule needed approvals: the group, how many, and the votes counted
    # (SHA-256 of each vote's signing bytes; the votes travel with the order).
    group: str = ""
    quorum: int = 0
    approvals: list[HexDigest] = []
    issued_at_ms: TimestampMs
    not_after_ms: TimestampMs
    # Hex public key of the policy key that signed (one of the pinned ones).
    signed_by: str
    signature: bytes = b""
    # HD keys: the derivation path of the child key that signs (the request's).
    path: DerivationPath | None = None


class CreateKeyAuthorization(Message, tag="create_key_authorization", frozen=True, kw_only=True):
    requester: Identity
    request_id: RequestId
    request_hash: HexDigest
    key_id: KeyId
    curve: Curve
    region: str | None = None
    rule: str
    policy_version: str
    issued_at_ms: TimestampMs
    not_after_ms: TimestampMs
    signed_by: str
    signature: bytes = b""
    # lms-hss: the shape the key is generated with (the request's, or policy's default).
    hss: HssShape | None = None


class CloneAuthorization(Message, tag="clone_authorization", frozen=True, kw_only=True):
    """The backup service's word that one key may be wrapped on ``source`` and unwrapped
    on ``target``; the key's region comes from policy's create authorization, not from
    this statement."""

    key_id: KeyId
    curve: Curve
    public_key: bytes
    source: str
    target: str
    issued_at_ms: TimestampMs
    not_after_ms: TimestampMs
    signed_by: str
    signature: bytes = b""


Authorization = SignAuthorization | CreateKeyAuthorization | CloneAuthorization

_DOMAIN = {
    SignAuthorization: b"lantau/sign-authorization/v1\n",
    CreateKeyAuthorization: b"lantau/create-key-authorization/v1\n",
    CloneAuthorization: b"lantau/clone-authorization/v1\n",
}


# Added after the first version: left out while None, so statements without them keep
# their bytes (and a node that predates them still checks them).
_LATE_FIELDS = ("path", "hss")


def signing_bytes(statement: Authorization) -> bytes:
    unsigned = msgspec.structs.replace(statement, signature=b"")
    return _DOMAIN[type(statement)] + canonical_json(unsigned, late_fields=_LATE_FIELDS)


def statement_hash(statement: Authorization) -> str:
    """Names one exact signed statement (signature included): the replay record's key."""
    return hashlib.sha256(signing_bytes(statement) + statement.signature).hexdigest()


def digest_of(data: bytes) -> HexDigest:
    return hashlib.sha256(data).hexdigest()
