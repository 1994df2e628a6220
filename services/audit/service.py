"""audit: appends every fact on the bus to one hash chain stored in LANTAU_AUDIT_LOG.

Each source stream has its own durable consumer; entries are appended one at a time
with JetStream's expected-last-sequence check, so two audit replicas can never fork
the chain, and with the source ("<stream>:<seq>") as message id, so a redelivery
after a crash never records the same fact twice. Every CHECKPOINT_EVERY records, or
CHECKPOINT_INTERVAL_S after the last change, a checkpoint over the head is signed
with a key held in the HSMs (cloned like any key, so one dead node does not stop it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from libs import curves, metrics
from libs.audit import chain
from libs.audit import checkpoint as cp
from libs.bus.consume import Consumer, Delivery
from libs.bus.publish import WRONG_LAST_SEQUENCE
from libs.clock import now_ms, wait_or_stop
from libs.hsm.backend import HsmBackend
from libs.hsm.pool import HsmPool
from libs.keys import creation
from libs.keys.directory import KeyDirectory
from libs.service import Runtime, ServiceEntry
from proto import codec
from proto.audit import AuditCheckpoint, AuditRecord
from proto.errors import ErrorCode, TransientError
from proto.hsm import HsmGenerate, HsmSignCheckpoint
from proto.keys import KeyRecord
from proto.subjects import (
    AUDIT_CHAIN,
    AUDIT_CHECKPOINT,
    AUDIT_CHECKPOINT_KEY,
    AUDIT_LOG,
    AUDIT_SOURCES,
    HDR_MSG_ID,
)

log = logging.getLogger("lantau.audit")

CHECKPOINT_EVERY = 100
CHECKPOINT_INTERVAL_S = 5.0


class _Envelope(msgspec.Struct):
    """The few fields the audit reads from any message; the rest is covered by its hash."""

    type: str = "unknown"
    request_id: str | None = None
    requester: str | None = None
    actor: str | None = None
    observer: str | None = None
    consumer: str | None = None
    node_id: str | None = None
    node: str | None = None

    def who(self) -> str:
        """The actor: who caused this fact (a requester, policy, a signer, a node...)."""
        if self.type.endswith("_order"):
            return "policy"
        if self.type.endswith("_result"):
            return f"signer@{self.node}" if self.node else "policy"
        return (
            self.actor
            or self.requester
            or self.observer
            or self.consumer
            or self.node_id
            or "platform"
        )


_envelope = msgspec.msgpack.Decoder(_Envelope)
# Envelope fields are copied into the audit record: one of a near-1 MiB message would
# take the record past NATS's max payload, and that fact would never reach the chain.
ENVELOPE_FIELD_LIMIT = 256


def describe(data: bytes) -> _Envelope:
    """The envelope of any bytes; never raises (what it cannot read is "malformed")."""
    try:
        env = _envelope.decode(data)
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):
        # msgspec lets through RecursionError (deep nesting, even in a field the envelope
        # skips) and UnicodeDecodeError (a str that is not UTF-8).
        return _Envelope(type="malformed")
    long = {
        name: value[:ENVELOPE_FIELD_LIMIT]
        for name in env.__struct_fields__
        if isinstance(value := getattr(env, name), str) and len(value) > ENVELOPE_FIELD_LIMIT
    }
    return msgspec.structs.replace(env, **long) if long else env


class CheckpointKey:
    """The audit's signing key, generated inside an HSM and found via the key directory."""

    def __init__(self, rt: Runtime, pool: HsmPool, keys: KeyDirectory) -> None:
        self.rt = rt
        self.pool = pool
        self.keys = keys

    async def record(self) -> KeyRecord:
        async def generate(node: str) -> bytes:
            # A platform key: no request, no authorization; it signs checkpoints only.
            command = HsmGenerate(key_id=AUDIT_CHECKPOINT_KEY, curve="secp256k1")

            async def on_node(backend: HsmBackend, _n: int) -> bytes:
                return (await backend.generate(command)).public_key

            public_key, _ = await self.pool.run("generate", [node], on_node, max_attempts=1)
            return public_key

        return await creation.create(
            self.keys,
            key_id=AUDIT_CHECKPOINT_KEY,
            curve="secp256k1",
            request_id="audit-service",
            owner="audit",
            region=None,
            choose_node=self._placement,
            generate=generate,
        )

    def _placement(self) -> str:
        node = self.pool.balancer.choose(self.pool.node_ids(), now_ms())
        if node is None:
            raise TransientError(ErrorCode.HSM_UNAVAILABLE, "no healthy HSM node for the audit key")
        return node

    async def sign(self, checkpoint: AuditCheckpoint) -> bytes:
        """The checkpoint key's signature; the hsm-node computes the digest itself."""
        record = await self.record()
        command = HsmSignCheckpoint(key_id=AUDIT_CHECKPOINT_KEY, checkpoint=checkpoint)
        digest = cp.digest(checkpoint)

        async def sign_on(backend: HsmBackend, _n: int) -> bytes:
            raw = await backend.sign_checkpoint(command)
            return curves.finalize("secp256k1", record.public_key, digest, raw).signature

        signature, _ = await self.pool.run(
            "sign", record.nodes, sign_on, max_attempts=self.rt.config.hsm.max_attempts
        )
        return signature


