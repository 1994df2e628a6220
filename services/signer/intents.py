"""The attempts of one request, as durable audit intents on the request's own subject.

Each attempt is published expecting the previous one as the subject's newest message,
so the intents of a request form one sequence that no two deliveries of its order (a
redelivery after a restart, a second signer replica) can both extend unseen. Finding
that someone else wrote first means an earlier attempt exists: its node is asked first,
and that node's replay record returns any signature it made instead of signing again.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from libs.bus.publish import publish_after
from proto import codec
from proto.audit import AuditIntent
from proto.errors import ErrorCode, LantauError
from proto.subjects import AUDIT, intent_subject


class EarlierAttempt(LantauError):
    """Another delivery of this order recorded an attempt this one had not seen."""

    def __init__(self, request_id: str) -> None:
        super().__init__(ErrorCode.INTERNAL, f"request {request_id} has an earlier attempt")


class IntentLog:
    def __init__(self, js: JetStreamContext, requester: str, request_id: str) -> None:
        self._js = js
        self.request_id = request_id
        self.subject = intent_subject(requester, request_id)
        self.last_seq = 0
        # Nodes with a durable intent for this request: asking them again is on the record.
        self.nodes: list[str] = []

    def covers(self, node: str) -> bool:
        return node in self.nodes

    async def load(self) -> None:
        """Catch up with attempts recorded by others (or by this process before a crash)."""
        try:
            raw = await self._js.get_last_msg(AUDIT.name, self.subject, direct=True)
        except NotFoundError:
            self.last_seq, self.nodes = 0, []
            return
        last = codec.AUDIT_INTENT.decode(raw.data or b"")
        self.last_seq = raw.seq or 0
        self.nodes = [*last.earlier_nodes, last.node]

    async def record(self, intent: AuditIntent) -> None:
        """Durably store the next attempt, or raise EarlierAttempt."""
        # Named stream: a try that timed out in a leader election is resolved by reading
        # the subject back (our own intent found there is ours, not an earlier attempt).
        seq = await publish_after(self._js, self.subject, intent, self.last_seq, stream=AUDIT.name)
        if seq is None:
            raise EarlierAttempt(self.request_id)
        self.last_seq = seq
        self.nodes.append(intent.node)
