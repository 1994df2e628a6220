"""What the console shows a person and the votes it builds: pure functions over held
requests (no I/O, time passed in)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from libs.approvals_view import Review
from proto import codec
from proto.approvals import ApprovalVote, PendingApproval, Vote, approvers
from proto.common import TX_KINDS
from proto.errors import ErrorCode, LantauError
from proto.requests import SignRequest
from proto.subjects import request_key


@dataclass(frozen=True)
class CastView:
    approver: str
    vote: str
    at: str


@dataclass(frozen=True)
class HeldView:
    """One held request as an approver reads it."""

    requester: str
    request_id: str
    key_id: str
    kind: str
    blind: bool
    rule: str
    policy_version: str
    group: str
    quorum: int
    eligible: tuple[str, ...]
    lines: tuple[str, ...]
    view_sha256: str
    payload_sha256: str
    # What disagrees between policy's record and this console's own decoding ("": none).
    problem: str
    votes: tuple[CastView, ...]
    approvals: int
    status: str
    seconds_left: int
    declared: str

    @property
    def headline(self) -> str:
        """The line a list shows: what moves (the first "send" line), else the first."""
        sends = [line for line in self.lines if line.lstrip().startswith("send ")]
        return (sends or list(self.lines) or [self.kind])[0]

    @property
    def path(self) -> str:
        return f"/requests/{self.requester}/{self.request_id}"

    @property
    def time_left(self) -> str:
        if self.status != "pending":
            return self.status
        if self.seconds_left <= 0:
            return "the approval window has closed"
        minutes, seconds = divmod(self.seconds_left, 60)
        return f"{minutes} min {seconds:02d} s left" if minutes else f"{seconds} s left"

    def voted(self, person: str) -> str:
        return next((v.vote for v in self.votes if v.approver == person), "")


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def held_view(p: PendingApproval, seen: Review, now_ms: int) -> HeldView:
    try:
        request: object = codec.REQUEST.decode(p.request)
    except LantauError:
        request = None
    kind = request.payload_kind if isinstance(request, SignRequest) else "?"
    declared = ""
    if isinstance(request, SignRequest) and request.transfer is not None:
        t = request.transfer
        declared = f"{t.amount} {t.asset} to {t.destination}"
    return HeldView(
        requester=p.requester,
        request_id=p.request_id,
        key_id=p.key_id,
        kind=kind,
        blind=kind not in TX_KINDS,
        rule=p.rule,
        policy_version=p.policy_version,
        group=p.group,
        quorum=p.quorum,
        eligible=tuple(p.eligible),
        lines=tuple(seen.view),
        view_sha256=seen.view_sha256,
        payload_sha256=p.payload_sha256,
        problem=seen.problem,
        votes=tuple(CastView(v.approver, v.vote, _clock(v.at_ms)) for v in p.votes),
        approvals=len(approvers(p.votes)),
        status=p.status,
        seconds_left=max(0, (p.expires_at_ms - now_ms) // 1000),
        declared=declared,
    )


def in_scope(p: PendingApproval, person: str, scopes: Mapping[str, Sequence[str]]) -> bool:
    """Need-to-know: a person sees a held request only when their group approves it (the
    rule's group lists them, and their groups approve for its requester)."""
    return person in p.eligible and p.requester in scopes.get(person, ())


def visible(
    held: Sequence[PendingApproval], person: str, scopes: Mapping[str, Sequence[str]]
) -> list[PendingApproval]:
    return [p for p in held if in_scope(p, person, scopes)]


def find(
    held: Sequence[PendingApproval], requester: str, request_id: str
) -> PendingApproval | None:
    wanted = request_key(requester, request_id)
    return next((p for p in held if request_key(p.requester, p.request_id) == wanted), None)


def out_of_scope(p: PendingApproval | None, requester: str, request_id: str) -> str:
    """Why a person may not see or vote on this request, in words."""
    if p is None:
        return f"no request {requester}/{request_id} is waiting for approval"
    return (
        f"you are not an approver of request {requester}/{request_id}: "
        f"it needs group {p.group!r}, and your groups do not approve it"
    )


def unsigned_vote(
    p: PendingApproval, person: str, vote: Vote, seen: Review, now_ms: int, ttl_ms: int
) -> ApprovalVote:
    """The vote whose digest the security key will sign: it names the request, the
    payload hash and the digest of the view this console decoded and showed."""
    if vote == "approve" and seen.problem:
        raise LantauError(
            ErrorCode.APPROVAL_MISMATCH, f"not approving: {seen.problem}: do not approve"
        )
    return ApprovalVote(
        vote_id=uuid.uuid4().hex,
        requester=p.requester,
        request_id=p.request_id,
        approver=person,
        vote=vote,
        payload_sha256=p.payload_sha256,
        view_sha256=seen.view_sha256,
        created_at_ms=now_ms,
        expires_at_ms=now_ms + ttl_ms,
    )
