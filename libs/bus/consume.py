"""Typed durable consumers with explicit acks.

A consumer is declared with its stream/durable, a decoder and a handler; the handler
gets the decoded message and its ``Delivery``. Rules every consumer follows
(invariants 2, 3 and 7):
- undecodable message or handler raises LantauError -> ``on_reject`` (typed result where
                                          the message proves who asked), dead-letter
                                          record, term: bad input is never retried
- handler returns                      -> ack
- handler raises anything else         -> nak with exponential backoff; at the last allowed
                                          delivery, dead-letter + ``on_reject``, term
- the bus refuses the rejection record  -> term (PERMISSION_DENIED never goes away by
                                          retrying); the violation is counted and logged
- the bus refuses this identity its durable -> ``run`` raises PERMISSION_DENIED
Handlers must be idempotent: JetStream redelivers whatever was not acked.
A consumer made with ``dead_letter=False`` (the audit's: a fact must never be dropped)
naks every failure, however often, and never dead-letters or terms. A durable with
``cumulative_acks`` (ack policy "all") acknowledges what its handlers finished together,
with the newest message among them (``CumulativeAck``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs import metrics, tracing
from libs.bus import violations
from libs.bus.provision import MAX_DELIVER
from libs.bus.publish import publish
from libs.clock import now_ms
from libs.headers import request_id_from, safe_for_log
from proto.errors import ErrorCode, LantauError, TransientError
from proto.events import RejectedMessage
from proto.subjects import ConsumerSpec, dead_letter_subject, js_pull_next

log = logging.getLogger("lantau.bus")

T = TypeVar("T")

# A pull request lives this long; stopping waits one period for messages already granted.
PULL_EXPIRES_S = 2.0


@dataclass(frozen=True)
class Delivery:
    """Where a message came from and how often it was delivered; nothing here is the
    sender's word except ``request_id``, which is validated (see libs.headers)."""

    subject: str
    stream: str
    stream_seq: int
    count: int
    pending: int
    headers: Mapping[str, str]
    request_id: str | None
    # Tells the server the message is still being worked on (resets its ack wait): for
    # a handler that waits on purpose (a paused signer, the audit appender).
    keep_alive: Callable[[], Awaitable[None]] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, msg: Msg, stream: str) -> Delivery:
        meta = _metadata(msg)
        return cls(
            subject=msg.subject,
            stream=stream,
            stream_seq=meta.sequence.stream if meta else 0,
            count=meta.num_delivered if meta else 1,
            pending=meta.num_pending if meta else 0,
            headers=dict(msg.headers or {}),
            request_id=request_id_from(msg.headers),
            keep_alive=msg.in_progress,
        )


Handler = Callable[[T, Delivery], Awaitable[None]]
# Gets the decoded message, or None when the message did not decode.
RejectHook = Callable[[T | None, LantauError, Delivery], Awaitable[None]]


