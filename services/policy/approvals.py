"""Approval votes against a held request: pure checks and quorum counting."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from libs.credentials import credential_for
from libs.policy_file import Policy
from libs.webauthn_check import verify_assertion
from proto.approvals import (
    ApprovalVote,
    CastVote,
    PendingApproval,
    PendingStatus,
    approvers,
    signing_bytes,
    vote_challenge,
)
from proto.credentials import CredentialRecord
from proto.errors import ErrorCode, LantauError
from services.policy.auth import signed_by


def check_signature(
    vote: ApprovalVote, policy: Policy, records: Iterable[CredentialRecord] = ()
) -> None:
    """The vote is signed by its approver: with a security key that counts now (an
    assertion over the vote's digest: the console), or with the approver's Ed25519 key
    (the CLI; its TOTP code is checked by services/policy/second_factors.py)."""
    approver = policy.file.approvers.get(vote.approver)
    if approver is None:
        raise LantauError(ErrorCode.UNKNOWN_APPROVER, f"{vote.approver!r} is not an approver")
    if vote.assertion is not None:
        credential = credential_for(
            records, vote.approver, vote.assertion.credential_id, policy.file
        )
        verify_assertion(vote.assertion, credential, vote_challenge(vote))
        return
    if not signed_by(approver.public_key, signing_bytes(vote), vote.signature):
        raise LantauError(
            ErrorCode.BAD_SIGNATURE,
            f"approval signature does not match approver {vote.approver}'s registered key",
        )


def apply(pending: PendingApproval, vote: ApprovalVote, now_ms: int) -> PendingApproval:
    """The held request after this (already authenticated) vote, or a typed refusal."""
    if any(v.vote_id == vote.vote_id for v in pending.votes):
        return pending  # the same vote delivered again: already counted
    if pending.status != "pending":
        raise LantauError(
            ErrorCode.NOT_PENDING, f"request {pending.request_id} is already {pending.status}"
        )
    if now_ms >= pending.expires_at_ms:
        raise LantauError(
            ErrorCode.APPROVAL_EXPIRED,
            f"the approval window of request {pending.request_id} has closed",
        )
    if now_ms >= vote.expires_at_ms or vote.expires_at_ms <= vote.created_at_ms:
        raise LantauError(ErrorCode.APPROVAL_EXPIRED, "this approval expired before it arrived")
    if vote.approver == pending.requester:
        raise LantauError(ErrorCode.SELF_APPROVAL, "a requester cannot approve its own request")
    if vote.approver not in pending.eligible:
        raise LantauError(
            ErrorCode.WRONG_GROUP,
            f"{vote.approver} is not in approver group {pending.group!r}",
        )
    if (
        vote.requester != pending.requester
        or vote.payload_sha256 != pending.payload_sha256
        or vote.view_sha256 != pending.view_sha256
    ):
        raise LantauError(
            ErrorCode.APPROVAL_MISMATCH,
            "the approval is for different content than the held request",
        )
    if any(v.approver == vote.approver for v in pending.votes):
        raise LantauError(
            ErrorCode.DUPLICATE_APPROVAL,
            f"{vote.approver} has already voted on request {pending.request_id}",
        )
    votes = [
        *pending.votes,
        CastVote(
            approver=vote.approver, vote=vote.vote, vote_id=vote.vote_id, at_ms=now_ms, signed=vote
        ),
    ]
    status: PendingStatus = pending.status
    if vote.vote == "reject":
        status = "rejected"
    elif len(approvers(votes)) >= pending.quorum:
        status = "approved"
    return msgspec.structs.replace(pending, votes=votes, status=status)
