"""Audit records: canonical bytes, hashes, the record key's signature. Pure.

record.hash = SHA-256("lantau/audit-record/v2\\n" + canonical bytes), where the canonical
bytes are the record as sorted-key JSON with ``hash`` and ``signature`` blank; each
record names the previous record's hash, so editing, deleting, inserting or reordering
any record breaks every link after it. The audit service signs the hash with its record
key (Ed25519): a record anyone else published does not verify and is never chained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from libs.audit import merkle
from proto.audit import AuditCheckpoint, AuditFact, AuditRecord, FactGap, SkippedRange

RECORD_DOMAIN = b"lantau/audit-record/v2\n"
SIGNATURE_DOMAIN = b"lantau/audit-record-signature/v1\n"
GENESIS_HASH = hashlib.sha256(b"lantau/audit-genesis/v1").hexdigest()


def content_hash(data: bytes) -> str:
    """SHA-256 (hex) of a fact's exact bytes."""
    return hashlib.sha256(data).hexdigest()


def canonical(entry: AuditRecord | AuditCheckpoint) -> bytes:
    """Sorted-key JSON of every field with the hash and signature blank: what is hashed."""
    if isinstance(entry, AuditRecord):
        entry = msgspec.structs.replace(entry, hash="", signature=b"")
    else:
        entry = msgspec.structs.replace(entry, signature=b"")
    return msgspec.json.encode(entry, order="sorted")


def record_hash(record: AuditRecord) -> str:
    return hashlib.sha256(RECORD_DOMAIN + canonical(record)).hexdigest()


def signed_message(record_hash_hex: str) -> bytes:
    """The bytes the record key signs: a domain tag and the record's 32-byte hash."""
    return SIGNATURE_DOMAIN + bytes.fromhex(record_hash_hex)


def leaf_hash(record: AuditRecord) -> bytes:
    """The record's leaf in the Merkle tree: SHA-256(0x00 || the 32 bytes of its hash)."""
    return merkle.leaf_hash(bytes.fromhex(record.hash))


class RecordKey:
    """The audit service's Ed25519 record key; the seed never leaves this object."""

    def __init__(self, seed: bytes) -> None:
        self._key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._key.public_key().public_bytes_raw()
        self.public_hex = self.public_key.hex()

    def __repr__(self) -> str:
        return f"RecordKey(public={self.public_hex})"

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def seal(record: AuditRecord, key: RecordKey) -> AuditRecord:
    """The record with its hash and the record key's signature filled in."""
    record = msgspec.structs.replace(record, writer=key.public_hex, hash="", signature=b"")
    digest = record_hash(record)
    return msgspec.structs.replace(record, hash=digest, signature=key.sign(signed_message(digest)))


def new_record(
    *,
    seq: int,
    prev_hash: str,
    at_ms: int,
    facts: Sequence[AuditFact],
    gaps: Sequence[FactGap] = (),
    skipped: Sequence[tuple[int, int]] = (),
    key: RecordKey,
) -> AuditRecord:
    """Build and seal the record that follows ``prev_hash``."""
    unsigned = AuditRecord(
        seq=seq,
        at_ms=at_ms,
        writer=key.public_hex,
        prev_hash=prev_hash,
        facts=list(facts),
        gaps=list(gaps),
        skipped=[SkippedRange(first=a, last=b) for a, b in skipped],
    )
    return seal(unsigned, key)


def signature_ok(record: AuditRecord) -> bool:
    """True if ``signature`` is the writer key's signature over the stored ``hash``
    (whether the content still matches that hash is a separate check)."""
    try:
        public = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(record.writer))
        public.verify(record.signature, signed_message(record.hash))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def ranges(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted [first, last] ranges covering exactly the given integers."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out
