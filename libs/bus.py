"""The bus: connect, provision, publish, and a durable consumer loop with explicit acks.

Delivery rules every consumer follows (invariants 2, 3 and 7):
- handler returns                      -> ack
- handler raises LantauError           -> typed error result (via ``on_reject``), dead-letter
                                          record, term: bad input is never retried
- handler raises anything else         -> nak with exponential backoff; at the last allowed
                                          delivery, dead-letter + typed failure, term
Handlers must be idempotent: JetStream redelivers whatever was not acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from libs import metrics, tracing
from libs.config import NatsConfig
from proto import codec
from proto.errors import ErrorCode, LantauError, TransientError
from proto.events import RejectedMessage
from proto.subjects import (
    ALL_BUCKETS,
    ALL_CONSUMERS,
    ALL_STREAMS,
    AUDIT_CHAIN,
    HDR_EXPECTED_LAST_SUBJECT_SEQ,
    HDR_MSG_ID,
    HDR_REQUEST_ID,
    ConsumerSpec,
    dead_letter_subject,
)

log = logging.getLogger("lantau.bus")

MAX_DELIVER = 8
ACK_WAIT_S = 30.0
# A pull request lives this long; stopping waits one period for messages already granted.
PULL_EXPIRES_S = 2.0
WRONG_LAST_SEQUENCE = 10071


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def connect(cfg: NatsConfig, name: str, *, patient: bool = True) -> Client:
    """Connect with endless reconnects: a bus outage pauses a service, never kills it.

    A command-line tool passes ``patient=False`` to fail after trying each server once.
    """

    async def on_error(e: Exception) -> None:
        log.warning("nats error: %s", type(e).__name__)

    async def on_disconnect() -> None:
        log.warning("nats disconnected; reconnecting")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        servers=cfg.servers,
        name=name,
        connect_timeout=cfg.connect_timeout_s,
        allow_reconnect=patient,
        max_reconnect_attempts=-1 if patient else 1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


async def provision(js: JetStreamContext, cfg: NatsConfig) -> None:
    """Create or update every stream, consumer and KV bucket; safe to run from every replica."""
    for spec in ALL_STREAMS:
        is_audit_log = spec is AUDIT_CHAIN
        config = StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            description=spec.description,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=cfg.stream_replicas,
            # The audit chain is kept forever and cannot be edited through the API.
            max_age=0 if is_audit_log else cfg.retention_days * 86400,
            duplicate_window=min(cfg.duplicate_window_s, cfg.retention_days * 86400),
            deny_delete=is_audit_log,
            deny_purge=is_audit_log,
            discard=DiscardPolicy.OLD,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)
    for consumer in ALL_CONSUMERS:
        await ensure_consumer(js, consumer, ack_wait_s=cfg.ack_wait_s)
    for bucket in ALL_BUCKETS:
        try:
            await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            await js.create_key_value(
                bucket=bucket, history=16, replicas=cfg.stream_replicas, storage=StorageType.FILE
            )


async def ensure_consumer(
    js: JetStreamContext, spec: ConsumerSpec, *, ack_wait_s: float = ACK_WAIT_S
) -> None:
    config = ConsumerConfig(
        durable_name=spec.durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=MAX_DELIVER,
        max_ack_pending=4096,
        max_waiting=512,
        filter_subject=spec.filter_subject,
    )
    try:
        await js.add_consumer(spec.stream.name, config)
    except nats.js.errors.BadRequestError:
        log.info(
            "consumer %s/%s exists with other settings; keeping it", spec.stream.name, spec.durable
        )


async def publish(
    js: JetStreamContext,
    subject: str,
    message: msgspec.Struct,
    *,
    msg_id: str | None = None,
    first_on_subject: bool = False,
    headers: dict[str, str] | None = None,
) -> bool:
    """Durably publish; returns False when ``first_on_subject`` and the subject already has one.

    ``msg_id`` lets JetStream drop a duplicate within its window; ``first_on_subject``
    makes the stream refuse a second message on the subject forever (one result per request).
    """
    hdrs = tracing.inject(dict(headers or {}))
    if msg_id:
        hdrs[HDR_MSG_ID] = msg_id
    if first_on_subject:
        hdrs[HDR_EXPECTED_LAST_SUBJECT_SEQ] = "0"
    try:
        await js.publish(subject, codec.encode(message), headers=hdrs or None)
    except nats.js.errors.APIError as e:
        if first_on_subject and e.err_code == WRONG_LAST_SEQUENCE:
            return False
        raise
    return True


async def last_on_subject(js: JetStreamContext, stream: str, subject: str) -> bytes | None:
    """The newest message stored on a subject, or None."""
    try:
        raw = await js.get_last_msg(stream, subject)
    except nats.js.errors.NotFoundError:
        return None
    return raw.data


Handler = Callable[[Msg], Awaitable[None]]
RejectHook = Callable[[Msg, LantauError], Awaitable[None]]


def request_id_header(msg: Msg) -> str | None:
    return (msg.headers or {}).get(HDR_REQUEST_ID)


class Consumer:
    """Competing consumer on a durable pull consumer, processing messages as they arrive.

    Keeps up to ``batch`` messages requested from the server and at most
    ``concurrency`` handlers running; acks each message when its handler finishes.
    """

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        spec: ConsumerSpec,
        handler: Handler,
        *,
        batch: int = 64,
        concurrency: int = 64,
        on_reject: RejectHook | None = None,
        name: str = "",
    ) -> None:
        self._nc = nc
        self._js = js
        self.spec = spec
        self._handler = handler
        self._batch = batch
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._on_reject = on_reject
        self._name = name or spec.durable
        self._credits = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._last_pull = 0.0
        self._labels = (spec.stream.name, spec.durable)
        # The hot path's series, looked up once instead of per message.
        self._redelivered = metrics.REDELIVERIES.labels(*self._labels)
        self._pending = metrics.CONSUMER_PENDING.labels(*self._labels)
        self._acked = metrics.MESSAGES.labels(*self._labels, "ack")
        self.processed = 0

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run(self, stopping: asyncio.Event) -> None:
        """Pull and process until ``stopping`` is set, then finish what was received."""
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, cb=self._on_msg)
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.spec.stream.name}.{self.spec.durable}"
        try:
            while not stopping.is_set():
                room = self._concurrency - len(self._tasks) - self._credits
                stale = time.monotonic() - self._last_pull > PULL_EXPIRES_S + 0.5
                if stale:
                    # The previous request expired (or died with a reconnect): its credits are gone.
                    self._credits = 0
                    room = self._concurrency - len(self._tasks)
                want = min(self._batch, room)
                if want > 0 and (stale or self._credits <= self._batch // 2):
                    request = {"batch": want, "expires": int(PULL_EXPIRES_S * 1e9)}
                    try:
                        await self._nc.publish(
                            next_subject, json.dumps(request).encode(), reply=inbox
                        )
                        self._credits += want
                        self._last_pull = time.monotonic()
                    except nats.errors.Error:
                        await asyncio.sleep(0.2)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.25)
            # Drain: messages granted by outstanding requests may still arrive.
            deadline = time.monotonic() + PULL_EXPIRES_S
            while self._credits > 0 and (left := deadline - time.monotonic()) > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=left)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_msg(self, msg: Msg) -> None:
        status = (msg.headers or {}).get("Status") if msg.headers else None
        if status is not None:
            # 408: request expired, 409: server-side limit or leadership change, 100: heartbeat.
            if status in ("408", "409"):
                pending = (msg.headers or {}).get("Nats-Pending-Messages")
                self._credits = max(0, self._credits - int(pending)) if pending else 0
                self._wake.set()
            return
        self._credits = max(0, self._credits - 1)
        task = asyncio.create_task(self._process(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def _process(self, msg: Msg) -> None:
        async with self._slots:
            count = deliveries(msg)
            if count > 1:
                self._redelivered.inc()
            meta = _metadata(msg)
            if meta is not None:
                self._pending.set(meta.num_pending)
            try:
                with tracing.span(
                    f"{self._name} handle",
                    parent_headers=msg.headers,
                    kind=tracing.SpanKind.CONSUMER,
                    subject=msg.subject,
                    delivery=count,
                ) as span:
                    try:
                        await self._handler(msg)
                    except LantauError as e:
                        tracing.outcome(span, "rejected", str(e.code))
                        raise
                    except Exception as e:
                        tracing.outcome(span, "retry", str(getattr(e, "code", "INTERNAL")))
                        raise
            except LantauError as e:
                await self._reject(msg, e, count, outcome="rejected")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # transient or a bug: retry later, dead-letter at the end
                code = e.code if isinstance(e, TransientError) else ErrorCode.INTERNAL
                if count >= MAX_DELIVER:
                    text = f"gave up after {count} deliveries; last error: {_describe(e)}"
                    await self._reject(
                        msg,
                        LantauError(ErrorCode.DEAD_LETTER, text),
                        count,
                        outcome="dead_letter",
                        cause=code,
                    )
                    return
                if not isinstance(e, TransientError):
                    log.exception("handler %s failed on %s; will retry", self._name, msg.subject)
                else:
                    log.warning("%s: %s (delivery %d); will retry", self._name, e, count)
                metrics.MESSAGES.labels(*self._labels, "retry").inc()
                with contextlib.suppress(Exception):
                    await msg.nak(delay=min(0.1 * 2 ** (count - 1), 5.0))
                return
            self._acked.inc()
            self.processed += 1
            with contextlib.suppress(Exception):
                await msg.ack()

    async def _reject(
        self,
        msg: Msg,
        error: LantauError,
        deliveries: int,
        *,
        outcome: str,
        cause: ErrorCode | None = None,
    ) -> None:
        """Record why a message is dropped, tell the requester if we can, then term it."""
        meta = _metadata(msg)
        record = RejectedMessage(
            stream=self.spec.stream.name,
            consumer=self.spec.durable,
            stream_seq=meta.sequence.stream if meta else 0,
            subject=msg.subject,
            deliveries=deliveries,
            code=str(error.code),
            message=error.message,
            request_id=request_id_header(msg),
            at_ms=now_ms(),
        )
        try:
            if self._on_reject is not None:
                await self._on_reject(msg, error)
            await publish(
                self._js,
                dead_letter_subject(self.spec.stream.name),
                record,
                msg_id=f"dlq:{self.spec.stream.name}:{self.spec.durable}:{record.stream_seq}",
            )
        except Exception as e:
            # Could not record the rejection: keep the message for a later delivery.
            log.warning("%s: cannot record rejection (%s); will retry", self._name, _describe(e))
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
            return
        log.warning("%s: %s %s: %s", self._name, outcome, msg.subject, error)
        metrics.MESSAGES.labels(*self._labels, outcome).inc()
        if outcome == "dead_letter":
            metrics.DEAD_LETTERS.labels(*self._labels, str(cause or error.code)).inc()
        with contextlib.suppress(Exception):
            await msg.term()


def _metadata(msg: Msg) -> Any:
    try:
        return msg.metadata
    except Exception:
        return None


def deliveries(msg: Msg) -> int:
    meta = _metadata(msg)
    return meta.num_delivered if meta else 1


def _describe(e: BaseException) -> str:
    if isinstance(e, LantauError | TransientError):
        return f"{e.code}: {e.message}"
    return type(e).__name__
