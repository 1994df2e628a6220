"""Audit intents written before every HSM signature, and the audit log's entries.

The log (stream LANTAU_AUDIT_LOG) holds two kinds of entries in one total order:
records, each covering a batch of facts and signed by the audit service's record key,
and checkpoints: signed tree heads over the Merkle tree of the records, signed with a
key held in the HSMs. docs/audit.md describes the formats byte for byte.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from proto.base import Message
from proto.common import TimestampMs, whole

HexHash = Annotated[str, msgspec.Meta(pattern=whole("[0-9a-f]{64}"))]
# An Ed25519 public key, lower-case hex.
HexKey = Annotated[str, msgspec.Meta(pattern=whole("[0-9a-f]{64}"))]
Seq = Annotated[int, msgspec.Meta(ge=1)]
Count = Annotated[int, msgspec.Meta(ge=0)]
StreamName = Annotated[str, msgspec.Meta(pattern=whole("[A-Za-z0-9_-]{1,64}"))]


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


class AuditFact(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a source stream, as the audit service recorded it."""

    stream: StreamName
    seq: Seq
    # SHA-256 of the exact bytes of the message (its data, not its headers).
    sha256: HexHash
    # The message's type tag ("malformed" for bytes that are no message) and who caused it.
    event_type: str
    actor: str
    request_id: str | None = None


class FactGap(msgspec.Struct, frozen=True, kw_only=True):
    """Messages first..last of a source stream that were gone before they could be
    recorded: "expired" (older than the stream's first message: aged out) or "deleted"
    (inside the stream's range, yet absent)."""

    stream: StreamName
    first: Seq
    last: Seq
    reason: Literal["expired", "deleted"]


class SkippedRange(msgspec.Struct, frozen=True, kw_only=True):
    """Log sequences first..last the audit service found and did not accept."""

    first: Seq
    last: Seq


class AuditRecord(Message, tag="audit_record", frozen=True, kw_only=True):
    """A batch of facts, linked to the previous record and signed by the audit service.

    Within a record each stream's facts follow that stream's order; across the log every
    message of every source stream appears exactly once, or inside a gap.
    """

    seq: Seq
    at_ms: TimestampMs
    # The Ed25519 public key (hex) whose signature is in ``signature``.
    writer: HexKey
    prev_hash: HexHash
    facts: list[AuditFact] = []
    gaps: list[FactGap] = []
    # Log sequences the audit service found since the previous record and did not accept
    # (not an audit entry, not its signature, a replay...), as ranges.
    skipped: list[SkippedRange] = []
    # SHA-256 over the canonical bytes (docs/audit.md); "" while being built.
    hash: str = ""
    # Ed25519 over "lantau/audit-record-signature/v1\n" + the 32 bytes of ``hash``.
    signature: bytes = b""


class AuditCheckpoint(Message, tag="audit_checkpoint", frozen=True, kw_only=True):
    """A signed tree head: the Merkle tree of records 1..tree_size has ``root``.

    Signed with a secp256k1 key held in the HSMs (ECDSA over SHA-256 of the canonical
    bytes, low S). Auditors verify with a public key they obtained out of band, never
    with one read from the log.
    """

    tree_size: Count
    root: HexHash
    # The hash of record ``tree_size`` (the chain's head); the genesis hash for size 0.
    head_hash: HexHash
    # Per source stream, the last message recorded in records 1..tree_size.
    cursors: dict[str, int] = {}
    # The tree size of the checkpoint before this one (0 for the first).
    prev_tree_size: Count
    # The record key (Ed25519, hex) the audit service signed these records with.
    record_key: HexKey
    at_ms: TimestampMs
    key_id: str
    signature: bytes = b""


AuditEntry = AuditRecord | AuditCheckpoint


class WitnessStatus(Message, tag="audit_witness_status", frozen=True, kw_only=True):
    """Whether the newest checkpoint reached an independent sink: kept in the audit state
    bucket, read by every signer, which takes no order while ``witnessed`` is false."""

    witnessed: bool
    sinks_up: Count
    sinks_total: Count
    tree_size: Count
    writer: str
    reason: str = ""
    at_ms: TimestampMs
