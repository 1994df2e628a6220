"""backup: clones every key to every HSM of its domain (and region), wrapped, never plain.

For each key: wrap it on a node that holds it under the domain KEK, unwrap it on each
missing node, prove the clone (same public key, a test signature verified in
software), then add the node to the key directory by compare-and-set and publish
KeyReplicated. Key-creation events trigger it at once; a periodic sweep catches up
nodes that were down, and keys created while the backup service was down.

Key types kept as sealed material travel the same way, key-type-agnostic: "wrap" gives
the sealed record (ciphertext under the domain sealing key), "unwrap" has the target
open it (its region must be the key's) and take it. A stateful key (lms-hss) is proved
by its public key only: a test signature would spend a one-time key, and a copy never
signs but from a range it leases afresh.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from libs import curves, metrics
from libs.backup.plan import KEY_NOT_WRAPPABLE, offline_status
from libs.bus.consume import Consumer, Delivery
from libs.bus.publish import publish
from libs.clock import now_ms, wait_or_stop
from libs.config import Config, ConfigError
from libs.hsm import authority
from libs.hsm.authority import AuthorityKey
from libs.hsm.backend import HsmBackend
from libs.hsm.balancer import NodeState
from libs.hsm.guard import clone_check_bytes
from libs.hsm.pool import HsmPool
from libs.keys.directory import KeyDirectory
from libs.keys.residency import fully_replicated, plan
from libs.keytypes import kinds
from libs.service import Runtime, ServiceEntry
from proto import codec
from proto.authorization import CloneAuthorization, signing_bytes
from proto.errors import ErrorCode, LantauError, TransientError
from proto.events import Event, KeyCreated, KeyReplicated
from proto.hsm import HsmCloneCheck, HsmUnwrap, HsmWrap
from proto.keys import KeyRecord
from proto.subjects import BACKUP_KEY_EVENTS, EVENT_KEY_REPLICATED

log = logging.getLogger("lantau.backup")

SWEEP_INTERVAL_S = 2.0
# Label values of lantau_keys_without_offline_copy, all exported (0 when none).
OFFLINE_REASONS = ("awaiting_backup_run", "key_not_wrappable", "no_backup_set")
# A clone authorization is used at once; it must not stay good for long.
CLONE_AUTHORIZATION_MS = 60_000


class Backup:
    def __init__(
        self, rt: Runtime, pool: HsmPool, keys: KeyDirectory, authority: AuthorityKey
    ) -> None:
        self.rt = rt
        self.pool = pool
        self.authority = authority
        self.keys = keys
        self.nodes = rt.config.hsm_nodes
        self.kek = rt.config.backup.kek_label
        # Keys the HSM model cannot export at all: reported, not retried forever.
        self.unwrappable: set[str] = set()
        # What each node can wrap (HsmCapabilities.wrappable), asked once per node.
        self.wrappable: dict[str, frozenset[str]] = {}
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

            clones = {t: await self._authorize(record, p.source, t) for t in p.targets}

            async def wrap(backend: HsmBackend, _n: int) -> bytes:
                # Any target's authorization names this source: the source checks that
                # the key may leave it (and for where) before it wraps.
                first = clones[p.targets[0]]
                return await backend.wrap(
                    HsmWrap(
                        key_id=key_id, kek_label=self.kek, clone=first, created=record.authorization
                    )
                )

            try:
                wrapped, source = await self.pool.run("wrap", [p.source], wrap, max_attempts=1)
            except LantauError as e:
                if e.code == ErrorCode.KEY_NOT_WRAPPABLE:
                    self.unwrappable.add(key_id)
                    log.error("key %s cannot be cloned: %s", key_id, e.message)
                    return record
                raise
            for target in p.targets:
                await self._clone(record, wrapped, source, target, clones[target])
            return (await self.keys.get(key_id, fresh=True))[0]

    async def _authorize(self, record: KeyRecord, source: str, target: str) -> CloneAuthorization:
        now = now_ms()
        unsigned = CloneAuthorization(
            key_id=record.key_id,
            curve=record.curve,
            public_key=record.public_key,
            source=source,
            target=target,
            issued_at_ms=now,
            not_after_ms=now + CLONE_AUTHORIZATION_MS,
            signed_by=self.authority.public_hex,
        )
        signature = await self.authority.sign(signing_bytes(unsigned))
        return msgspec.structs.replace(unsigned, signature=signature)

    async def _clone(
        self,
        record: KeyRecord,
        wrapped: bytes,
        source: str,
        target: str,
        clone: CloneAuthorization,
    ) -> None:
        async def unwrap_and_check(backend: HsmBackend, _n: int) -> None:
            made = await backend.unwrap(
                HsmUnwrap(
                    key_id=record.key_id,
                    curve=record.curve,
                    kek_label=self.kek,
                    wrapped=wrapped,
                    public_key=record.public_key,
                    clone=clone,
                    created=record.authorization,
                )
            )
            if made.public_key != record.public_key:
                raise TransientError(
                    ErrorCode.HSM_ERROR, f"clone of {record.key_id} on {target} differs"
                )
            if kinds.is_stateful(record.curve):
                return  # the target opened the blob bound to this public key: enough
            raw = await backend.clone_check(HsmCloneCheck(key_id=record.key_id, curve=record.curve))
            data = clone_check_bytes(record.curve, record.key_id, target)
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
        records = []
        for record in await self.keys.all():
            if record.status == "active" and not fully_replicated(record, self.nodes):
                record = await self.replicate(record.key_id) or record
            if record.status == "active" and not fully_replicated(record, self.nodes):
                under += 1
                oldest = min(oldest or record.created_at_ms, record.created_at_ms)
            records.append(record)
        metrics.KEYS_UNDER_REPLICATED.set(under)
        metrics.BACKUP_LAG.set(0 if oldest is None else max(0.0, (now_ms() - oldest) / 1000))
        await self.count_offline_copies(records)

    async def count_offline_copies(self, records: list[KeyRecord]) -> None:
        """lantau_keys_without_offline_copy: keys past the allowed time with no copy in a
        backup set (the ceremonies copy them; this service only watches)."""
        await self._learn_wrappable()
        wrappable: dict[str, frozenset[str] | None] = dict(self.wrappable)
        cutoff = now_ms() - self.rt.config.backup.offline_copy_within_s * 1000
        counts = dict.fromkeys(OFFLINE_REASONS, 0)
        for record in records:
            if record.status != "active" or record.created_at_ms > cutoff:
                continue
            status = offline_status(record, self.rt.config.backup_sets, wrappable)
            if status.reason is None:
                continue
            reason = KEY_NOT_WRAPPABLE if record.key_id in self.unwrappable else status.reason
            counts[reason.lower()] = counts.get(reason.lower(), 0) + 1
        for reason, n in counts.items():
            metrics.KEYS_WITHOUT_OFFLINE_COPY.labels(reason).set(n)

    async def _learn_wrappable(self) -> None:
        for node in self.nodes:
            if node.id in self.wrappable or node.id not in self.up():
                continue

            async def ask(backend: HsmBackend, _n: int) -> frozenset[str]:
                return frozenset((await backend.capabilities()).wrappable)

            try:
                self.wrappable[node.id], _ = await self.pool.run(
                    "capabilities", [node.id], ask, max_attempts=1
                )
            except (LantauError, TransientError):
                continue


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
    assert rt.config.backup.authority is not None  # check() refused to start otherwise
    key = await asyncio.to_thread(authority.load, rt.config.backup.authority)
    backup = Backup(rt, pool, await KeyDirectory.open(rt.js), key)
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
    await key.close()


def check(cfg: Config) -> None:
    if cfg.backup.authority is None:
        raise ConfigError("[backup] authority: the backup service signs every clone")


ENTRY = ServiceEntry(section="backup", serve=serve, check=check)
