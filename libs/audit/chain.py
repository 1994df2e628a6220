"""The audit hash chain: pure functions over AuditRecord.

record.hash = SHA-256("lantau/audit-record/v1\\n" + sorted-key JSON of every field but
``hash``), and each record names the previous record's hash, so editing, deleting,
inserting or reordering any record breaks every link after it.
"""

from __future__ import annotations

import hashlib

import msgspec

from proto.audit import AuditRecord

_RECORD_DOMAIN = b"lantau/audit-record/v1\n"
GENESIS_HASH = hashlib.sha256(b"lantau/audit-genesis/v1").hexdigest()


def genesis_hash() -> str:
    return GENESIS_HASH


def content_hash(raw_event: bytes) -> str:
    return hashlib.sha256(raw_event).hexdigest()


def record_hash(record: AuditRecord) -> str:
    body = msgspec.structs.replace(record, hash="")
    return hashlib.sha256(_RECORD_DOMAIN + msgspec.json.encode(body, order="sorted")).hexdigest()


def next_record(
    prev: AuditRecord | None,
    *,
    at_ms: int,
    actor: str,
    event_type: str,
    request_id: str | None,
    source: str,
    content_sha256: str,
) -> AuditRecord:
    record = AuditRecord(
        seq=1 if prev is None else prev.seq + 1,
        at_ms=at_ms,
        actor=actor,
        event_type=event_type,
        request_id=request_id,
        source=source,
        content_sha256=content_sha256,
        prev_hash=GENESIS_HASH if prev is None else prev.hash,
        hash="",
    )
    return msgspec.structs.replace(record, hash=record_hash(record))
