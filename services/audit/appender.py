"""The one appender: facts in, one signed record per batch out, checkpoints, witnesses.

The audit consumers hand every delivered fact to ``offer`` and wait; one task gathers
what arrived (up to ``batch_max_facts``, for at most ``batch_wait_ms``), appends it as
one record (one fsync'd write for the whole batch), and releases the waiting handlers,
which then ack. A message delivered ahead of one still missing waits for it; a hole that
lasts, or a stream whose consumer stalled, is read directly from the stream, and a
message that is gone becomes a gap note. An append that keeps failing is retried for
``append_retry_s``, then the service halts (metric, log, /readyz) instead of dropping
anything: the facts stay unacknowledged on their streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec
from nats.js import JetStreamContext

from libs import metrics
from libs.audit import checkpoint as cp
from libs.audit import logread, records
from libs.audit.witness import Witnessed
from libs.clock import now_ms
from libs.config import AuditConfig
from proto.audit import AuditCheckpoint, WitnessStatus
from proto.errors import ErrorCode, LantauError
from proto.subjects import AUDIT_CHAIN, AUDIT_CHECKPOINT_KEY
from services.audit.batch import Pending, Waiting
from services.audit.facts import checkpoint_echo, describe
from services.audit.sinks import Sinks
from services.audit.state import StateStore
from services.audit.writer import Halt, LogWriter, Moved

log = logging.getLogger("lantau.audit")

TICK_S = 0.25
# A hole in a stream's deliveries is read from the stream after this long (another
# replica, or a redelivery, normally fills it first).
HOLE_WAIT_S = 0.5
# At most this often, a hole sends the appender to read what other replicas appended.
LEARN_EVERY_S = 0.02
# How often the source streams and the log are checked for work nobody delivered.
SWEEP_S = 1.0
# Appends that lost the race to another writer, in a row, before giving up.
MAX_CONFLICTS = 100

# Signs an unsigned checkpoint (the HSM computes its digest): (public key, signature).
Signer = Callable[[AuditCheckpoint], Awaitable[tuple[bytes, bytes]]]


class Appender:
    def __init__(
        self,
        js: JetStreamContext,
        writer: LogWriter,
        cfg: AuditConfig,
        *,
        sign_checkpoint: Signer | None,
        sinks: Sinks,
        state: StateStore,
        sources: list[str],
        on_halt: Callable[[str], None],
    ) -> None:
        self._js = js
        self.writer = writer
        self.cfg = cfg
        self._sign = sign_checkpoint
        self.sinks = sinks
        self.state = state
        self._sources = sources
        self._on_halt = on_halt
        self.pending = Pending()
        self._wake = asyncio.Event()
        self.halted: str | None = None
        self._last_sweep = 0.0
        self._swept_at: dict[str, int] = {}
        self._learnt_at = 0.0
        # The newest record this replica appended that calls for a checkpoint soon.
        self._calls_for_checkpoint = 0

    # -- the consumers' side -------------------------------------------------

    async def offer(self, stream: str, seq: int, data: bytes) -> None:
        """Return once the fact is in the log (now or before); raises while halted."""
        if self.halted is not None:
            raise LantauError(ErrorCode.AUDIT_HALTED, self.halted)
        if seq <= self.writer.trail.cursors.get(stream, 0):
            return  # recorded before (a redelivery, or another replica)
        waiting = self.pending.add_fact(stream, seq, data, time.monotonic())
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting.waiters.append(future)
        self._wake.set()
        await future

    # -- the loop ------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        await self._witness_tick()
        while not stopping.is_set() and self.halted is None:
            # While facts wait behind a hole, look at the log again soon: another replica
            # is most likely recording what is missing.
            waiting = self.pending.holes(self.writer.trail.cursors)
            try:
                await asyncio.wait_for(
                    self._wake.wait(), timeout=LEARN_EVERY_S if waiting else TICK_S
                )
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                if len(self.pending) and len(self.pending) < self.cfg.batch_max_facts:
                    await asyncio.sleep(self.cfg.batch_wait_ms / 1000)
                await self._flush()
                await self._tick()
            except Halt as h:
                self.halt(h.reason)
            except LantauError as e:  # the log could not be read: retried next tick
                log.warning("audit: %s", e.message)
                await asyncio.sleep(TICK_S)
            except Exception:  # a bug: keep the loop (and every waiting fact) alive
                log.exception("audit appender step failed; retrying")
                await asyncio.sleep(TICK_S)
        if self.halted is None:
            try:
                await self._flush()
                await self.checkpoint()  # leave a signed head behind
            except Exception as e:
                log.warning("no final checkpoint: %s", getattr(e, "reason", type(e).__name__))

    def halt(self, reason: str) -> None:
        if self.halted is not None:
            return
        self.halted = reason
        metrics.AUDIT_HALTED.set(1)
        log.error(
            "AUDIT HALTED: %s. Nothing more is appended; no fact is dropped: every unrecorded "
            "fact stays unacknowledged on its stream until the service runs again "
            "(docs/operations.md#lantauaudithalted)",
            reason,
        )
        error = LantauError(ErrorCode.AUDIT_HALTED, reason)
        for items in self.pending.by_stream.values():
            for w in items.values():
                _fail_waiters(w, error)
        self._on_halt(reason)

    # -- records -------------------------------------------------------------

    async def _flush(self) -> None:
        while True:
            self._release(self.pending.drop_recorded(self.writer.trail.cursors))
            await self._learn_holes_from_the_log()
            await self._fill_holes(aged_only=True)
            batch = await self._append()
            if batch is None:
                return
            self._release(self.pending.drop_recorded(self.writer.trail.cursors))
            trail = self.writer.trail
            if trail.head_seq - trail.last_cp_size >= self.cfg.checkpoint_every:
                await self.checkpoint()
            if len(batch) < self.cfg.batch_max_facts:
                return

    async def _append(self) -> list[Waiting] | None:
        """Append the next batch as one record, retrying; Halt when it cannot. The batch
        appended, or None when there was nothing to record."""
        first_failure: float | None = None
        conflicts = 0
        delay = 0.05
        while True:
            trail = self.writer.trail
            # Taken again each try: after a reload, another replica may have recorded some.
            self._release(self.pending.drop_recorded(trail.cursors))
            batch = self.pending.take(trail.cursors, self.cfg.batch_max_facts)
            if not batch and not trail.pending:
                return None
            record = records.new_record(
                seq=trail.head_seq + 1,
                prev_hash=trail.head_hash,
                at_ms=now_ms(),
                facts=[describe(w.stream, w.first, w.data) for w in batch if w.data is not None],
                gaps=[w.gap() for w in batch if w.is_gap],
                skipped=records.ranges([seq for seq, _ in trail.pending]),
                key=self.writer.key,
            )
            try:
                await self.writer.append_record(record)
            except Moved:
                conflicts += 1
                if conflicts > MAX_CONFLICTS:
                    raise Halt(
                        f"lost the race for the log {conflicts} times in a row: something else "
                        "keeps appending to it"
                    ) from None
                continue
            except (Halt, asyncio.CancelledError):
                raise
            except Exception as e:
                now = time.monotonic()
                first_failure = first_failure or now
                reason = f"{type(e).__name__}: {getattr(e, 'description', None) or e}"
                if now - first_failure > self.cfg.append_retry_s:
                    raise Halt(
                        f"could not append record {record.seq} for "
                        f"{self.cfg.append_retry_s:g} s (last error: {reason})"
                    ) from None
                log.warning("append of record %d failed (%s); retrying", record.seq, reason)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                try:
                    await self.writer.catch_up()
                except LantauError:
                    pass
                continue
            if (
                record.gaps
                or record.skipped
                or not all(checkpoint_echo(w.data) for w in batch if w.data is not None)
            ):
                self._calls_for_checkpoint = record.seq
            metrics.AUDIT_FACTS.inc(len(record.facts))
            for gap in record.gaps:
                metrics.AUDIT_FACT_GAPS.labels(gap.stream, gap.reason).inc()
                log.warning(
                    "gap recorded: %s:%d..%d %s before it could be recorded",
                    gap.stream,
                    gap.first,
                    gap.last,
                    gap.reason,
                )
            return batch

    def _release(self, done: list[Waiting]) -> None:
        for w in done:
            for future in w.waiters:
                if isinstance(future, asyncio.Future) and not future.done():
                    future.set_result(None)

    # -- holes and sweeps ----------------------------------------------------

    async def _learn_holes_from_the_log(self) -> None:
        """A hole is most often facts another replica was handed and has recorded: read
        its records (a few direct gets) before waiting HOLE_WAIT_S to read the stream.
        Without this a replica learnt of them only when its own append lost the race, and
        two replicas recorded ~4 records a second (tests/e2e/test_audit.py)."""
        now = time.monotonic()
        if now - self._learnt_at < LEARN_EVERY_S:
            return
        if not self.pending.holes(self.writer.trail.cursors):
            return
        self._learnt_at = now
        await self.writer.catch_up()
        self._release(self.pending.drop_recorded(self.writer.trail.cursors))

    async def _fill_holes(self, *, aged_only: bool) -> None:
        now = time.monotonic()
        for stream, (first, last, since) in self.pending.holes(self.writer.trail.cursors).items():
            if aged_only and now - since < HOLE_WAIT_S:
                continue
            await self._read_stream(stream, first, min(last, first + self.cfg.batch_max_facts - 1))

    async def _read_stream(self, stream: str, first: int, last: int) -> None:
        """Read messages first..last of a source stream directly (from the stream's
        leader: a follower behind would answer "not found" for a message that exists)."""
        b = await logread.bounds(self._js, stream)
        now = time.monotonic()
        gap_start: int | None = None
        gap_reason: Literal["expired", "deleted"] = "deleted"
        last = min(last, b.last_seq)
        async for f in logread.fetch_range(self._js, stream, first, last, direct=False):
            if f.data is not None:
                if gap_start is not None:
                    self.pending.add_gap(stream, gap_start, f.seq - 1, gap_reason, now)
                    gap_start = None
                self.pending.add_fact(stream, f.seq, f.data, now)
            elif f.problem == "missing from the store":
                reason: Literal["expired", "deleted"] = (
                    "expired" if f.seq < b.first_seq else "deleted"
                )
                if gap_start is not None and reason != gap_reason:
                    self.pending.add_gap(stream, gap_start, f.seq - 1, gap_reason, now)
                    gap_start = None
                if gap_start is None:
                    gap_start, gap_reason = f.seq, reason
            else:
                break  # the server failed to answer for it: try again later
        else:
            if gap_start is not None:
                self.pending.add_gap(stream, gap_start, last, gap_reason, now)
            return
        if gap_start is not None:
            self.pending.add_gap(stream, gap_start, f.seq - 1, gap_reason, now)

    async def _sweep(self) -> None:
        """Work nobody delivered: source messages past a cursor that did not move since
        the last sweep (a stalled consumer), and entries others put on the log."""
        lag = 0
        cursors = self.writer.trail.cursors
        for stream in self._sources:
            b = await self._bounds(stream)
            at = cursors.get(stream, 0)
            behind = b.last_seq - at
            lag += max(0, behind)
            waiting = self.pending.by_stream.get(stream)
            if behind > 0 and not waiting and self._swept_at.get(stream) == at:
                await self._read_stream(stream, at + 1, at + self.cfg.batch_max_facts)
            self._swept_at[stream] = at
        metrics.AUDIT_LAG.set(lag)
        if (await self._bounds(AUDIT_CHAIN.name)).last_seq != self.writer.trail.last_log_seq:
            await self.writer.catch_up()  # foreign entries get their note in the next record

    async def _bounds(self, stream: str) -> logread.Bounds:
        """A stream's bounds; its replicas' health goes to the NATS gauges on the way (a
        stream that does not answer has no current replica that this service can see)."""
        try:
            b = await logread.bounds(self._js, stream)
        except LantauError:
            metrics.NATS_STREAM_REPLICAS_CURRENT.labels(stream).set(0)
            raise
        metrics.NATS_STREAM_REPLICAS.labels(stream).set(b.replicas)
        metrics.NATS_STREAM_REPLICAS_CURRENT.labels(stream).set(b.current)
        return b

    # -- checkpoints and witnesses -------------------------------------------

    async def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < SWEEP_S:
            return
        self._last_sweep = now
        await self._sweep()
        await self._flush()
        trail = self.writer.trail
        # The log's newest checkpoint, whichever replica signed it.
        last = trail.last_checkpoint
        since = (now_ms() - last.at_ms) / 1000 if last is not None else float("inf")
        called = self._calls_for_checkpoint > trail.last_cp_size
        if checkpoint_due(since, called=called, cfg=self.cfg):
            await self.checkpoint()
        await self._witness_tick()

    async def checkpoint(self) -> AuditCheckpoint | None:
        """Sign and append a checkpoint over the head if it moved; then witness it."""
        if self._sign is None:
            return None
        for _ in range(5):
            trail = self.writer.trail
            if trail.head_seq == 0 or trail.head_seq <= trail.last_cp_size:
                return None
            unsigned = self.writer.next_checkpoint(at_ms=now_ms(), key_id=AUDIT_CHECKPOINT_KEY)
            try:
                public_key, signature = await self._sign(unsigned)
            except Exception as e:  # an HSM hiccup: records keep flowing; retried later
                log.warning("checkpoint not signed: %s", getattr(e, "message", type(e).__name__))
                return None
            self.writer.set_checkpoint_key(public_key)
            signed = msgspec.structs.replace(unsigned, signature=signature)
            try:
                await self.writer.append_checkpoint(signed)
            except Moved:
                continue
            except Halt:
                raise
            except Exception as e:
                log.warning("checkpoint not appended: %s", type(e).__name__)
                return None
            metrics.AUDIT_CHECKPOINT_TREE_SIZE.set(signed.tree_size)
            await self.sinks.write(signed)
            await self._publish_status()
            try:
                await self.state.save_writer(self.writer.state())
            except Exception as e:
                log.warning("writer state not saved: %s", type(e).__name__)
            return signed
        return None

    async def _witness_tick(self) -> None:
        await self.sinks.probe()
        await self._publish_status()

    async def _publish_status(self) -> None:
        witnessed = self.sinks.witnessed
        metrics.AUDIT_WITNESSED.set(1 if witnessed else 0)
        down = [s for s in self.sinks.sinks if not s.up]
        reason = (
            ""
            if witnessed
            else "no witness sink holds the newest checkpoint: "
            + "; ".join(f"{s.path}: {s.reason}" for s in down)
        )
        status = WitnessStatus(
            witnessed=witnessed,
            sinks_up=self.sinks.up_count,
            sinks_total=len(self.sinks.sinks),
            tree_size=self.writer.trail.last_cp_size,
            writer=self.writer.key.public_hex,
            reason=reason,
            at_ms=now_ms(),
        )
        try:
            await self.state.publish_status(status)
        except Exception as e:
            log.warning("witness status not published: %s", type(e).__name__)

    async def check_witnesses(self, newest: list[Witnessed]) -> None:
        """At start: the log must still hold the newest checkpoint each sink saw."""
        trail = self.writer.trail
        keys = list(trail.keys.checkpoint_keys)
        for w in newest:
            c = w.checkpoint
            if not cp.verify(c, keys):
                log.error(
                    "%s: its newest line is not a checkpoint signed by the audit key", w.label
                )
                continue
            if c.tree_size > trail.head_seq:
                raise Halt(
                    f"the log holds {trail.head_seq} records but {w.label} witnessed a "
                    f"checkpoint of {c.tree_size}: the log was truncated or replaced"
                )
            known = trail.checkpoint_roots.get(c.tree_size)
            if known is not None and known[0].root != c.root:
                raise Halt(
                    f"{w.label} witnessed another root for tree size {c.tree_size}: the log was "
                    "rewritten"
                )
            for sink in self.sinks.sinks:
                if sink.path == w.source and c.tree_size == trail.last_cp_size:
                    sink.holds = c.tree_size
        if trail.last_checkpoint is not None:
            self.sinks.newest = trail.last_checkpoint


def checkpoint_due(since_last: float, *, called: bool, cfg: AuditConfig) -> bool:
    """Whether to sign a checkpoint, ``since_last`` seconds after the log's newest one
    (whichever replica signed it).
    A record waits at most about checkpoint_interval_s for a checkpoint over it; one of
    checkpoint echoes only (facts.checkpoint_echo), and an idle log's head, wait
    checkpoint_idle_s: the log rests, and still shows a fresh signed head that often."""
    if called:
        return since_last >= min(cfg.checkpoint_interval_s, cfg.checkpoint_idle_s)
    return since_last >= cfg.checkpoint_idle_s


def _fail_waiters(w: Waiting, error: Exception) -> None:
    for future in w.waiters:
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(error)
