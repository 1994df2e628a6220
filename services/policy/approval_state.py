"""Requests held for M-of-N approval, and the votes on them, in JetStream KV; changed
only by compare-and-set so replicas and redeliveries never count a vote twice."""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.js.kv import KeyValue

from libs import metrics
from libs.bus import kv
from libs.bus.publish import publish
from libs.clock import now_ms, wait_or_stop
from libs.policy_file import Policy
from libs.service import Runtime
from proto import codec
from proto.approvals import (
    ApprovalOutcome,
    ApprovalVote,
    ChargeRef,
    PendingApproval,
    payload_sha256,
)
from proto.errors import ErrorCode, LantauError, TransientError
from proto.orders import Decision
from proto.requests import SignRequest
from proto.subjects import approval_event_subject, request_key
from services.policy import approvals, rules
from services.policy.authorize import Authorizer
from services.policy.facts import Judged
from services.policy.outcomes import publish_order, publish_refusal
from services.policy.second_factors import SecondFactors
from services.policy.velocity_state import VelocityBook

log = logging.getLogger("lantau.policy")

_CAS_ATTEMPTS = 20
SWEEP_INTERVAL_S = 1.0


class Approvals:
    def __init__(self, rt: Runtime, bucket: KeyValue, authorizer: Authorizer) -> None:
        self.rt = rt
        self.kv = bucket
        self.authorizer = authorizer
        self.velocity: VelocityBook | None = None
        # Checks a vote's signer (security key, or key file with TOTP); set by serve().
        self.second_factors: SecondFactors | None = None

    async def hold(
        self, request: SignRequest, decision: rules.Verdict, now: int, judged: Judged
    ) -> None:
        assert decision.group is not None
        pending = PendingApproval(
            request_id=request.request_id,
            requester=request.requester,
            key_id=request.key_id,
            payload_sha256=payload_sha256(request.payload),
            view=list(judged.facts.summary),
            view_sha256=judged.facts.view_sha256,
            curve=judged.curve,
            public_key=judged.public_key,
            blind=judged.facts.blind,
            digests=judged.digests,
            rule=decision.rule,
            group=decision.group,
            quorum=decision.quorum,
            eligible=list(decision.eligible),
            policy_version=decision.policy_version,
            created_at_ms=now,
            expires_at_ms=now + decision.approval_window_s * 1000,
            request=codec.encode(request),
            charges=[
                ChargeRef(counter=c.counter, window_s=c.velocity.window_s, amount=str(c.amount))
                for c in decision.charges
            ],
        )
        # create() fails on a redelivery: the request is already held, nothing to add.
        key = request_key(request.requester, request.request_id)
        if await kv.write(self.kv, key, codec.encode(pending), 0) is not None:
            log.info("request held for approval: %s", decision.explanation)
            await self._announce(pending, "", "", decision.explanation)

    async def vote(self, vote: ApprovalVote, policy: Policy) -> None:
        if self.second_factors is not None:
            await self.second_factors.check_vote(vote, policy)
        else:
            approvals.check_signature(vote, policy)
        key = request_key(vote.requester, vote.request_id)
        for _ in range(_CAS_ATTEMPTS):
            data, revision = await kv.read(self.kv, key)
            if data is None:
                raise LantauError(
                    ErrorCode.NOT_PENDING,
                    f"no request {vote.requester}/{vote.request_id} is waiting for approval",
                )
            pending = codec.PENDING_APPROVAL.decode(data)
            updated = approvals.apply(pending, vote, now_ms())
            if updated is pending:
                break  # this vote was counted before (a redelivery)
            written = await kv.write(self.kv, key, codec.encode(updated), revision)
            if written is not None:
                revision = written
                break
        else:
            raise TransientError(ErrorCode.INTERNAL, "approval state kept changing; retrying")
        await self._settle(updated, revision)
        yes = len(approvals.approvers(updated.votes))
        text = {
            "pending": f"approval recorded: {yes} of {updated.quorum}",
            "approved": f"quorum met ({yes} of {updated.quorum}): the request goes to signing",
            "rejected": f"rejected by {vote.approver}",
        }.get(updated.status, updated.status)
        await self._announce(updated, vote.vote_id, vote.approver, text)

    async def refused(self, vote: ApprovalVote, error: LantauError) -> None:
        data, _ = await kv.read(self.kv, request_key(vote.requester, vote.request_id))
        pending = codec.PENDING_APPROVAL.decode(data) if data else None
        log.warning("vote %s by %s refused: %s", vote.vote_id, vote.approver, error.message)
        await self._announce(
            pending,
            vote.vote_id,
            vote.approver,
            error.message,
            request=(vote.requester, vote.request_id),
            code=str(error.code),
        )

    async def _settle(self, pending: PendingApproval, revision: int) -> None:
        """Act on a terminal state, then mark it settled. Safe to repeat after a crash:
        one order id and one result per request."""
        if pending.status == "pending" or pending.settled:
            return
        await self._act(pending)
        done = msgspec.structs.replace(pending, settled=True)
        key = request_key(pending.requester, pending.request_id)
        await kv.write(self.kv, key, codec.encode(done), revision)

    async def _act(self, pending: PendingApproval) -> None:
        request = codec.REQUEST.decode(pending.request)
        assert isinstance(request, SignRequest)
        if pending.status == "approved":
            if self.velocity is not None and pending.charges:
                rkey = request_key(pending.requester, pending.request_id)
                await self.velocity.record_approved(pending.charges, rkey, now_ms())
            names = approvals.approvers(pending.votes)
            now = now_ms()
            order = await self.authorizer.sign_order(
                request,
                curve=pending.curve,
                digests=pending.digests,
                blind=pending.blind,
                view_sha256=pending.view_sha256,
                decision=Decision(
                    policy_version=pending.policy_version,
                    rule=pending.rule,
                    explanation=f"approved by {', '.join(names)} ({len(names)} of quorum "
                    f"{pending.quorum}, group {pending.group!r})",
                    approvers=names,
                ),
                issued_at_ms=now,
                deadline_ms=now + self.rt.config.policy.order_deadline_ms,
                group=pending.group,
                quorum=pending.quorum,
                votes=[
                    v.signed for v in pending.votes if v.vote == "approve" and v.signed is not None
                ],
            )
            await publish_order(self.rt.js, order)
            return
        if pending.status in ("rejected", "expired"):
            code = (
                ErrorCode.APPROVAL_REJECTED
                if pending.status == "rejected"
                else ErrorCode.APPROVAL_EXPIRED
            )
            who = [v.approver for v in pending.votes if v.vote == "reject"]
            text = (
                f"rejected by approver {who[0]} (rule {pending.rule!r})"
                if who
                else f"no quorum of {pending.quorum} from group {pending.group!r} "
                f"before the approval window closed (rule {pending.rule!r})"
            )
            await publish_refusal(self.rt.js, request, str(code), text, pending.status)

    async def _announce(
        self,
        pending: PendingApproval | None,
        vote_id: str,
        approver: str,
        message: str,
        *,
        request: tuple[str, str] = ("", ""),
        code: str = "",
    ) -> None:
        """What became of a vote (refused when ``code`` is set) and of its request."""
        requester, request_id = (
            (pending.requester, pending.request_id) if pending is not None else request
        )
        outcome = ApprovalOutcome(
            requester=requester,
            request_id=request_id,
            vote_id=vote_id,
            approver=approver,
            accepted=not code,
            code=code,
            message=message,
            approvals=len(approvals.approvers(pending.votes)) if pending else 0,
            quorum=pending.quorum if pending else 0,
            status=pending.status if pending else "",
            at_ms=now_ms(),
        )
        # An accepted outcome is announced once per state, whichever replica gets there.
        msg_id = None
        if not code and pending is not None:
            key = request_key(requester, request_id)
            msg_id = f"approval:{key}:{vote_id or 'held'}:{pending.status}"
        subject = approval_event_subject(requester, request_id)
        await publish(self.rt.js, subject, outcome, msg_id=msg_id)

    async def pending(self) -> list[tuple[PendingApproval, int]]:
        return [
            (codec.PENDING_APPROVAL.decode(value), revision)
            for _, value, revision in await kv.values(self.kv)
        ]

    async def sweep(self, stopping: asyncio.Event) -> None:
        """Expire held requests whose window closed, and keep the gauges true."""
        while not await wait_or_stop(stopping, SWEEP_INTERVAL_S):
            try:
                await self._sweep_once()
            except Exception as e:  # the bus is away: try again next tick
                log.warning("approval sweep failed: %s", type(e).__name__)

    async def _sweep_once(self) -> None:
        now = now_ms()
        waiting = []
        for pending, revision in await self.pending():
            if pending.status != "pending":
                # Decided but not acted on (a replica died in between): finish it.
                await self._settle(pending, revision)
                continue
            if now < pending.expires_at_ms:
                waiting.append(pending)
                continue
            expired = msgspec.structs.replace(pending, status="expired")
            key = request_key(pending.requester, pending.request_id)
            written = await kv.write(self.kv, key, codec.encode(expired), revision)
            if written is not None:
                await self._settle(expired, written)
                await self._announce(expired, "", "", "approval window closed")
        metrics.APPROVALS_PENDING.set(len(waiting))
        oldest = min((p.created_at_ms for p in waiting), default=now)
        metrics.APPROVALS_OLDEST_AGE.set((now - oldest) / 1000)
