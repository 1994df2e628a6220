"""Audit intents written before every HSM signature, and the hash-chained records."""

from __future__ import annotations

from proto.base import Message
from proto.common import TimestampMs


class AuditIntent(Message, tag="audit_intent", frozen=True, kw_only=True):
    """Durably stored before an HSM is asked to sign: no signature without its record.

    Published on the request's own subject, each attempt expecting the previous one as
    the subject's last message: two deliveries of one order (a restart, a second signer
    replica) can never both start an attempt the other does not see."""

    requester: str
    request_id: str
    key_id: str
    node: str
    payload_sha256: str
    attempt: int
    # Nodes asked by earlier attempts: their replay records hold any signature they made.
    earlier_nodes: list[str] = []
    actor: str
    at_ms: TimestampMs


class AuditRecord(Message, tag="audit_record", frozen=True, kw_only=True):
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


class AuditCheckpoint(Message, tag="audit_checkpoint", frozen=True, kw_only=True):
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


AuditEntry = AuditRecord | AuditCheckpoint
