"""Proof documents an auditor can check alone: pure.

- consistency: the tree an earlier checkpoint signed is a prefix of the tree a later
  one signed (the log only grew): both checkpoints and the RFC 9162 consistency path.
- inclusion: a record (and so each fact in it) is in the tree a checkpoint signed: the
  record, the checkpoint and the RFC 9162 inclusion path.

The roots come from the checkpoints, whose signatures the checker verifies with keys it
pinned; nothing in a document is taken on the word of whoever sent it.
"""

from __future__ import annotations

import msgspec

from libs.audit import checkpoint as cp
from libs.audit import merkle_json, records
from libs.audit.trail import Trail
from proto import SCHEMA_VERSION
from proto.audit import AuditCheckpoint, AuditRecord
from proto.common import Version
from proto.errors import ErrorCode, LantauError


class AuditConsistency(
    msgspec.Struct, frozen=True, kw_only=True, tag="audit_consistency", tag_field="type"
):
    old: AuditCheckpoint
    new: AuditCheckpoint
    proof: merkle_json.ConsistencyProof
    v: Version = SCHEMA_VERSION


class AuditInclusion(
    msgspec.Struct, frozen=True, kw_only=True, tag="audit_inclusion", tag_field="type"
):
    record: AuditRecord
    checkpoint: AuditCheckpoint
    proof: merkle_json.InclusionProof
    v: Version = SCHEMA_VERSION


AuditProof = AuditConsistency | AuditInclusion
_decoder = msgspec.json.Decoder(AuditProof)


def consistency(trail: Trail, old: AuditCheckpoint, new: AuditCheckpoint) -> AuditConsistency:
    """The proof that ``old``'s tree is a prefix of ``new``'s, from a verified trail
    (kept leaves)."""
    proof = merkle_json.prove_consistency(old.tree_size, new.tree_size, trail.leaves.__getitem__)
    return AuditConsistency(old=old, new=new, proof=proof)


def inclusion(trail: Trail, record: AuditRecord, checkpoint: AuditCheckpoint) -> AuditInclusion:
    """The proof that ``record`` is in ``checkpoint``'s tree."""
    proof = merkle_json.prove_inclusion(
        record.seq - 1, checkpoint.tree_size, trail.leaves.__getitem__
    )
    return AuditInclusion(record=record, checkpoint=checkpoint, proof=proof)


def encode(doc: AuditProof) -> bytes:
    return msgspec.json.encode(doc)


def decode(data: bytes | str) -> AuditProof:
    try:
        return _decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise LantauError(ErrorCode.INVALID_FIELD, f"not an audit proof document: {e}") from None


def check(doc: AuditProof, checkpoint_keys: list[bytes], record_keys: set[bytes]) -> str:
    """Raise MERKLE_PROOF_REJECTED (or BAD_SIGNATURE), saying why, unless the document
    proves what it says; a sentence saying what it proved."""
    if isinstance(doc, AuditConsistency):
        for which, c in (("old", doc.old), ("new", doc.new)):
            _signed(which, c, checkpoint_keys)
        cproof = doc.proof
        if (cproof.old_size, cproof.new_size) != (doc.old.tree_size, doc.new.tree_size):
            _reject("the proof's sizes are not the checkpoints' tree sizes")
        merkle_json.check_consistency_proof(
            cproof, bytes.fromhex(doc.old.root), bytes.fromhex(doc.new.root)
        )
        return (
            f"the tree of {doc.old.tree_size} records is a prefix of the tree of "
            f"{doc.new.tree_size} records: the log only grew"
        )
    _signed("", doc.checkpoint, checkpoint_keys)
    r = doc.record
    if bytes.fromhex(r.writer) not in record_keys or not records.signature_ok(r):
        raise LantauError(
            ErrorCode.BAD_SIGNATURE, f"record {r.seq} is not signed by a pinned record key"
        )
    if records.record_hash(r) != r.hash:
        _reject(f"record {r.seq}: its content does not match its hash")
    p = doc.proof
    if p.leaf_index != r.seq - 1 or p.tree_size != doc.checkpoint.tree_size:
        _reject("the proof's leaf and tree size are not the record's and the checkpoint's")
    if p.leaf_hash != records.leaf_hash(r).hex():
        _reject("the proof's leaf hash is not the record's")
    merkle_json.check_inclusion_proof(p, bytes.fromhex(doc.checkpoint.root))
    return (
        f"record {r.seq} ({len(r.facts)} facts) is in the tree of {doc.checkpoint.tree_size} "
        "records the checkpoint signed"
    )


def _signed(which: str, c: AuditCheckpoint, keys: list[bytes]) -> None:
    if not cp.verify(c, keys):
        name = f"the {which} checkpoint" if which else "the checkpoint"
        raise LantauError(
            ErrorCode.BAD_SIGNATURE,
            f"{name} (tree size {c.tree_size}) is not signed by a trusted checkpoint key",
        )


def _reject(reason: str) -> None:
    raise LantauError(ErrorCode.MERKLE_PROOF_REJECTED, reason)
