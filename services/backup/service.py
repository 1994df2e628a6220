"""backup: clones every key to every HSM of its domain (and region), wrapped, never plain.

For each key: wrap it on a node that holds it under the domain KEK, unwrap it on each
missing node, prove the clone (same public key, a test signature verified in
software), then add the node to the key directory by compare-and-set and publish
KeyReplicated. Key-creation events trigger it at once; a periodic sweep catches up
nodes that were down, and keys created while the backup service was down.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from libs import curves, metrics
from libs.bus.consume import Consumer, Delivery
from libs.bus.publish import publish
from libs.clock import now_ms, wait_or_stop
from libs.hsm.backend import HsmBackend
from libs.hsm.balancer import NodeState
from libs.hsm.pool import HsmPool
from libs.keys.directory import KeyDirectory
from libs.keys.residency import fully_replicated, plan
from libs.service import Runtime, ServiceEntry
from proto import codec
from proto.errors import ErrorCode, LantauError, TransientError
from proto.events import Event, KeyCreated, KeyReplicated
from proto.keys import KeyRecord
from proto.subjects import BACKUP_KEY_EVENTS, EVENT_KEY_REPLICATED

log = logging.getLogger("lantau.backup")

SWEEP_INTERVAL_S = 2.0
_TEST_DIGEST = hashlib.sha256(b"lantau clone check").digest()


class Backup:
    def __init__(self, rt: Runtime, pool: HsmPool, keys: KeyDirectory) -> None:
        self.rt = rt
        self.pool = pool
        self.keys = keys
        self.nodes = rt.config.hsm_nodes
        self.kek = rt.config.backup.kek_label
        # Keys the HSM model cannot export at all: reported, not retried forever.
        self.unwrappable: set[str] = set()
        self._lock = asyncio.Lock()

    def up(self) -> set[str]:
        return {v.node_id for v in self.pool.balancer.views() if v.state == NodeState.UP}

    async def handle(self, event: Event, _delivery: Delivery) -> None:
        if not isinstance(event, KeyCreated):
            raise LantauError(
                ErrorCode.WRONG_MESSAGE_TYPE, f"expected key_created, got {type(event).__name__}"
            )
        await self.replicate(event.key_id)

    async def replicate(self, key_id: str) -> KeyRecord | None:
        async with self._lock:  # one clone at a time keeps KV updates simple and HSMs calm
            record, _ = await self.keys.get(key_id, fresh=True)
            if record is None or key_id in self.unwrappable:
                return record
            p = plan(record, self.nodes, self.up())
            if not p.targets or p.source is None:
                return record

            async def wrap(backend: HsmBackend, _n: int) -> bytes:
                return await backend.wrap(key_id, self.kek)

            try:
                wrapped, source = await self.pool.run("wrap", [p.source], wrap, max_attempts=1)
            except LantauError as e:
                if e.code == ErrorCode.KEY_NOT_WRAPPABLE:
                    self.unwrappable.add(key_id)
                    log.error("key %s cannot be cloned: %s", key_id, e.message)
                    return record
                raise
            for target in p.targets:
                await self._clone(record, wrapped, source, target)
            return (await self.keys.get(key_id, fresh=True))[0]

    async def _clone(self, record: KeyRecord, wrapped: bytes, source: str, target: str) -> None:
        async def unwrap_and_check(backend: HsmBackend, _n: int) -> None:
            clone = await backend.unwrap(
                record.key_id, record.curve, self.kek, wrapped, record.public_key
            )
            if clone.public_key != record.public_key:
                raise TransientError(
                    ErrorCode.HSM_ERROR, f"clone of {record.key_id} on {target} differs"
                )
            data = _TEST_DIGEST if record.curve == "secp256k1" else b"lantau clone check"
            raw = await backend.sign(record.key_id, record.curve, data)
            # Raises if the clone's signature does not verify under the original public key.
            curves.finalize(record.curve, record.public_key, data, raw)

        await self.pool.run("unwrap", [target], unwrap_and_check, max_attempts=1)
        if await self.keys.add_node(record.key_id, target) is None:
            return  # the key was removed meanwhile
        log.info("key %s cloned %s -> %s and verified", record.key_id, source, target)
        event = KeyReplicated(key_id=record.key_id, node=target, source_node=source, at_ms=now_ms())
        await publish(
            self.rt.js, EVENT_KEY_REPLICATED, event, msg_id=f"replicated:{record.key_id}:{target}"
        )

    async def sweep_forever(self) -> None:
        while not await wait_or_stop(self.rt.stopping, SWEEP_INTERVAL_S):
            try:
                await self.sweep()
            except Exception as e:  # a node or the bus hiccuped; the next sweep retries
                log.warning(
                    "replication sweep incomplete: %s", getattr(e, "message", type(e).__name__)
                )

    async def sweep(self) -> None:
        under, oldest = 0, None
        for record in await self.keys.all():
            if record.status == "active" and not fully_replicated(record, self.nodes):
                record = await self.replicate(record.key_id) or record
            if record.status == "active" and not fully_replicated(record, self.nodes):
                under += 1
                oldest = min(oldest or record.created_at_ms, record.created_at_ms)
        metrics.KEYS_UNDER_REPLICATED.set(under)
        metrics.BACKUP_LAG.set(0 if oldest is None else max(0.0, (now_ms() - oldest) / 1000))


async def serve(rt: Runtime) -> None:
    # Every HSM of the domain, offline backup HSMs included: they receive clones.
    pool = HsmPool.of_nodes(
        rt.nc,
        rt.js,
        observer=rt.config.backup.id,
        node_ids=[n.id for n in rt.config.hsm_nodes],
        timeout_s=rt.config.hsm.clone_timeout_ms / 1000,
        publish_state=False,  # the signers report node state; one voice is enough
    )
    await pool.start(rt.stopping)
    backup = Backup(rt, pool, await KeyDirectory.open(rt.js))
    consumer = Consumer(
        rt.nc,
        rt.js,
        BACKUP_KEY_EVENTS,
        codec.EVENT.decode,
        backup.handle,
        concurrency=8,
        name="backup",
    )
    sweeper = asyncio.create_task(backup.sweep_forever())
    rt.set_ready("startup", True)
    log.info("backup replicating %d hsm nodes (domain key %s)", len(backup.nodes), backup.kek)
    await consumer.run(rt.stopping)
    sweeper.cancel()
    await pool.stop()


ENTRY = ServiceEntry(section="backup", serve=serve)
