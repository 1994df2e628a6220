"""What an approver reads and sends, shared by ``lantau approvals`` and the approvers'
console: the held requests in their scope, each decoded again from its own bytes (not
only policy's word), and a vote sent with policy's answer awaited."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client

from libs.bus import kv
from libs.bus.ask import publish_and_wait
from libs.policy_file import PolicyFile
from proto import codec
from proto.approvals import ApprovalOutcome, ApprovalVote, PendingApproval, payload_sha256
from proto.common import TX_KINDS
from proto.errors import LantauError
from proto.requests import SignRequest
from proto.subjects import APPROVALS_BUCKET, approval_event_subject, approval_vote_subject

OUTCOME_WAIT_S = 15.0


def scopes(policy: PolicyFile) -> dict[str, list[str]]:
    """Each approver's readable requesters: the ``approves_for`` of every group that lists
    it (the bus allow-lists give approvers these and no more)."""
    found: dict[str, list[str]] = {}
    for group in policy.groups.values():
        for approver in group.approvers:
            found.setdefault(approver, [])
            found[approver] += [r for r in group.approves_for if r not in found[approver]]
    return found


async def held_requests(nc: Client, scope: list[str] | None = None) -> list[PendingApproval]:
    """Held requests, oldest first: all of them (operator), or those of the requesters in
    ``scope`` (an approver may read no others)."""
    bucket = await nc.jetstream().key_value(APPROVALS_BUCKET)
    found = []
    for under in [None] if scope is None else scope:
        found += await kv.values(bucket, under)
    held = [codec.PENDING_APPROVAL.decode(value) for _, value, _ in found]
    return sorted(held, key=lambda p: p.created_at_ms)


@dataclass(frozen=True)
class Review:
    """The held request as this command decodes it itself, and what disagrees with the
    record policy keeps ("" when nothing does)."""

    view: list[str]
    view_sha256: str
    problem: str = ""


def review(p: PendingApproval, public_key: bytes | None) -> Review:
    """Decode the held request again from its own bytes: the view an approver reads is
    then this command's, not only policy's word."""
    try:
        request = codec.REQUEST.decode(p.request)
    except LantauError as e:
        return Review(p.view, p.view_sha256, f"the held request does not decode ({e.code})")
    if not isinstance(request, SignRequest) or payload_sha256(request.payload) != p.payload_sha256:
        return Review(p.view, p.view_sha256, "the held request is not the payload it names")
    if request.payload_kind not in TX_KINDS:
        problem = "a blind request with a decoded view" if p.view_sha256 else ""
        return Review(p.view, p.view_sha256, problem)
    if public_key is None:
        return Review(p.view, p.view_sha256, f"key {p.key_id} is not in the key directory")
    # Imported here: the chains' libraries take most of a second to load, which every
    # other `lantau` command (and a vote on a blind request) would pay for nothing.
    from libs import chains

    try:
        parsed = chains.parse(
            request.payload_kind, request.payload, public_key, chain_hint=request.chain
        )
    except LantauError as e:
        return Review(p.view, p.view_sha256, f"the held transaction does not decode ({e.code})")
    mine = Review(parsed.summary, chains.view_digest(parsed))
    if (mine.view, mine.view_sha256) != (p.view, p.view_sha256):
        return Review(
            mine.view,
            mine.view_sha256,
            f"policy shows view {p.view_sha256[:16] or 'none'}..., the transaction decodes to "
            f"{mine.view_sha256[:16]}...",
        )
    return mine


async def send_vote(nc: Client, signed: ApprovalVote) -> ApprovalOutcome | None:
    """Publish a vote and wait for policy's word on it (None if none came in time)."""

    def outcome(event: object) -> ApprovalOutcome | None:

        if isinstance(event, ApprovalOutcome) and event.vote_id == signed.vote_id:
            return event

        return None

    return await publish_and_wait(
        nc,
        approval_vote_subject(signed.approver),
        signed,
        listen=approval_event_subject(signed.requester, signed.request_id),
        answer=outcome,
        timeout_s=OUTCOME_WAIT_S,
        msg_id=f"vote:{signed.vote_id}",
    )
