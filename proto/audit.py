"""Audit intents written before every HSM signature, and the hash-chained records."""

from __future__ import annotations

import msgspec

from proto import SCHEMA_VERSION
from proto.common import TimestampMs, Version


class AuditIntent(msgspec.Struct, frozen=True, kw_only=True, tag="audit_intent", tag_field="type"):
    """Durably stored before an HSM is asked to sign: no signature without its record."""

    request_id: str
    key_id: str
    node: str
    payload_sha256: str
    attempt: int
    actor: str
    at_ms: TimestampMs
    v: Version = SCHEMA_VERSION


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True, tag="audit_record", tag_field="type"):
    seq: int
    at_ms: TimestampMs
    actor: str
    event_type: str
    request_id: str | None = None
    # Where the event came from: "<stream>:<stream sequence>", unique per record.
    source: str
    content_sha256: str
    prev_hash: str
    hash: str
    v: Version = SCHEMA_VERSION


class AuditCheckpoint(
    msgspec.Struct, frozen=True, kw_only=True, tag="audit_checkpoint", tag_field="type"
):
    """A signature over the chain's head: record ``seq`` has hash ``head_hash``.

    Signed with a secp256k1 key held in the HSMs (ECDSA over SHA-256 of the canonical
    bytes, low S). Auditors verify with a public key they obtained out of band, never
    with one read from the log.
    """

    seq: int
    head_hash: str
    at_ms: TimestampMs
    prev_checkpoint_seq: int
    key_id: str
    signature: bytes = b""
    v: Version = SCHEMA_VERSION


AuditEntry = AuditRecord | AuditCheckpoint