@dataclass
class PullCredits:
    """How many messages to ask the server for, so that ``concurrency`` handlers stay busy
    without asking for more than can be processed within the ack wait.

    Credits are messages granted by pull requests but not yet received; a pull request
    expires after ``expires_s`` and takes its unused credits with it."""

    batch: int
    concurrency: int
    expires_s: float = PULL_EXPIRES_S
    credits: int = 0
    last_pull: float = field(default=float("-inf"))

    def to_request(self, now: float, in_flight: int) -> int:
        """Messages to ask for now (0: none); the caller sends the request at once."""
        stale = now - self.last_pull > self.expires_s + 0.5
        if stale:
            self.credits = 0  # the previous request expired, or died with a reconnect
        want = min(self.batch, self.concurrency - in_flight - self.credits)
        if want <= 0 or not (stale or self.credits <= self.batch // 2):
            return 0
        self.credits += want
        self.last_pull = now
        return want

    def not_sent(self, asked: int) -> None:
        self.credits = max(0, self.credits - asked)
        self.last_pull = float("-inf")

    def received(self) -> None:
        self.credits = max(0, self.credits - 1)

    def request_ended(self, pending: int | None) -> None:
        """A 408/409 status: the request ended with ``pending`` messages not delivered."""
        self.credits = max(0, self.credits - pending) if pending is not None else 0


class CumulativeAck:
    """One acknowledgement for the messages finished together, on a durable whose ack
    policy is "all": acknowledging stream sequence n acknowledges every earlier one, so
    its handler may return for n only once every earlier message is handled.

    A finished message at or below the floor already acknowledged is a redelivery: its
    acknowledgement was lost or the durable still acknowledges explicitly (one made by an
    earlier release): it is acknowledged on its own, so it is not delivered forever."""

    def __init__(self) -> None:
        self.floor = 0
        self._newest: Msg | None = None
        self._newest_seq = 0
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    def finished(self, msg: Msg, stream_seq: int) -> None:
        if stream_seq <= self.floor:
            self._send(msg)
            return
        if stream_seq > self._newest_seq:
            self._newest, self._newest_seq = msg, stream_seq
        if not self._scheduled:
            # After the handlers released in this same step of the loop have finished too.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._newest is None:
            return
        self._send(self._newest)
        self.floor = max(self.floor, self._newest_seq)
        self._newest, self._newest_seq = None, 0

    def _send(self, msg: Msg) -> None:
        task = asyncio.get_running_loop().create_task(_quietly(msg.ack()))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def drain(self) -> None:
        self._flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


async def _quietly(ack: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):
        await ack


class Consumer(Generic[T]):
    """Competing consumer on a durable pull consumer, processing messages as they arrive."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        spec: ConsumerSpec,
        decode: Callable[[bytes], T],
        handler: Handler[T],
        *,
        batch: int = 64,
        concurrency: int = 64,
        on_reject: RejectHook[T] | None = None,
        name: str = "",
        dead_letter: bool = True,
    ) -> None:
        self._nc = nc
        self._js = js
        self.spec = spec
        self._decode = decode
        self._handler = handler
        self._slots = asyncio.Semaphore(concurrency)
        self._credits = PullCredits(batch=batch, concurrency=concurrency)
        self._on_reject = on_reject
        self._dead_letter = dead_letter
        self._name = name or spec.durable
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._labels = (spec.stream.name, spec.durable)
        # The hot path's series, looked up once instead of per message.
        self._redelivered = metrics.REDELIVERIES.labels(*self._labels)
        self._pending = metrics.CONSUMER_PENDING.labels(*self._labels)
        self._acked = metrics.MESSAGES.labels(*self._labels, "ack")
        self._cumulative = CumulativeAck() if spec.cumulative_acks else None
        self.processed = 0

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run(self, stopping: asyncio.Event) -> None:
        """Pull and process until ``stopping`` is set, then finish what was received."""
        inbox = self._nc.new_inbox()
        sub = await violations.subscribe_checked(self._nc, inbox, cb=self._on_msg)
        next_subject = js_pull_next(self.spec.stream.name, self.spec.durable)
        refused = violations.of(self._nc)
        started = time.monotonic()
        try:
            while not stopping.is_set():
                if refused is not None and refused.seen(next_subject, started):
                    # This identity may not read its durable: nothing will ever arrive.
                    raise violations.denied("publish", next_subject)
                want = self._credits.to_request(time.monotonic(), len(self._tasks))
                if want:
                    request = {"batch": want, "expires": int(PULL_EXPIRES_S * 1e9)}
                    try:
                        await self._nc.publish(
                            next_subject, json.dumps(request).encode(), reply=inbox
                        )
                    except nats.errors.Error:
                        self._credits.not_sent(want)
                        await asyncio.sleep(0.2)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.25)
            # Drain: messages granted by outstanding requests may still arrive.
            deadline = time.monotonic() + PULL_EXPIRES_S
            while self._credits.credits > 0 and (left := deadline - time.monotonic()) > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=left)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._cumulative is not None:
                await self._cumulative.drain()

    async def _on_msg(self, msg: Msg) -> None:
        status = (msg.headers or {}).get("Status") if msg.headers else None
        if status is not None:
            # 408: request expired, 409: server-side limit or leadership change, 100: heartbeat.
            if status in ("408", "409"):
                pending = (msg.headers or {}).get("Nats-Pending-Messages")
                self._credits.request_ended(int(pending) if pending else None)
                self._wake.set()
            return
        self._credits.received()
        task = asyncio.create_task(self._process(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def _process(self, msg: Msg) -> None:
        async with self._slots:
            delivery = Delivery.of(msg, self.spec.stream.name)
            if delivery.count > 1:
                self._redelivered.inc()
            self._pending.set(delivery.pending)
            message: T | None = None
            try:
                with tracing.span(
                    f"{self._name} handle",
                    parent_headers=msg.headers,
                    kind=tracing.SpanKind.CONSUMER,
                    subject=msg.subject,
                    delivery=delivery.count,
                ) as span:
                    try:
                        message = self._decode(msg.data)
                        await self._handler(message, delivery)
                    except LantauError as e:
                        tracing.outcome(span, "rejected", str(e.code))
                        raise
                    except Exception as e:
                        tracing.outcome(span, "retry", str(getattr(e, "code", "INTERNAL")))
                        raise
            except LantauError as e:
                if self._dead_letter:
                    await self._reject(msg, message, e, delivery, outcome="rejected")
                else:
                    await self._retry(msg, delivery, e)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # transient or a bug: retry later, dead-letter at the end
                code = e.code if isinstance(e, TransientError) else ErrorCode.INTERNAL
                if delivery.count >= MAX_DELIVER and self._dead_letter:
                    text = f"gave up after {delivery.count} deliveries; last error: {_describe(e)}"
                    await self._reject(
                        msg,
                        message,
                        LantauError(ErrorCode.DEAD_LETTER, text),
                        delivery,
                        outcome="dead_letter",
                        cause=code,
                    )
                    return
                await self._retry(msg, delivery, e)
                return
            self._acked.inc()
            self.processed += 1
            if self._cumulative is not None:
                self._cumulative.finished(msg, delivery.stream_seq)
                return
            with contextlib.suppress(Exception):
                await msg.ack()

    async def _retry(self, msg: Msg, delivery: Delivery, e: Exception) -> None:
        if not isinstance(e, TransientError | LantauError):
            log.exception("handler %s failed on %s; will retry", self._name, msg.subject)
        else:
            log.warning("%s: %s (delivery %d); will retry", self._name, e, delivery.count)
        metrics.MESSAGES.labels(*self._labels, "retry").inc()
        with contextlib.suppress(Exception):
            await msg.nak(delay=min(0.1 * 2 ** (delivery.count - 1), 5.0))

    async def _reject(
        self,
        msg: Msg,
        message: T | None,
        error: LantauError,
        delivery: Delivery,
        *,
        outcome: str,
        cause: ErrorCode | None = None,
    ) -> None:
        """Record why a message is dropped, tell the requester if we can, then term it."""
        record = RejectedMessage(
            stream=self.spec.stream.name,
            consumer=self.spec.durable,
            stream_seq=delivery.stream_seq,
            subject=msg.subject,
            deliveries=delivery.count,
            code=str(error.code),
            message=error.message,
            request_id=delivery.request_id,
            at_ms=now_ms(),
        )
        try:
            if self._on_reject is not None:
                await self._on_reject(message, error, delivery)
            await publish(
                self._js,
                dead_letter_subject(self.spec.stream.name),
                record,
                msg_id=f"dlq:{self.spec.stream.name}:{self.spec.durable}:{record.stream_seq}",
            )
        except Exception as e:
            if isinstance(e, LantauError) and e.code == ErrorCode.PERMISSION_DENIED:
                # The bus will refuse this every time: retrying cannot help. The violation
                # is counted (lantau_bus_permission_violations_total) and logged.
                log.error("%s: cannot record rejection: %s; dropping", self._name, e.message)
                metrics.MESSAGES.labels(*self._labels, "denied").inc()
                with contextlib.suppress(Exception):
                    await msg.term()
                return
            # Could not record the rejection: keep the message for a later delivery.
            log.warning("%s: cannot record rejection (%s); will retry", self._name, _describe(e))
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
            return
        log.warning(
            "%s: %s %s: %s",
            self._name,
            outcome,
            safe_for_log(msg.subject),
            safe_for_log(str(error)),
        )
        metrics.MESSAGES.labels(*self._labels, outcome).inc()
        if outcome == "dead_letter":
            metrics.DEAD_LETTERS.labels(*self._labels, str(cause or error.code)).inc()
        with contextlib.suppress(Exception):
            await msg.term()


# How often a handler that waits on purpose tells the server it is still working: well
# inside any ack wait (tests run with 4 s), and one small publish per second per message.
KEEP_ALIVE_S = 1.0


async def hold(work: Awaitable[T], delivery: Delivery) -> T:
    """Await ``work``, resetting the message's ack wait while it lasts, so a handler that
    waits on purpose is not redelivered (nor, after max_deliver, given up on)."""
    keep_alive = delivery.keep_alive
    if keep_alive is None:
        return await work
    # A timer, not a task and a wait() per message: the audit holds every fact it is
    # handed, and most are released within milliseconds, long before the first beat.
    loop = asyncio.get_running_loop()
    beating: set[asyncio.Task[None]] = set()

    async def beat() -> None:
        with contextlib.suppress(Exception):
            await keep_alive()

    def tick() -> None:
        if not beating:  # one keep-alive at a time, as when they were awaited in turn
            task = loop.create_task(beat())
            beating.add(task)
            task.add_done_callback(beating.discard)
        timer[0] = loop.call_later(KEEP_ALIVE_S, tick)

    timer = [loop.call_later(KEEP_ALIVE_S, tick)]
    try:
        return await work
    finally:
        timer[0].cancel()


def _metadata(msg: Msg) -> Any:
    try:
        return msg.metadata
    except Exception:
        return None


def _describe(e: BaseException) -> str:
    if isinstance(e, LantauError | TransientError):
        return f"{e.code}: {e.message}"
    return type(e).__name__
