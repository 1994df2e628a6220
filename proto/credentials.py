"""Second factors of the people who approve: security keys (WebAuthn credentials) and TOTP
authenticators, enrolled only by a quorum and revoked by one signature.

A credential is described by a ``CredentialStatement``. It counts once M members of the
policy file's enrolment group (never the person it belongs to) have signed the statement's
bytes with their Ed25519 vote keys (``Endorsement``); policy keeps the record in the
``lantau_credentials`` bucket, and policy, the console and every hsm-node re-check the
endorsements themselves, so a process that can write the bucket (or a console that made
up a statement) cannot enrol a key. One signed ``Revocation`` (by the person or a member
of the enrolment group) ends it for good.

Requests on ``lantau.request.credential.<sender>``: ``CredentialProposal`` (the console,
after a WebAuthn registration it verified), ``TotpEnrolment`` (an approver asks policy
to make a TOTP secret), ``CredentialEndorsement``, ``CredentialRevocation``. Policy
answers each with a ``CredentialOutcome`` on ``lantau.event.credential.<person>``.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import msgspec

from proto.base import Message
from proto.common import Identity, RequestId, TimestampMs, whole

CredentialKind = Literal["webauthn", "totp"]
CredentialStatus = Literal["proposed", "active", "revoked"]
# KV key suffix of a credential: the first 32 hex of SHA-256(credential id).
CredentialKey = Annotated[str, msgspec.Meta(pattern=whole("[0-9a-f]{32}"))]
Sha256Hex = Annotated[str, msgspec.Meta(pattern=whole("[0-9a-f]{64}"))]


class CredentialStatement(msgspec.Struct, frozen=True, kw_only=True):
    """What the enrolment quorum signs: whose credential, which one, and how to check it."""

    person: Identity
    kind: CredentialKind
    # WebAuthn: the credential id the authenticator chose. TOTP: 16 random bytes.
    credential_id: Annotated[bytes, msgspec.Meta(min_length=1, max_length=1023)]
    # WebAuthn: the credential public key (COSE_Key, as registration returned it).
    public_key: Annotated[bytes, msgspec.Meta(max_length=2048)] = b""
    # WebAuthn: where its assertions are made; both are checked on every assertion.
    rp_id: Annotated[str, msgspec.Meta(max_length=253)] = ""
    origin: Annotated[str, msgspec.Meta(max_length=512)] = ""
    # TOTP: the secret, sealed (AES-256-GCM) under a key that never leaves policy's
    # token (libs/keytypes/sealed.py); ``sealed_with`` names that key's label.
    sealed_secret: Annotated[bytes, msgspec.Meta(max_length=256)] = b""
    sealed_with: Annotated[str, msgspec.Meta(max_length=128)] = ""
    # A name the person gave it ("yubikey blue"), shown to endorsers.
    label: Annotated[str, msgspec.Meta(max_length=64)] = ""
    proposed_at_ms: TimestampMs
    # Endorsements must arrive before this, or the proposal lapses.
    expires_at_ms: TimestampMs


_STATEMENT_PREFIX = b"lantau/credential/v1\n"
_REVOCATION_PREFIX = b"lantau/credential-revocation/v1\n"


def statement_bytes(statement: CredentialStatement) -> bytes:
    """What an endorser signs: the whole statement, sorted-key JSON behind a prefix."""
    return _STATEMENT_PREFIX + msgspec.json.encode(statement, order="sorted")


def statement_sha256(statement: CredentialStatement) -> str:
    return hashlib.sha256(statement_bytes(statement)).hexdigest()


def credential_key(credential_id: bytes) -> str:
    """The credential's name in KV keys and subjects (ids are arbitrary bytes)."""
    return hashlib.sha256(credential_id).hexdigest()[:32]


def record_key(person: str, credential: str) -> str:
    return f"{person}.{credential}"


class Endorsement(msgspec.Struct, frozen=True, kw_only=True):
    endorser: Identity
    # Ed25519 by the endorser's vote key (policy file) over statement_bytes.
    signature: bytes
    at_ms: TimestampMs


class Revocation(msgspec.Struct, frozen=True, kw_only=True):
    by: Identity
    reason: Annotated[str, msgspec.Meta(max_length=200)] = ""
    at_ms: TimestampMs
    # Ed25519 by ``by``'s vote key over revocation_bytes.
    signature: bytes = b""


