"""Policy state in JetStream KV, changed only by compare-and-set so that several policy
replicas and redelivered messages never count a request twice or exceed a limit:

- ``VelocityBook``: the rolling windows of the velocity rules;
- ``Approvals``: requests held for M-of-N approval, and the votes on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from libs import bus, metrics
from libs.bus import now_ms
from libs.service import Runtime
from proto import codec
from proto.approvals import ApprovalOutcome, ApprovalVote, PendingApproval, payload_sha256
from proto.errors import ErrorCode, LantauError, TransientError
from proto.requests import SignRequest
from proto.subjects import approval_event_subject
from services.policy import approvals, rules
from services.policy import velocity as vel
from services.policy.outcomes import publish_order, publish_refusal, sign_order

log = logging.getLogger("lantau.policy")

_CAS_ATTEMPTS = 20
_decision_encoder = msgspec.msgpack.Encoder()
_decision_decoder = msgspec.msgpack.Decoder(rules.Decision)
SWEEP_INTERVAL_S = 1.0


async def _read(kv: KeyValue, key: str) -> tuple[bytes | None, int]:
    """Value and revision; revision 0 when the key does not exist (or was deleted)."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None, 0
    return entry.value, entry.revision or 0


async def _write(kv: KeyValue, key: str, value: bytes, revision: int) -> int | None:
    """Compare-and-set: the new revision, or None if someone else changed the key
    since ``revision`` (0: if it exists at all)."""
    try:
        if revision == 0:
            return await kv.create(key, value)
        return await kv.update(key, value, last=revision)
    except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
        return None


class VelocityBook:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        # Requests of one replica touching the same windows take turns: compare-and-set
        # then only conflicts across replicas, instead of every concurrent request
        # re-evaluating against every other.
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}

    async def decide(
        self, policy: rules.Policy, request: SignRequest, now: int, *, seen_before: bool = True
    ) -> rules.Decision:
        """Decide once per request, whatever the redeliveries and replicas.

        A decision that counted towards velocity windows (or holds the request for
        approval) is kept (KV create); a later delivery returns it. Before it
        is kept, every window is charged at the revision evaluated: a window that moved
        in between (another replica charged it) means evaluating again on fresh state,
        so a limit is never exceeded.
        """
        memo_key = f"decision.{request.request_id}"
        if seen_before:  # a request id seen for the first time has no decision yet
            data, _ = await _read(self.kv, memo_key)
            if data is not None:
                return _decision_decoder.decode(data)
        counters = tuple(sorted(c.counter for c in rules.charges_for(policy, request)))
        if counters:
            lock = self._locks.setdefault(counters, asyncio.Lock())
            async with lock:
                decision = await self._evaluate_and_charge(policy, request, now)
            if not lock.locked() and len(self._locks) > 10_000:
                self._locks.pop(counters, None)
        else:
            decision = await self._evaluate_and_charge(policy, request, now)
        if not decision.charges and decision.action != "approve":
            # Nothing counted: evaluating again gives the same answer under the same
            # policy, so no stored decision (and no disk write) is needed.
            return decision
        if await _write(self.kv, memo_key, _decision_encoder.encode(decision), 0) is None:
            data, _ = await _read(self.kv, memo_key)  # another replica decided first
            if data is not None:
                return _decision_decoder.decode(data)
        return decision

    async def _evaluate_and_charge(
        self, policy: rules.Policy, request: SignRequest, now: int
    ) -> rules.Decision:
        amount = request.transfer.amount if request.transfer else 0
        for _ in range(_CAS_ATTEMPTS):
            read = {}
            for charge in rules.charges_for(policy, request):
                data, revision = await _read(self.kv, charge.counter)
                read[charge.counter] = (vel.decode(data), revision)
            # A request charged by a replica that died before deciding is judged afresh.
            windows = {k: w.released(request.request_id) for k, (w, _) in read.items()}
            decision = rules.evaluate(policy, request, now, windows)
            if decision.action == "deny":
                await self.release(list(read), request.request_id)
                return decision
            applied: list[str] = []
            for charge in decision.charges:
                window, revision = read[charge.counter]
                if window.holds(request.request_id):
                    continue
                new = window.charged(request.request_id, now, amount, charge.velocity.window_s)
                if await _write(self.kv, charge.counter, vel.encode(new), revision) is None:
                    break
                applied.append(charge.counter)
            else:
                return decision
            await self.release(applied, request.request_id)
        raise TransientError(ErrorCode.INTERNAL, "velocity windows kept changing; retrying")

    async def release(self, counters: list[str], request_id: str) -> None:
        """Take a request that will not be signed out of its windows."""
        for counter in counters:
            for _ in range(_CAS_ATTEMPTS):
                data, revision = await _read(self.kv, counter)
                window = vel.decode(data)
                if not window.holds(request_id):
                    break
                released = vel.encode(window.released(request_id))
                if await _write(self.kv, counter, released, revision) is not None:
                    break


