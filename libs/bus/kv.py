"""JetStream KV state changed only by compare-and-set, so replicas and redeliveries never
overwrite each other."""

from __future__ import annotations

import nats.js.errors
from nats.js.kv import KeyValue


async def read(kv: KeyValue, key: str) -> tuple[bytes | None, int]:
    """Value and revision; revision 0 when the key does not exist (or was deleted)."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None, 0
    if entry.value is None:
        return None, 0
    return entry.value, entry.revision or 0


async def write(kv: KeyValue, key: str, value: bytes, revision: int) -> int | None:
    """Compare-and-set: the new revision, or None if someone else changed the key since
    ``revision`` (0: if it exists at all)."""
    try:
        if revision == 0:
            return await kv.create(key, value)
        return await kv.update(key, value, last=revision)
    except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
        return None


async def delete(kv: KeyValue, key: str, revision: int) -> bool:
    """Delete the key if nobody changed it since ``revision``."""
    try:
        await kv.delete(key, last=revision)
    except nats.js.errors.KeyWrongLastSequenceError:
        return False
    return True


async def keys(kv: KeyValue) -> list[str]:
    """Every live key of the bucket (none is an empty list, not an error)."""
    try:
        return list(await kv.keys())
    except nats.js.errors.NoKeysError:
        return []


async def values(kv: KeyValue) -> list[tuple[str, bytes, int]]:
    """(key, value, revision) of every live key."""
    found = []
    for key in await keys(kv):
        value, revision = await read(kv, key)
        if value is not None:
            found.append((key, value, revision))
    return found
