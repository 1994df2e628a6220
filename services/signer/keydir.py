"""The key directory in JetStream KV: which key, which curve, on which HSM nodes.

Every change is a compare-and-set on the entry's revision, so concurrent signers
and backup replicas never overwrite each other.
"""

from __future__ import annotations

import time

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from proto import codec
from proto.keys import KeyRecord
from proto.subjects import KEYS_BUCKET

# Records change rarely (creation, replication); a short cache saves a KV round trip per sign.
CACHE_TTL_S = 1.0


class KeyDirectory:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._cache: dict[str, tuple[float, KeyRecord | None, int]] = {}

    @classmethod
    async def open(cls, js: JetStreamContext) -> KeyDirectory:
        return cls(await js.key_value(KEYS_BUCKET))

    async def get(self, key_id: str, *, fresh: bool = False) -> tuple[KeyRecord | None, int]:
        """The record and its revision (0 when absent)."""
        hit = self._cache.get(key_id)
        now = time.monotonic()
        if hit and not fresh and now - hit[0] < CACHE_TTL_S and hit[1] is not None:
            return hit[1], hit[2]
        try:
            entry = await self._kv.get(key_id)
        except nats.js.errors.KeyNotFoundError:
            return None, 0
        if entry.value is None:
            return None, 0
        record = codec.KEY_RECORD.decode(entry.value)
        revision = entry.revision or 0
        self._cache[key_id] = (now, record, revision)
        return record, revision

    async def create(self, record: KeyRecord) -> bool:
        """Store a new record; False if the key id is already taken."""
        try:
            await self._kv.create(record.key_id, codec.encode(record))
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        self._cache.pop(record.key_id, None)
        return True

    async def update(self, record: KeyRecord, revision: int) -> bool:
        """Replace the record if nobody changed it since ``revision``."""
        try:
            await self._kv.update(record.key_id, codec.encode(record), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        self._cache.pop(record.key_id, None)
        return True

    async def release(self, key_id: str, revision: int) -> bool:
        """Remove a reservation nobody changed since ``revision``; False otherwise."""
        try:
            await self._kv.delete(key_id, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        self._cache.pop(key_id, None)
        return True

    async def all(self) -> list[KeyRecord]:
        try:
            keys = await self._kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        records = []
        for key in keys:
            record, _ = await self.get(key, fresh=True)
            if record is not None:
                records.append(record)
        return records
