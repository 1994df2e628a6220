"""backup: clones every key to every HSM of its domain (and region), wrapped, never plain.

For each key: wrap it on a node that holds it under the domain KEK, unwrap it on each
missing node, prove the clone (same public key, a test signature verified in
software), then add the node to the key directory by compare-and-set and publish
KeyReplicated. Key-creation events trigger it at once; a periodic sweep catches up
nodes that were down, and keys created while the backup service was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time

import msgspec
from nats.aio.msg import Msg

from libs import bus, curves, metrics
from libs.bus import Consumer, now_ms
from libs.hsm.remote import RemoteHsm
from libs.service import Runtime
from proto import codec
from proto.errors import ErrorCode, LantauError, TransientError
from proto.events import KeyCreated, KeyReplicated
from proto.keys import KeyRecord
from proto.subjects import BACKUP_KEY_EVENTS, EVENT_KEY_REPLICATED, HSM_BEAT_PREFIX
from services.backup.plan import fully_replicated, plan
from services.signer.keydir import KeyDirectory

log = logging.getLogger("lantau.backup")

SWEEP_INTERVAL_S = 2.0
# A node whose last beat is older than this is not sent clones.
BEAT_FRESH_MS = 3000
_TEST_DIGEST = hashlib.sha256(b"lantau clone check").digest()


class Backup:
    def __init__(self, rt: Runtime, keys: KeyDirectory) -> None:
        self.rt = rt
        self.keys = keys
        self.nodes = rt.config.hsm_nodes
        self.kek = rt.config.backup.kek_label
        self.timeout_s = rt.config.signer.hsm_timeout_ms / 1000 * 2
        self.last_beat: dict[str, int] = {}
        # Keys the HSM model cannot export at all: reported, not retried forever.
        self.unwrappable: set[str] = set()
        self._lock = asyncio.Lock()

    def up(self) -> set[str]:
        now = now_ms()
        return {n for n, t in self.last_beat.items() if now - t < BEAT_FRESH_MS}

    async def on_beat(self, msg: Msg) -> None:
        with contextlib.suppress(LantauError):
            beat = codec.HEALTH_BEAT.decode(msg.data)
            if beat.ok:
                self.last_beat[beat.node_id] = now_ms()

    async def handle(self, msg: Msg) -> None:
        event = codec.EVENT.decode(msg.data)
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
            try:
                wrapped = await RemoteHsm(self.rt.nc, p.source, timeout_s=self.timeout_s).wrap(
                    key_id, self.kek
                )
            except LantauError as e:
                if e.code == ErrorCode.KEY_NOT_WRAPPABLE:
                    self.unwrappable.add(key_id)
                    log.error("key %s cannot be cloned: %s", key_id, e.message)
                    return record
                raise
            for target in p.targets:
                await self._clone(record, wrapped, p.source, target)
            return (await self.keys.get(key_id, fresh=True))[0]

    async def _clone(self, record: KeyRecord, wrapped: bytes, source: str, target: str) -> None:
        remote = RemoteHsm(self.rt.nc, target, timeout_s=self.timeout_s)
        clone = await remote.unwrap(
            record.key_id, record.curve, self.kek, wrapped, record.public_key
        )
        if clone.public_key != record.public_key:
            raise TransientError(
                ErrorCode.HSM_ERROR, f"clone of {record.key_id} on {target} differs"
            )
        data = _TEST_DIGEST if record.curve == "secp256k1" else b"lantau clone check"
        raw = await remote.sign(record.key_id, record.curve, data)
        curves.finalize(record.curve, record.public_key, data, raw)  # raises if it does not verify
        for _ in range(10):  # compare-and-set: signers or other backups may update concurrently
            current, revision = await self.keys.get(record.key_id, fresh=True)
            if current is None:
                return
            if target in current.nodes:
                break
            updated = msgspec.structs.replace(current, nodes=[*current.nodes, target])
            if await self.keys.update(updated, revision):
                break
        else:
            raise TransientError(
                ErrorCode.INTERNAL, f"key directory entry {record.key_id} kept changing"
            )
        log.info("key %s cloned %s -> %s and verified", record.key_id, source, target)
        event = KeyReplicated(key_id=record.key_id, node=target, source_node=source, at_ms=now_ms())
        await bus.publish(
            self.rt.js, EVENT_KEY_REPLICATED, event, msg_id=f"replicated:{record.key_id}:{target}"
        )

    async def sweep_forever(self) -> None:
        while not self.rt.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rt.stopping.wait(), timeout=SWEEP_INTERVAL_S)
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
    backup = Backup(rt, await KeyDirectory.open(rt.js))
    await rt.nc.subscribe(f"{HSM_BEAT_PREFIX}.*", cb=backup.on_beat)
    consumer = Consumer(
        rt.nc, rt.js, BACKUP_KEY_EVENTS, backup.handle, concurrency=8, name="backup"
    )
    sweeper = asyncio.create_task(backup.sweep_forever())
    started = time.monotonic()
    rt.set_ready("startup", True)
    log.info("backup replicating %d hsm nodes (domain key %s)", len(backup.nodes), backup.kek)
    await consumer.run(rt.stopping)
    sweeper.cancel()
    log.debug("ran %.0f s", time.monotonic() - started)
