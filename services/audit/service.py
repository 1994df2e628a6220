"""audit: records every fact on the bus in LANTAU_AUDIT_LOG, signed, batched, witnessed.

Each source stream has its own durable consumer, which hands every fact to the one
appender (appender.py) and acks it once it is in the log. The appender writes one
record per batch of facts, signed with the record key (Ed25519, a seed file only this
service reads), on top of a head it verified (writer.py): anything on the log it did not
write is quarantined and named in its next record. Every ``checkpoint_every`` records,
and within ``checkpoint_interval_s`` of any new record (``checkpoint_idle_s`` for one
of checkpoint echoes only, facts.checkpoint_echo), it signs a tree head over the
records with the checkpoint key held in the HSMs, appends it to the log and to every
witness sink (sinks.py); while no sink holds the newest checkpoint, the status in the
lantau_audit_state bucket says so and signers take no orders.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from libs import curves
from libs.audit import checkpoint as cp
from libs.audit import keyfile
from libs.bus.consume import Consumer, Delivery, hold
from libs.clock import now_ms
from libs.config import Config, ConfigError
from libs.hsm.backend import HsmBackend
from libs.hsm.pool import HsmPool
from libs.keys import creation
from libs.keys.directory import KeyDirectory
from libs.service import Runtime, ServiceEntry
from proto.audit import AuditCheckpoint
from proto.errors import ErrorCode, LantauError, TransientError
from proto.hsm import HsmGenerate, HsmSignCheckpoint
from proto.keys import KeyRecord
from proto.subjects import AUDIT_CHECKPOINT_KEY, AUDIT_SOURCES, ORDERS, RECEIPTS
from services.audit.appender import Appender
from services.audit.reconcile import Reconciler
from services.audit.sinks import Sinks
from services.audit.state import StateStore
from services.audit.writer import Halt, LogWriter

log = logging.getLogger("lantau.audit")


class CheckpointKey:
    """The checkpoint key, generated inside an HSM and found via the key directory."""

    def __init__(self, rt: Runtime, pool: HsmPool, keys: KeyDirectory) -> None:
        self.rt = rt
        self.pool = pool
        self.keys = keys

    async def existing(self) -> bytes | None:
        record, _ = await self.keys.get(AUDIT_CHECKPOINT_KEY, fresh=True)
        return record.public_key if record is not None and record.public_key else None

    async def record(self) -> KeyRecord:
        async def generate(node: str) -> bytes:
            # A platform key: no request, no authorization; it signs checkpoints only.
            command = HsmGenerate(key_id=AUDIT_CHECKPOINT_KEY, curve="secp256k1")

            async def on_node(backend: HsmBackend, _n: int) -> bytes:
                return (await backend.generate(command)).public_key

            public_key, _ = await self.pool.run(
                "generate", [node], on_node, max_attempts=1, delivery_matters=True
            )
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

    async def sign(self, checkpoint: AuditCheckpoint) -> tuple[bytes, bytes]:
        """(public key, signature) over a checkpoint; the hsm-node computes the digest."""
        record = await self.record()
        command = HsmSignCheckpoint(key_id=AUDIT_CHECKPOINT_KEY, checkpoint=checkpoint)
        digest = cp.digest(checkpoint)

        async def sign_on(backend: HsmBackend, _n: int) -> bytes:
            raw = await backend.sign_checkpoint(command)
            return curves.finalize("secp256k1", record.public_key, digest, raw).signature

        signature, _ = await self.pool.run(
            "sign", record.nodes, sign_on, max_attempts=self.rt.config.hsm.max_attempts
        )
        return record.public_key, signature


def check(cfg: Config) -> None:
    """Fail fast, before waiting for the bus: the record key and the witness sinks."""
    audit = cfg.audit
    if not audit.record_key_file:
        raise ConfigError("[audit] record_key_file is not set: the audit service signs records")
    if not audit.witness_files:
        raise ConfigError(
            "[audit] witness_files is empty: checkpoints must reach at least one sink "
            "outside the bus"
        )
    for k in audit.accept_record_keys:
        try:
            if len(bytes.fromhex(k)) != 32:
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"[audit] accept_record_keys: {k!r} is not a hex public key"
            ) from None
    if not audit.create_record_key:
        keyfile.load(audit.record_key_file)


async def serve(rt: Runtime) -> None:
    cfg = rt.config.audit
    assert cfg.record_key_file is not None  # check() ran
    key = keyfile.load_or_create(cfg.record_key_file, cfg.create_record_key)
    log.info("record key %s", key.public_hex)
    pool = HsmPool.of_nodes(
        rt.nc,
        rt.js,
        observer=cfg.id,
        node_ids=[n.id for n in rt.config.hsm_nodes if n.role == "pool"],
        timeout_s=rt.config.hsm.timeout_ms / 1000,
        publish_state=False,
    )
    await pool.start(rt.stopping)
    checkpoint_key = CheckpointKey(rt, pool, await KeyDirectory.open(rt.js))
    writer = LogWriter(
        rt.js,
        key,
        accept_keys=frozenset(bytes.fromhex(k) for k in cfg.accept_record_keys),
        checkpoint_key=await checkpoint_key.existing(),
        find_checkpoint_key=checkpoint_key.existing,
    )
    consume_stop = asyncio.Event()

    def on_halt(reason: str) -> None:
        rt.set_ready("audit", False, f"halted: {reason}")
        consume_stop.set()

    appender = Appender(
        rt.js,
        writer,
        cfg,
        sign_checkpoint=checkpoint_key.sign,
        sinks=Sinks(list(cfg.witness_files)),
        state=await StateStore.open(rt.js),
        sources=[spec.stream.name for spec in AUDIT_SOURCES],
        on_halt=on_halt,
    )
    if not await _load(rt, appender):
        await rt.stopping.wait()  # halted: stay up, not ready, for the alert and the logs
        await pool.stop()
        return

    reconciler = Reconciler(rt.js)

    def handler_for(stream: str) -> Callable[[bytes, Delivery], Awaitable[None]]:
        async def handle(data: bytes, delivery: Delivery) -> None:
            await hold(appender.offer(stream, delivery.stream_seq, data), delivery)
            if stream == ORDERS.name:
                reconciler.seen.add(delivery.subject, delivery.stream_seq, data)
            elif stream == RECEIPTS.name:
                # A redelivery checks again: an alert counted twice beats one missed.
                await reconciler.check(data)

        return handle

    consumers = [
        Consumer(
            rt.nc,
            rt.js,
            spec,
            bytes,
            handler_for(spec.stream.name),
            batch=cfg.fetch_batch,
            concurrency=cfg.fetch_batch,
            name=f"audit-{spec.stream.name}",
            dead_letter=False,
        )
        for spec in AUDIT_SOURCES
    ]

    async def stop_when_stopping() -> None:
        await rt.stopping.wait()
        consume_stop.set()

    appender_stop = asyncio.Event()
    watcher = asyncio.create_task(stop_when_stopping())
    appending = asyncio.create_task(appender.run(appender_stop))
    rt.set_ready("startup", True)
    # Consumers drain first (their handlers wait for the appender), then the appender
    # records what they handed over and leaves a signed head behind.
    await asyncio.gather(*(c.run(consume_stop) for c in consumers))
    if appender.halted is not None:
        await rt.stopping.wait()
    appender_stop.set()
    await appending
    watcher.cancel()
    await pool.stop()


async def _load(rt: Runtime, appender: Appender) -> bool:
    """Load the head (resume or read the log) and check it against the witnesses; False
    when the service must halt. A log it cannot read yet is retried."""
    writer = appender.writer
    state = await appender.state.writer()
    while not rt.stopping.is_set():
        try:
            how = await writer.load(state)
            await appender.check_witnesses(await appender.sinks.newest_lines())
        except Halt as h:
            appender.halt(h.reason)
            return False
        except LantauError as e:
            rt.set_ready("startup", False, f"reading the audit log: {e.message}")
            log.warning("cannot read the audit log yet: %s", e.message)
            await asyncio.sleep(1.0)
            continue
        trail = writer.trail
        log.info(
            "audit log loaded (%s): %d records, head at log seq %d, last checkpoint tree size %d",
            how,
            trail.head_seq,
            trail.head_log_seq,
            trail.last_cp_size,
        )
        return True
    return False


ENTRY = ServiceEntry(section="audit", serve=serve, check=check)
