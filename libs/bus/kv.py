"""JetStream KV state changed only by compare-and-set, so replicas and redeliveries never
overwrite each other. Reads are direct gets and writes per-key publishes, so that the bus
can allow an identity some keys only; a refused one raises PERMISSION_DENIED."""

from __future__ import annotations

import nats.js.errors
from nats.aio.client import Client
from nats.js.kv import KeyValue

from libs.bus.publish import until_stored
from libs.bus.violations import guarded
from proto.subjects import js_direct_get, kv_key_subject, kv_stream


def _nc(kv: KeyValue) -> Client:
    return kv._js._nc  # nats-py keeps no public handle to the connection


def _name(kv: KeyValue) -> str:
    return str(kv._name)


async def read(kv: KeyValue, key: str) -> tuple[bytes | None, int]:
    """Value and revision; revision 0 when the key does not exist (or was deleted)."""
    bucket = _name(kv)
    subject = js_direct_get(kv_stream(bucket), kv_key_subject(bucket, key))
    try:
        entry = await guarded(_nc(kv), subject, kv.get(key))
    except nats.js.errors.KeyNotFoundError:
        return None, 0
    if entry.value is None:
        return None, 0
    return entry.value, entry.revision or 0


async def write(kv: KeyValue, key: str, value: bytes, revision: int) -> int | None:
    """Compare-and-set: the new revision, or None if someone else changed the key since
    ``revision`` (0: if it exists at all). Tried again while the bucket has no leader to
    take it (a NATS server lost): such a try changed nothing."""
    subject = kv_key_subject(_name(kv), key)

    async def once() -> int:
        if revision == 0:
            return await guarded(_nc(kv), subject, kv.create(key, value))
        return await guarded(_nc(kv), subject, kv.update(key, value, last=revision))

    try:
        return await until_stored(once)
    except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
        return None


async def delete(kv: KeyValue, key: str, revision: int) -> bool:
    """Delete the key if nobody changed it since ``revision``."""
    try:
        await guarded(_nc(kv), kv_key_subject(_name(kv), key), kv.delete(key, last=revision))
    except nats.js.errors.KeyWrongLastSequenceError:
        return False
    return True


async def keys(kv: KeyValue, under: str | None = None) -> list[str]:
    """Keys that have or had a value (deleted keys too: ``values`` skips them), all or
    those below ``under`` (``<under>.<rest>``).

    Listed from the stream's per-subject counts (stream info), not by a consumer: no
    reader of a bucket needs the right to create consumers."""
    bucket = _name(kv)
    pattern = kv_key_subject(bucket, f"{under}.>" if under else ">")
    info = await kv._js.stream_info(kv_stream(bucket), subjects_filter=pattern)
    prefix = kv_key_subject(bucket, "")
    return sorted(s[len(prefix) :] for s in (info.state.subjects or {}))


async def values(kv: KeyValue, under: str | None = None) -> list[tuple[str, bytes, int]]:
    """(key, value, revision) of every live key (below ``under`` when given)."""
    found = []
    for key in await keys(kv, under):
        value, revision = await read(kv, key)
        if value is not None:
            found.append((key, value, revision))
    return found
