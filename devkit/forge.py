"""Evidence made to order, for tests and attack drills: signed requests, policy
authorizations, approval votes and orders from keys the caller holds. Nothing here
is used by the platform; an attacker would need the keys it is given."""

from __future__ import annotations

import uuid
from typing import TypeVar

import msgspec
import nacl.signing

from libs import chains
from libs.clock import now_ms
from libs.evidence import bytes_to_sign
from proto import codec
from proto.approvals import ApprovalVote
from proto.approvals import signing_bytes as vote_bytes
from proto.authorization import (
    CreateKeyAuthorization,
    SignAuthorization,
    digest_of,
    signing_bytes,
)
from proto.common import TX_KINDS
from proto.orders import Decision, SignOrder
from proto.requests import CreateKeyRequest, SignRequest, request_hash
from proto.requests import signing_bytes as request_bytes

S = TypeVar("S", SignAuthorization, CreateKeyAuthorization)


def signed_request(
    key: nacl.signing.SigningKey,
    requester: str,
    key_id: str,
    payload: bytes,
    *,
    kind: str = "digest",
    request_id: str | None = None,
    ttl_ms: int = 120_000,
    chain: str | None = None,
) -> SignRequest:
    now = now_ms()
    unsigned = SignRequest(
        request_id=request_id or uuid.uuid4().hex,
        requester=requester,
        key_id=key_id,
        payload=payload,
        payload_kind=kind,  # type: ignore[arg-type]
        chain=chain,
        created_at_ms=now,
        expires_at_ms=now + ttl_ms,
    )
    return msgspec.structs.replace(unsigned, signature=key.sign(request_bytes(unsigned)).signature)


def authorization(
    policy: nacl.signing.SigningKey,
    request: SignRequest,
    public_key: bytes,
    *,
    curve: str = "secp256k1",
    digests: list[str] | None = None,
    not_after_ms: int | None = None,
    group: str = "",
    quorum: int = 0,
    votes: list[ApprovalVote] | None = None,
    view_sha256: str | None = None,
    **changes: object,
) -> SignAuthorization:
    """Policy's statement over ``request``, correct unless told otherwise."""
    now = now_ms()
    if view_sha256 is None:
        view_sha256 = (
            chains.view_digest(
                chains.parse(
                    request.payload_kind, request.payload, public_key, chain_hint=request.chain
                )
            )
            if request.payload_kind in TX_KINDS
            else ""
        )
    unsigned = SignAuthorization(
        requester=request.requester,
        request_id=request.request_id,
        request_hash=request_hash(request),
        key_id=request.key_id,
        curve=curve,  # type: ignore[arg-type]
        payload_kind=request.payload_kind,
        blind=request.payload_kind not in TX_KINDS,
        digests=digests
        if digests is not None
        else [digest_of(d) for d in bytes_to_sign(request, public_key)],
        view_sha256=view_sha256,
        rule="test",
        policy_version="test",
        group=group,
        quorum=quorum,
        approvals=[digest_of(vote_bytes(v)) for v in votes or []],
        issued_at_ms=now,
        not_after_ms=not_after_ms if not_after_ms is not None else now + 60_000,
        signed_by=policy.verify_key.encode().hex(),
    )
    unsigned = msgspec.structs.replace(unsigned, **changes)
    return _signed_by(policy, unsigned)


def create_authorization(
    policy: nacl.signing.SigningKey, request: CreateKeyRequest, **changes: object
) -> CreateKeyAuthorization:
    now = now_ms()
    unsigned = CreateKeyAuthorization(
        requester=request.requester,
        request_id=request.request_id,
        request_hash=request_hash(request),
        key_id=request.key_id,
        curve=request.curve,
        region=request.region,
        rule="test",
        policy_version="test",
        issued_at_ms=now,
        not_after_ms=now + 60_000,
        signed_by=policy.verify_key.encode().hex(),
    )
    unsigned = msgspec.structs.replace(unsigned, **changes)
    return _signed_by(policy, unsigned)


def vote(
    approver_key: nacl.signing.SigningKey, approver: str, request: SignRequest, **changes: object
) -> ApprovalVote:
    now = now_ms()
    unsigned = ApprovalVote(
        vote_id=uuid.uuid4().hex,
        requester=request.requester,
        request_id=request.request_id,
        approver=approver,
        vote="approve",
        payload_sha256=digest_of(request.payload),
        created_at_ms=now,
        expires_at_ms=now + 60_000,
    )
    unsigned = msgspec.structs.replace(unsigned, **changes)
    signature = approver_key.sign(vote_bytes(unsigned)).signature
    return msgspec.structs.replace(unsigned, signature=signature)


def order(
    request: SignRequest, auth: SignAuthorization, votes: list[ApprovalVote] | None = None
) -> SignOrder:
    return SignOrder(
        request_id=request.request_id,
        request_hash=request_hash(request),
        requester=request.requester,
        key_id=request.key_id,
        decision=Decision(policy_version=auth.policy_version, rule=auth.rule, explanation="forged"),
        requested_at_ms=request.created_at_ms,
        deadline_ms=auth.not_after_ms,
        request=codec.encode(request),
        authorization=auth,
        approvals=votes or [],
    )


def _signed_by(key: nacl.signing.SigningKey, statement: S) -> S:
    return msgspec.structs.replace(
        statement, signature=key.sign(signing_bytes(statement)).signature
    )