class Chain:
    """The head of the chain and the only way to append to it."""

    def __init__(self, js: JetStreamContext, key: CheckpointKey | None) -> None:
        self._js = js
        self._key = key
        self._lock = asyncio.Lock()
        self.head: AuditRecord | None = None
        self.last_checkpoint: AuditCheckpoint | None = None
        self.stream_seq = 0

    async def load(self) -> None:
        info = await self._js.stream_info(AUDIT_CHAIN.name)
        self.stream_seq = info.state.last_seq
        self.head = await self._last(AUDIT_LOG)  # type: ignore[assignment]
        self.last_checkpoint = await self._last(AUDIT_CHECKPOINT)  # type: ignore[assignment]
        if self.head is not None:
            metrics.AUDIT_HEAD_SEQUENCE.set(self.head.seq)

    async def _last(self, subject: str) -> AuditRecord | AuditCheckpoint | None:
        try:
            raw = await self._js.get_last_msg(AUDIT_CHAIN.name, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        return codec.AUDIT_ENTRY.decode(raw.data or b"")

    async def _append(
        self, subject: str, entry: AuditRecord | AuditCheckpoint, msg_id: str
    ) -> bool:
        """Append after exactly the entry we know of; False if the log moved (reload, rebuild).

        True means the fact is in the log: appended now, or (a duplicate msg id) before a
        crash, in which case the head is reloaded from the log rather than taken from
        ``entry``, which was never written.
        """
        headers = {HDR_MSG_ID: msg_id, "Nats-Expected-Last-Sequence": str(self.stream_seq)}
        try:
            ack = await self._js.publish(subject, codec.encode(entry), headers=headers)
        except nats.js.errors.APIError as e:
            if e.err_code == WRONG_LAST_SEQUENCE:
                await self.load()
                return False
            raise
        if ack.duplicate:
            await self.load()  # recorded before a crash: nothing to add
            return True
        self.stream_seq = ack.seq
        if isinstance(entry, AuditRecord):
            self.head = entry
            metrics.AUDIT_HEAD_SEQUENCE.set(entry.seq)
        else:
            self.last_checkpoint = entry
        return True

    async def append(self, source: str, data: bytes) -> None:
        env = describe(data)
        actor = env.who()
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
                if await self._append(AUDIT_LOG, record, f"audit:{source}"):
                    break
            else:
                raise TransientError(ErrorCode.INTERNAL, "audit chain head kept moving")
            if self.head and self.head.seq - self._checkpointed_seq() >= CHECKPOINT_EVERY:
                await self._checkpoint()

    def _checkpointed_seq(self) -> int:
        return self.last_checkpoint.seq if self.last_checkpoint else 0

    async def checkpoint_if_behind(self) -> None:
        async with self._lock:
            if self.head is not None and self.head.seq > self._checkpointed_seq():
                await self._checkpoint()

    async def _checkpoint(self) -> None:
        if self._key is None or self.head is None:
            return
        for _ in range(5):
            head = self.head
            unsigned = AuditCheckpoint(
                seq=head.seq,
                head_hash=head.hash,
                at_ms=now_ms(),
                prev_checkpoint_seq=self._checkpointed_seq(),
                key_id=AUDIT_CHECKPOINT_KEY,
            )
            signed = msgspec.structs.replace(unsigned, signature=await self._key.sign(unsigned))
            if await self._append(AUDIT_CHECKPOINT, signed, f"checkpoint:{head.seq}"):
                return


async def serve(rt: Runtime) -> None:
    pool = HsmPool.of_nodes(
        rt.nc,
        rt.js,
        observer=rt.config.audit.id,
        node_ids=[n.id for n in rt.config.hsm_nodes if n.role == "pool"],
        timeout_s=rt.config.hsm.timeout_ms / 1000,
        publish_state=False,
    )
    await pool.start(rt.stopping)
    chain_head = Chain(rt.js, CheckpointKey(rt, pool, await KeyDirectory.open(rt.js)))
    await chain_head.load()

    def handler_for(stream: str) -> Callable[[bytes, Delivery], Awaitable[None]]:
        async def handle(data: bytes, delivery: Delivery) -> None:
            await chain_head.append(f"{stream}:{delivery.stream_seq}", data)
            metrics.AUDIT_LAG.set(delivery.pending)

        return handle

    consumers = [
        Consumer(
            rt.nc,
            rt.js,
            spec,
            bytes,
            handler_for(spec.stream.name),
            batch=rt.config.audit.fetch_batch,
            concurrency=rt.config.audit.fetch_batch,
            name=f"audit-{spec.stream.name}",
        )
        for spec in AUDIT_SOURCES
    ]

    async def checkpoints() -> None:
        while not await wait_or_stop(rt.stopping, CHECKPOINT_INTERVAL_S):
            try:
                await chain_head.checkpoint_if_behind()
            except Exception as e:  # an HSM hiccup: records keep flowing, retry next time
                log.warning("checkpoint not written: %s", getattr(e, "message", type(e).__name__))

    ticker = asyncio.create_task(checkpoints())
    rt.set_ready("startup", True)
    await asyncio.gather(*(c.run(rt.stopping) for c in consumers))
    ticker.cancel()
    with contextlib.suppress(Exception):
        await chain_head.checkpoint_if_behind()  # leave a signed head behind on shutdown
    await pool.stop()


ENTRY = ServiceEntry(section="audit", serve=serve)