class CredentialRecord(Message, tag="credential_record", frozen=True, kw_only=True):
    """One credential in the ``lantau_credentials`` bucket; changed only by CAS."""

    statement: CredentialStatement
    statement_sha256: Sha256Hex
    endorsements: list[Endorsement] = []
    # Written by policy after its own check; readers recount the endorsements.
    status: CredentialStatus = "proposed"
    revocation: Revocation | None = None


class CredentialProposal(Message, tag="credential_proposal", frozen=True, kw_only=True):
    """A new credential, waiting for its quorum (sent by the console after it verified
    the WebAuthn registration)."""

    proposal_id: RequestId
    statement: CredentialStatement


class TotpEnrolment(Message, tag="totp_enrolment", frozen=True, kw_only=True):
    """An approver asks for a TOTP authenticator: policy draws the secret from its token,
        keeps it only sealed, and sends it back once, in a sealed box (X25519, libsodium)
        to ``reply_key``, which the asking command made for this request and then forgets
    (``TotpDelivery``)."""

    proposal_id: RequestId
    person: Identity
    label: Annotated[str, msgspec.Meta(max_length=64)] = ""
    reply_key: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    created_at_ms: TimestampMs
    # Ed25519 by the person's vote key over the request (signature left empty).
    signature: bytes = b""


class CredentialEndorsement(Message, tag="credential_endorsement", frozen=True, kw_only=True):
    person: Identity
    credential: CredentialKey
    statement_sha256: Sha256Hex
    endorser: Identity
    signature: bytes
    created_at_ms: TimestampMs


class CredentialRevocation(Message, tag="credential_revocation", frozen=True, kw_only=True):
    person: Identity
    credential: CredentialKey
    revocation: Revocation


class SecondFactorCheck(Message, tag="second_factor_check", frozen=True, kw_only=True):
    """A ceremony asks policy whether ``person`` gave a good TOTP code just now (policy
    holds the sealed secrets). The answer is a CredentialOutcome whose proposal_id is the
    check_id; both are on the record with the ceremony they are for (``purpose``). The
    code is spent by the check (a step is never accepted twice)."""

    check_id: RequestId
    person: Identity
    purpose: Annotated[str, msgspec.Meta(max_length=200)]
    totp_code: Annotated[str, msgspec.Meta(pattern=whole("[0-9]{6,8}"))]
    created_at_ms: TimestampMs


CredentialRequest = (
    CredentialProposal
    | TotpEnrolment
    | CredentialEndorsement
    | CredentialRevocation
    | SecondFactorCheck
)


def revocation_bytes(person: str, credential: str, revocation: Revocation) -> bytes:
    """What a revoker signs: the credential named, who revokes, why and when."""
    body = msgspec.structs.replace(revocation, signature=b"")
    return (
        _REVOCATION_PREFIX
        + f"{person}.{credential}\n".encode()
        + msgspec.json.encode(body, order="sorted")
    )


_TOTP_PREFIX = b"lantau/totp-enrolment/v1\n"


def totp_request_bytes(request: TotpEnrolment) -> bytes:
    return _TOTP_PREFIX + msgspec.json.encode(
        msgspec.structs.replace(request, signature=b""), order="sorted"
    )


class CredentialOutcome(Message, tag="credential_outcome", frozen=True, kw_only=True):
    """What became of a credential request: accepted (and the credential's state) or
    refused, and why. The audit trail records every one."""

    person: str
    credential: str = ""
    action: str
    by: str = ""
    accepted: bool
    code: str = ""
    message: str
    endorsements: int = 0
    quorum: int = 0
    status: str = ""
    proposal_id: str = ""
    at_ms: TimestampMs


class TotpDelivery(Message, tag="totp_delivery", frozen=True, kw_only=True):
    """A new TOTP secret, once, to the command that asked: a libsodium sealed box to its
    one-time reply key, on core NATS only (``lantau.reply.totp.<person>``: no stream keeps
    it). The only lasting copy is the one sealed under policy's token key."""

    person: str
    credential: str
    proposal_id: str
    boxed_secret: bytes
