"""The key directory in JetStream KV: which key, which curve, on which HSM nodes.

Every change is a compare-and-set on the entry's revision, so concurrent signers,
backup replicas and the audit service never overwrite each other. Creating a key
follows one protocol (``libs.keys.creation``): reserve the id, generate on the reserved
node, then activate, or release a reservation that certainly made no key.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from libs.bus import kv
from proto import codec
from proto.common import ExtendedPublic
from proto.errors import ErrorCode, TransientError
from proto.hsm import HsmKey
from proto.keys import KeyRecord
from proto.subjects import KEYS_BUCKET

# Records change rarely (creation, replication); a short cache saves a KV round trip per sign.
CACHE_TTL_S = 1.0
_CAS_ATTEMPTS = 10


class KeyDirectory:
    def __init__(self, bucket: KeyValue) -> None:
        self._kv = bucket
        self._cache: dict[str, tuple[float, KeyRecord, int]] = {}

    @classmethod
    async def open(cls, js: JetStreamContext) -> KeyDirectory:
        return cls(await js.key_value(KEYS_BUCKET))

    async def get(self, key_id: str, *, fresh: bool = False) -> tuple[KeyRecord | None, int]:
        """The record and its revision (0 when absent)."""
        hit = self._cache.get(key_id)
        now = time.monotonic()
        if hit and not fresh and now - hit[0] < CACHE_TTL_S:
            return hit[1], hit[2]
        value, revision = await kv.read(self._kv, key_id)
        if value is None:
            self._cache.pop(key_id, None)
            return None, 0
        record = codec.KEY_RECORD.decode(value)
        self._cache[key_id] = (now, record, revision)
        return record, revision

    async def reserve(self, record: KeyRecord) -> bool:
        """Store a new ``pending`` record; False if the key id is already taken."""
        return await self._put(record, 0)

    async def activate(self, reserved: KeyRecord, revision: int, made: bytes | HsmKey) -> KeyRecord:
        """Turn the reservation into the active key (its public key, and what the node
        says of it: protection, an HD root's xpub); raises if it changed meanwhile."""
        if isinstance(made, HsmKey):
            active = msgspec.structs.replace(
                reserved,
                status="active",
                public_key=made.public_key,
                protection=made.protection,
                hss=reserved.authorization.hss if reserved.authorization else None,
                xpubs=[made.hd] if made.hd is not None else [],
            )
        else:
            active = msgspec.structs.replace(reserved, status="active", public_key=made)
        if not await self._put(active, revision):
            raise TransientError(
                ErrorCode.INTERNAL, f"key {reserved.key_id} changed while it was created"
            )
        return active

    async def release(self, key_id: str, revision: int) -> bool:
        """Remove a reservation nobody changed since ``revision``; False otherwise."""
        self._cache.pop(key_id, None)
        return await kv.delete(self._kv, key_id, revision)

    async def add_node(self, key_id: str, node: str) -> KeyRecord | None:
        """Record that ``node`` now holds the key (a verified clone); None if the key is gone."""
        return await self._update(
            key_id,
            lambda r: (
                None if node in r.nodes else msgspec.structs.replace(r, nodes=[*r.nodes, node])
            ),
        )

    async def add_backup_set(self, key_id: str, backup_set: str) -> KeyRecord | None:
        """Record that an offline backup set holds a verified copy; None if the key is gone."""
        return await self._update(
            key_id,
            lambda r: (
                None
                if backup_set in r.backup_sets
                else msgspec.structs.replace(r, backup_sets=[*r.backup_sets, backup_set])
            ),
        )

    async def add_xpub(self, key_id: str, extended: ExtendedPublic) -> KeyRecord | None:
        """Record an HD key's extended public key at one more path (a node derived it);
        None if the key is gone. Policy and signers derive non-hardened children below."""

        def add(r: KeyRecord) -> KeyRecord | None:
            if any(x.path == extended.path for x in r.xpubs):
                return None
            xpubs = sorted([*r.xpubs, extended], key=lambda x: (x.depth, x.path))
            return msgspec.structs.replace(r, xpubs=xpubs)

        return await self._update(key_id, add)

    async def _update(
        self, key_id: str, change: Callable[[KeyRecord], KeyRecord | None]
    ) -> KeyRecord | None:
        """Compare-and-set ``change`` (None: nothing to change) onto the freshest record."""
        for _ in range(_CAS_ATTEMPTS):
            current, revision = await self.get(key_id, fresh=True)
            if current is None:
                return None
            updated = change(current)
            if updated is None:
                return current
            if await self._put(updated, revision):
                return updated
        raise TransientError(ErrorCode.INTERNAL, f"key directory entry {key_id} kept changing")

    async def all(self) -> list[KeyRecord]:
        return [codec.KEY_RECORD.decode(value) for _, value, _ in await kv.values(self._kv)]

    async def _put(self, record: KeyRecord, revision: int) -> bool:
        written = await kv.write(self._kv, record.key_id, codec.encode(record), revision)
        self._cache.pop(record.key_id, None)
        return written is not None
