"""The console's I/O on the bus: held requests and enrolled credentials (read by direct
get, no consumer), votes and credential proposals sent to policy with its answer awaited,
and what the console refused itself, recorded on ``lantau.event.console``."""

from __future__ import annotations

import logging

from nats.js.kv import KeyValue

from libs.approvals_view import send_vote
from libs.bus import kv
from libs.bus.ask import publish_and_wait
from libs.bus.publish import publish
from libs.clock import now_ms
from libs.credentials import records_from
from libs.service import Runtime
from proto import codec
from proto.approvals import ApprovalOutcome, ApprovalVote, PendingApproval
from proto.credentials import CredentialOutcome, CredentialProposal, CredentialRecord
from proto.events import ConsoleEvent
from proto.subjects import (
    APPROVALS_BUCKET,
    CREDENTIALS_BUCKET,
    EVENT_CONSOLE,
    credential_event_subject,
    credential_request_subject,
)

log = logging.getLogger("lantau.console")

OUTCOME_WAIT_S = 15.0
CONSOLE_SENDER = "console"


class ConsoleBus:
    def __init__(self, rt: Runtime, approvals: KeyValue, credentials: KeyValue) -> None:
        self.rt = rt
        self.approvals = approvals
        self.credentials = credentials

    @classmethod
    async def open(cls, rt: Runtime) -> ConsoleBus:
        return cls(
            rt,
            await rt.js.key_value(APPROVALS_BUCKET),
            await rt.js.key_value(CREDENTIALS_BUCKET),
        )

    async def held(self) -> list[PendingApproval]:
        found = [codec.PENDING_APPROVAL.decode(v) for _, v, _ in await kv.values(self.approvals)]
        return sorted(found, key=lambda p: p.created_at_ms)

    async def records(self) -> list[CredentialRecord]:
        return records_from(await kv.values(self.credentials))

    async def vote(self, vote: ApprovalVote) -> ApprovalOutcome | None:
        return await send_vote(self.rt.nc, vote)

    async def propose(self, proposal: CredentialProposal) -> CredentialOutcome | None:
        """Send a credential to policy, and wait for its word on it."""
        person = proposal.statement.person

        def verdict(event: object) -> CredentialOutcome | None:

            if isinstance(event, CredentialOutcome) and event.proposal_id == proposal.proposal_id:
                return event

            return None

        return await publish_and_wait(
            self.rt.nc,
            credential_request_subject(CONSOLE_SENDER),
            proposal,
            listen=credential_event_subject(person),
            answer=verdict,
            timeout_s=OUTCOME_WAIT_S,
            msg_id=f"credential:{proposal.proposal_id}",
        )

    async def record(
        self,
        person: str,
        action: str,
        *,
        accepted: bool,
        message: str,
        code: str = "",
        request: str = "",
        remote: str = "",
    ) -> bool:
        """What the console did or refused itself, into the audit trail; False when it
        could not be recorded (a sign-in then fails closed)."""
        event = ConsoleEvent(
            person=person,
            action=action,
            accepted=accepted,
            code=code,
            message=message,
            request=request,
            remote=remote,
            at_ms=now_ms(),
        )
        if accepted:
            log.info("%s: %s (%s)", action, message, person)
        else:
            log.warning("%s refused: %s (%s)", action, message, person)
        try:
            await publish(self.rt.js, EVENT_CONSOLE, event)
        except Exception as e:  # the bus is away: the caller decides (fail closed)
            log.error("could not record console event %s: %s", action, type(e).__name__)
            return False
        return True
