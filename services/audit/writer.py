"""The log writer: the head it builds on, verified, and the one way to append to the log.

It reads the log with the same ``Trail`` auditors use: a record or checkpoint another
replica wrote is accepted, anything else is quarantined (metric, log, and named in the
next record's ``skipped``). Every append expects the last log sequence it read, so
nothing can slip in between unseen and replicas never fork the chain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.js.errors
from nats.js import JetStreamContext

from libs import metrics
from libs.audit import checkpoint as cp
from libs.audit import logread, merkle, records
from libs.audit.records import RecordKey
from libs.audit.trail import Keys, LogItem, Trail, decode_item
from libs.bus.publish import WRONG_LAST_SEQUENCE
from proto import codec
from proto.audit import AuditCheckpoint, AuditRecord
from proto.errors import ErrorCode, LantauError
from proto.subjects import AUDIT_CHAIN, AUDIT_CHECKPOINT, AUDIT_LOG
from services.audit.state import WriterState

log = logging.getLogger("lantau.audit")

HDR_EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
# A log that reads shorter than what was read is read this many times, this far apart,
# before it counts as truncated.
SHRINK_CHECKS = 5
SHRINK_CHECK_PAUSE_S = 1.0


class Halt(Exception):
    """The service must stop appending: the reason says why, for the log and /readyz."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Moved(Exception):
    """Someone appended to the log since we read it; we have read it again: rebuild."""


