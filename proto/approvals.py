"""Human approvals: the signed vote an approver sends, the outcome policy announces,
and the state of a request held for approval (kept in the ``lantau_approvals`` bucket).

A vote is signed one of two ways, over the same bytes (``signing_bytes``: sorted-key JSON
of every field but the signatures, behind a domain prefix, like requests):

- the CLI (``lantau approve``): Ed25519 with the approver's key file, in ``signature``;
- the console: the approver's security key. Its WebAuthn assertion (``assertion``) signs
  a challenge that is ``vote_challenge(vote)``, the SHA-256 of those bytes, so one
  assertion binds the request, the payload hash, the decoded view's digest, the vote, the
  approver and the expiry. The console holds no approver key: the credential is the
  vote key, pinned by a quorum (proto/credentials.py).

The vote names what will be signed (``payload_sha256``), so an approval cannot be moved
to other content.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import msgspec

from proto.base import Message
from proto.common import Identity, KeyId, RequestId, TimestampMs, whole

Vote = Literal["approve", "reject"]


class WebAuthnAssertion(msgspec.Struct, frozen=True, kw_only=True):
    """What navigator.credentials.get() returned, as the authenticator made it: the
    signature is over ``authenticator_data || SHA-256(client_data_json)``, and the client
    data names the challenge (the vote's digest) and the origin."""

    credential_id: Annotated[bytes, msgspec.Meta(min_length=1, max_length=1023)]
    authenticator_data: Annotated[bytes, msgspec.Meta(min_length=37, max_length=4096)]
    client_data_json: Annotated[bytes, msgspec.Meta(max_length=4096)]
    signature: Annotated[bytes, msgspec.Meta(max_length=1024)]


class ApprovalVote(Message, tag="approval_vote", frozen=True, kw_only=True):
    vote_id: RequestId
    # The held request: ids are unique per requester, so a vote names both.
    requester: Identity
    request_id: RequestId
    approver: Identity
    vote: Vote
    payload_sha256: str
    # For a decoded transaction: the digest of the decoded view the approver was shown
    # (libs.chains.view_digest), so nobody can show one thing and have another signed.
    view_sha256: str = ""
    created_at_ms: TimestampMs
    expires_at_ms: TimestampMs
    # The CLI's second factor: a TOTP code (RFC 6238) from the approver's enrolled
    # authenticator app, inside the signed bytes; policy checks it. Empty otherwise.
    totp_code: Annotated[str, msgspec.Meta(pattern=whole("([0-9]{6,8})?"))] = ""
    # Ed25519 over signing_bytes (the CLI), or empty when ``assertion`` signs the vote.
    signature: bytes = b""
    # The console's vote: a security key's assertion over vote_challenge(vote).
    assertion: WebAuthnAssertion | None = None


_PREFIX = b"lantau/approval/v1\n"


def signing_bytes(vote: ApprovalVote) -> bytes:
    """What a vote's signature covers: every field but ``signature`` (left empty) and
    ``assertion``. ``totp_code`` is left out when empty, so votes signed before it
    existed still verify."""
    fields = msgspec.to_builtins(msgspec.structs.replace(vote, signature=b"", assertion=None))
    del fields["assertion"]
    if not vote.totp_code:
        del fields["totp_code"]
    return _PREFIX + msgspec.json.encode(fields, order="sorted")


def vote_challenge(vote: ApprovalVote) -> bytes:
    """The WebAuthn challenge that signs this vote: SHA-256 of its signing bytes."""
    return hashlib.sha256(signing_bytes(vote)).digest()


def payload_sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


PendingStatus = Literal["pending", "approved", "rejected", "expired"]


class ChargeRef(msgspec.Struct, frozen=True, kw_only=True):
    """A velocity window an approved request is counted in once the quorum is met."""

    counter: str
    window_s: int
    # Minor units, as a decimal string: they may not fit 64 bits.
    amount: str = "0"


class CastVote(msgspec.Struct, frozen=True, kw_only=True):
    approver: Identity
    vote: Vote
    vote_id: str
    at_ms: TimestampMs
    # The approver's signed vote: it travels with the order to the hsm-node.
    signed: ApprovalVote | None = None


class PendingApproval(Message, tag="pending_approval", frozen=True, kw_only=True):
    """A sign request held until M approvers of a group agree; changed only by CAS."""

    request_id: RequestId
    requester: Identity
    key_id: KeyId
    payload_sha256: str
    # What the approvers read and sign: the decoded transaction (its lines and digest);
    # for a blind request only what it declared.
    view: list[str] = []
    view_sha256: str = ""
    # What the authorization will say once approved: the key's curve and public key (so
    # an approver's own tools can decode the transaction again), the bytes to sign.
    curve: str = ""
    public_key: bytes = b""
    blind: bool = True
    digests: list[str] = []
    rule: str
    group: str
    quorum: int
    eligible: list[str]
    policy_version: str
    created_at_ms: TimestampMs
    expires_at_ms: TimestampMs
    # The authenticated request, kept to issue the order once the quorum is met.
    request: bytes
    votes: list[CastVote] = []
    status: PendingStatus = "pending"
    # True once the order or the refusal for a decided request is published.
    settled: bool = False
    # Velocity windows this request counts towards once approved (nothing before).
    charges: list[ChargeRef] = []


def approvers(votes: list[CastVote]) -> list[str]:
    """Distinct approvers who said yes, in the order they did."""
    seen: list[str] = []
    for v in votes:
        if v.vote == "approve" and v.approver not in seen:
            seen.append(v.approver)
    return seen


class ApprovalOutcome(Message, tag="approval_outcome", frozen=True, kw_only=True):
    """What became of one vote (accepted or refused, and why) and of the request."""

    requester: str
    request_id: str
    vote_id: str
    approver: str
    accepted: bool
    code: str = ""
    message: str
    approvals: int = 0
    quorum: int = 0
    status: str = ""
    at_ms: TimestampMs