class Approvals:
    def __init__(self, rt: Runtime, kv: KeyValue) -> None:
        self.rt = rt
        self.kv = kv
        self.velocity: VelocityBook | None = None

    async def hold(self, request: SignRequest, decision: rules.Decision, now: int) -> None:
        assert decision.group is not None
        pending = PendingApproval(
            request_id=request.request_id,
            requester=request.requester,
            key_id=request.key_id,
            payload_sha256=payload_sha256(request.payload),
            rule=decision.rule,
            group=decision.group,
            quorum=decision.quorum,
            eligible=list(decision.eligible),
            policy_version=decision.policy_version,
            created_at_ms=now,
            expires_at_ms=now + decision.approval_window_s * 1000,
            request=codec.encode(request),
            charges=[c.counter for c in decision.charges],
        )
        # create() fails on a redelivery: the request is already held, nothing to add.
        if await _write(self.kv, request.request_id, codec.encode(pending), 0) is not None:
            log.info("request held for approval: %s", decision.explanation)
            await self._announce(pending, "", "", decision.explanation)

    async def vote(self, vote: ApprovalVote, policy: rules.Policy) -> None:
        approvals.check_signature(vote, policy)
        for _ in range(_CAS_ATTEMPTS):
            data, revision = await _read(self.kv, vote.request_id)
            if data is None:
                raise LantauError(
                    ErrorCode.NOT_PENDING, f"no request {vote.request_id} is waiting for approval"
                )
            pending = codec.PENDING_APPROVAL.decode(data)
            updated = approvals.apply(pending, vote, now_ms())
            if updated is pending:
                break  # this vote was counted before (a redelivery)
            written = await _write(self.kv, vote.request_id, codec.encode(updated), revision)
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
        data, _ = await _read(self.kv, vote.request_id)
        pending = codec.PENDING_APPROVAL.decode(data) if data else None
        log.warning("vote %s by %s refused: %s", vote.vote_id, vote.approver, error.message)
        await self._announce(
            pending,
            vote.vote_id,
            vote.approver,
            error.message,
            request_id=vote.request_id,
            code=str(error.code),
        )

    async def _settle(self, pending: PendingApproval, revision: int) -> None:
        """Act on a terminal state, then mark it settled. Safe to repeat after a crash:
        one order id and one result per request."""
        if pending.status == "pending" or pending.settled:
            return
        await self._act(pending)
        done = msgspec.structs.replace(pending, settled=True)
        await _write(self.kv, pending.request_id, codec.encode(done), revision)

    async def _act(self, pending: PendingApproval) -> None:
        request = codec.REQUEST.decode(pending.request)
        assert isinstance(request, SignRequest)
        if pending.status == "approved":
            names = approvals.approvers(pending.votes)
            order = sign_order(
                request,
                pending.rule,
                f"approved by {', '.join(names)} ({len(names)} of quorum {pending.quorum}, "
                f"group {pending.group!r})",
                pending.policy_version,
                names,
                now_ms() + self.rt.config.policy.order_deadline_ms,
            )
            await publish_order(self.rt.js, order)
            return
        if pending.status in ("rejected", "expired"):
            if self.velocity is not None:
                await self.velocity.release(pending.charges, pending.request_id)
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
            await publish_refusal(
                self.rt.js, request.request_id, request, str(code), text, pending.status
            )

    async def _announce(
        self,
        pending: PendingApproval | None,
        vote_id: str,
        approver: str,
        message: str,
        *,
        request_id: str = "",
        code: str = "",
    ) -> None:
        """What became of a vote (refused when ``code`` is set) and of its request."""
        request_id = pending.request_id if pending else request_id
        outcome = ApprovalOutcome(
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
            msg_id = f"approval:{request_id}:{vote_id or 'held'}:{pending.status}"
        await bus.publish(self.rt.js, approval_event_subject(request_id), outcome, msg_id=msg_id)

    async def pending(self) -> list[tuple[PendingApproval, int]]:
        try:
            keys = await self.kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        held = []
        for key in keys:
            data, revision = await _read(self.kv, key)
            if data:
                held.append((codec.PENDING_APPROVAL.decode(data), revision))
        return held

    async def sweep(self, stopping: asyncio.Event) -> None:
        """Expire held requests whose window closed, and keep the gauges true."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=SWEEP_INTERVAL_S)
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
            written = await _write(self.kv, pending.request_id, codec.encode(expired), revision)
            if written is not None:
                await self._settle(expired, written)
                await self._announce(expired, "", "", "approval window closed")
        metrics.APPROVALS_PENDING.set(len(waiting))
        oldest = min((p.created_at_ms for p in waiting), default=now)
        metrics.APPROVALS_OLDEST_AGE.set((now - oldest) / 1000)
