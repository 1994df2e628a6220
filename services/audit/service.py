"""audit: appends every fact on the bus to one hash chain stored in LANTAU_AUDIT_LOG.

Each source stream has its own durable consumer; records are appended one at a time
with JetStream's expected-last-sequence check, so two audit replicas can never fork
the chain, and with the source ("<stream>:<seq>") as message id, so a redelivery
after a crash never records the same fact twice.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs import bus, metrics
from libs.bus import Consumer, now_ms
from libs.service import Runtime
from proto import codec
from proto.audit import AuditRecord
from proto.subjects import AUDIT_CHAIN, AUDIT_LOG, AUDIT_SOURCES, HDR_MSG_ID
from services.audit import chain

log = logging.getLogger("lantau.audit")


class _Envelope(msgspec.Struct):
    """The few fields the audit reads from any message; the rest is covered by its hash."""

    type: str = "unknown"
    request_id: str | None = None
    requester: str | None = None
    actor: str | None = None
    observer: str | None = None
    consumer: str | None = None
    node_id: str | None = None


_envelope = msgspec.msgpack.Decoder(_Envelope)


def describe(data: bytes) -> _Envelope:
    try:
        return _envelope.decode(data)
    except msgspec.MsgspecError:
        return _Envelope(type="malformed")


class Chain:
    """The head of the chain and the only way to append to it."""

    def __init__(self, js: JetStreamContext, actor: str) -> None:
        self._js = js
        self._actor = actor
        self._lock = asyncio.Lock()
        self.head: AuditRecord | None = None
        self.head_stream_seq = 0

    async def load(self) -> None:
        try:
            raw = await self._js.get_last_msg(AUDIT_CHAIN.name, AUDIT_LOG)
        except nats.js.errors.NotFoundError:
            self.head, self.head_stream_seq = None, 0
            return
        self.head = codec.AUDIT_RECORD.decode(raw.data)
        self.head_stream_seq = raw.seq or 0
        metrics.AUDIT_HEAD_SEQUENCE.set(self.head.seq)

    async def append(self, source: str, data: bytes) -> None:
        env = describe(data)
        actor = (
            env.requester or env.actor or env.observer or env.consumer or env.node_id or "platform"
        )
        async with self._lock:
            for _ in range(5):
                record = chain.next_record(
                    self.head,
                    at_ms=now_ms(),
                    actor=actor,
                    event_type=env.type,
                    request_id=env.request_id,
                    source=source,
                    content_sha256=chain.content_hash(data),
                )
                headers = {
                    HDR_MSG_ID: f"audit:{source}",
                    "Nats-Expected-Last-Sequence": str(self.head_stream_seq),
                }
                try:
                    ack = await self._js.publish(AUDIT_LOG, codec.encode(record), headers=headers)
                except nats.js.errors.APIError as e:
                    if e.err_code == bus.WRONG_LAST_SEQUENCE:
                        await self.load()  # another writer appended: rebuild on the new head
                        continue
                    raise
                if ack.duplicate:
                    await self.load()  # recorded before a crash; the head may have moved
                    return
                self.head, self.head_stream_seq = record, ack.seq
                metrics.AUDIT_HEAD_SEQUENCE.set(record.seq)
                return
            raise RuntimeError("audit chain head kept moving; will retry")


async def serve(rt: Runtime) -> None:
    chain_head = Chain(rt.js, rt.config.audit.id)
    await chain_head.load()

    def handler_for(stream: str):
        async def handle(msg: Msg) -> None:
            meta = msg.metadata
            await chain_head.append(f"{stream}:{meta.sequence.stream}", msg.data)
            metrics.AUDIT_LAG.set(meta.num_pending)

        return handle

    consumers = [
        Consumer(
            rt.nc,
            rt.js,
            spec,
            handler_for(spec.stream.name),
            batch=rt.config.audit.fetch_batch,
            concurrency=rt.config.audit.fetch_batch,
            name=f"audit-{spec.stream.name}",
        )
        for spec in AUDIT_SOURCES
    ]
    rt.set_ready("startup", True)
    await asyncio.gather(*(c.run(rt.stopping) for c in consumers))