class LogWriter:
    def __init__(
        self,
        js: JetStreamContext,
        key: RecordKey,
        *,
        accept_keys: frozenset[bytes] = frozenset(),
        checkpoint_key: bytes | None = None,
        find_checkpoint_key: Callable[[], Awaitable[bytes | None]] | None = None,
    ) -> None:
        self._js = js
        self.key = key
        # Another replica may make the checkpoint key after we started: look it up before
        # calling its first checkpoint foreign.
        self._find_checkpoint_key = find_checkpoint_key
        self._record_keys = accept_keys | {key.public_key}
        self.trail = Trail(self._keys(checkpoint_key))

    def _keys(self, checkpoint_key: bytes | None) -> Keys:
        return Keys(self._record_keys, (checkpoint_key,) if checkpoint_key else ())

    def set_checkpoint_key(self, public_key: bytes) -> None:
        if public_key not in self.trail.keys.checkpoint_keys:
            self.trail.keys = self._keys(public_key)

    # -- loading -------------------------------------------------------------

    async def load(self, state: WriterState | None) -> str:
        """Resume from the saved state when it checks out, else read the whole log.
        Returns how it loaded; raises Halt when the log it would build on is broken."""
        how = "read the whole log"
        resumed = await self._resume(state) if state is not None else None
        if resumed is not None:
            self.trail, how = resumed, "resumed from the saved state"
        else:
            self.trail = Trail(self.trail.keys)
        await self.catch_up(count=resumed is not None)
        metrics.AUDIT_HEAD_SEQUENCE.set(self.trail.head_seq)
        return how

    async def _resume(self, state: WriterState) -> Trail | None:
        b = await logread.bounds(self._js)
        if not b.first_seq <= state.head_log_seq < state.checkpoint_log_seq <= b.last_seq:
            log.warning("writer state points outside the log: re-reading the whole log")
            return None
        c_item = await self._item(state.checkpoint_log_seq, b.direct)
        r_item = await self._item(state.head_log_seq, b.direct)
        await self._know_checkpoint_key(c_item)
        c, r = c_item.entry, r_item.entry
        keys = self.trail.keys
        ok = (
            isinstance(c, AuditCheckpoint)
            and isinstance(r, AuditRecord)
            and c.tree_size == r.seq == state.frontier.size
            and c.head_hash == r.hash
            and c.root == merkle.frontier_root(state.frontier).hex()
            and bytes.fromhex(r.writer) in keys.record_keys
            and records.signature_ok(r)
            and records.record_hash(r) == r.hash
            and cp.verify(c, list(keys.checkpoint_keys))
        )
        if not ok or not isinstance(c, AuditCheckpoint) or not isinstance(r, AuditRecord):
            log.warning("writer state does not match the log: re-reading the whole log")
            return None
        return Trail(
            keys,
            head_seq=r.seq,
            head_hash=r.hash,
            head_log_seq=state.head_log_seq,
            last_log_seq=state.head_log_seq,
            frontier=state.frontier,
            cursors=dict(c.cursors),
            last_cp_size=c.prev_tree_size,
        )

    async def _item(self, seq: int, direct: bool) -> LogItem:
        f = await logread.fetch(self._js, AUDIT_CHAIN.name, seq, direct=direct)
        return decode_item(seq, f.data) if f.data is not None else LogItem(seq, None, f.problem)

    async def _log_end(self) -> int:
        """The log's last sequence. A log that reads shorter than what this service read
        is read again before anything is concluded: on a cluster, a server that rejoined
        with its store lost can answer for a moment before it has caught up. Shorter on
        every read: truncated or replaced (Halt), or, while the stream's replicas are not
        all current, not known yet (a retryable error)."""
        for attempt in range(SHRINK_CHECKS):
            b = await logread.bounds(self._js)
            if b.last_seq >= self.trail.last_log_seq:
                return b.last_seq
            if attempt + 1 < SHRINK_CHECKS:
                await asyncio.sleep(SHRINK_CHECK_PAUSE_S)
        seen = f"it ends at log seq {b.last_seq}, but this service read it up to "
        seen += f"{self.trail.last_log_seq} (record {self.trail.head_seq})"
        if b.current < b.replicas:
            raise LantauError(
                ErrorCode.AUDIT_LOG_UNREADABLE,
                f"the log reads shorter ({seen}) while {b.current} of its {b.replicas} "
                "replicas are current: waiting for the stream to recover",
            )
        raise Halt(f"the log shrank: {seen}: the log was truncated or replaced")

    async def catch_up(self, *, count: bool = True) -> int:
        """Read what others appended since our last read; returns how many entries were
        quarantined. Raises Halt if the log we build on is broken."""
        found = 0
        last = await self._log_end()
        async for item, _ in logread.read_items(self._js, self.trail.last_log_seq + 1, upto=last):
            await self._know_checkpoint_key(item)
            verdict = self.trail.feed(item)
            if verdict.kind == "foreign":
                found += 1
                if count:
                    metrics.AUDIT_QUARANTINED.inc()
                    log.warning(
                        "quarantined log seq %d: %s; never chained or certified, named in the "
                        "next record",
                        verdict.log_seq,
                        verdict.reason,
                    )
            elif verdict.kind == "fail":
                raise Halt(f"the log is broken at log seq {verdict.log_seq}: {verdict.reason}")
        metrics.AUDIT_HEAD_SEQUENCE.set(self.trail.head_seq)
        return found

    async def _know_checkpoint_key(self, item: LogItem) -> None:
        c = item.entry
        if (
            isinstance(c, AuditCheckpoint)
            and self._find_checkpoint_key is not None
            and not cp.verify(c, list(self.trail.keys.checkpoint_keys))
        ):
            found = await self._find_checkpoint_key()
            if found is not None:
                self.set_checkpoint_key(found)

    async def last_log_seq(self) -> int:
        return (await logread.bounds(self._js)).last_seq

    # -- appending -----------------------------------------------------------

    async def append_record(self, record: AuditRecord) -> None:
        """Append one record built on the current head; Moved if the log moved."""
        ack_seq = await self._publish(AUDIT_LOG, record)
        verdict = self.trail.feed(LogItem(ack_seq, record))
        if verdict.kind != "record":
            raise Halt(f"our own record {record.seq} at log seq {ack_seq}: {verdict.reason}")
        metrics.AUDIT_HEAD_SEQUENCE.set(record.seq)

    async def append_checkpoint(self, checkpoint: AuditCheckpoint) -> int:
        """Append a signed checkpoint over the current head; its log seq. Moved if the log
        moved."""
        ack_seq = await self._publish(AUDIT_CHECKPOINT, checkpoint)
        verdict = self.trail.feed(LogItem(ack_seq, checkpoint))
        if verdict.kind != "checkpoint":
            raise Halt(f"our own checkpoint at log seq {ack_seq}: {verdict.reason}")
        return ack_seq

    async def _publish(self, subject: str, entry: AuditRecord | AuditCheckpoint) -> int:
        headers = {HDR_EXPECTED_LAST_SEQ: str(self.trail.last_log_seq)}
        try:
            ack = await self._js.publish(subject, codec.encode(entry), headers=headers)
        except nats.js.errors.APIError as e:
            if e.err_code == WRONG_LAST_SEQUENCE:
                await self.catch_up()
                raise Moved() from None
            raise
        return int(ack.seq)

    def state(self) -> WriterState:
        t = self.trail
        return WriterState(
            checkpoint_log_seq=t.last_checkpoint_log_seq,
            head_log_seq=t.head_log_seq,
            frontier=t.frontier,
        )

    def next_checkpoint(self, *, at_ms: int, key_id: str) -> AuditCheckpoint:
        """The unsigned checkpoint over the current head."""
        t = self.trail
        return AuditCheckpoint(
            tree_size=t.head_seq,
            root=merkle.frontier_root(t.frontier).hex(),
            head_hash=t.head_hash,
            cursors=dict(t.cursors),
            prev_tree_size=t.last_cp_size,
            record_key=self.key.public_hex,
            at_ms=at_ms,
            key_id=key_id,
        )
