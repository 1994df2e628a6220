"""Merkle proofs as self-describing JSON documents with lower-case hex hashes.

What an auditor receives: an inclusion proof (a record is in a signed tree) or a
consistency proof (a signed tree is a prefix of a later one). The roots are not in the
documents on purpose: a verifier must take them from tree heads it checked the
signature of, never from the party that produced the proof.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from libs.audit import merkle
from proto import SCHEMA_VERSION
from proto.common import Version
from proto.errors import ErrorCode, LantauError

HexHash = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
TreeSize = Annotated[int, msgspec.Meta(ge=0)]


class InclusionProof(
    msgspec.Struct, frozen=True, kw_only=True, tag="merkle_inclusion_proof", tag_field="type"
):
    """Leaf ``leaf_index`` of the tree of ``tree_size`` leaves has hash ``leaf_hash``;
    ``path`` is RFC 9162's inclusion path, sibling nearest the leaf first."""

    leaf_index: TreeSize
    tree_size: TreeSize
    leaf_hash: HexHash
    path: tuple[HexHash, ...]
    v: Version = SCHEMA_VERSION


class ConsistencyProof(
    msgspec.Struct, frozen=True, kw_only=True, tag="merkle_consistency_proof", tag_field="type"
):
    """The tree of ``old_size`` leaves is a prefix of the tree of ``new_size`` leaves;
    ``path`` is RFC 9162's consistency path."""

    old_size: TreeSize
    new_size: TreeSize
    path: tuple[HexHash, ...]
    v: Version = SCHEMA_VERSION


MerkleProof = InclusionProof | ConsistencyProof

_DECODER = msgspec.json.Decoder(MerkleProof)


def prove_inclusion(
    index: int,
    size: int,
    leaf_hash_at: merkle.LeafHashAt,
    *,
    cache: merkle.SubtreeCache | None = None,
) -> InclusionProof:
    """The inclusion proof of leaf ``index`` in the tree of ``size`` leaves, as a document."""
    path = merkle.inclusion_proof(index, size, leaf_hash_at, cache=cache)
    return InclusionProof(
        leaf_index=index,
        tree_size=size,
        leaf_hash=leaf_hash_at(index).hex(),
        path=tuple(h.hex() for h in path),
    )


def prove_consistency(
    old_size: int,
    new_size: int,
    leaf_hash_at: merkle.LeafHashAt,
    *,
    cache: merkle.SubtreeCache | None = None,
) -> ConsistencyProof:
    """The consistency proof from ``old_size`` to ``new_size`` leaves, as a document."""
    path = merkle.consistency_proof(old_size, new_size, leaf_hash_at, cache=cache)
    return ConsistencyProof(old_size=old_size, new_size=new_size, path=tuple(h.hex() for h in path))


def encode(proof: MerkleProof) -> bytes:
    return msgspec.json.encode(proof)


def decode(data: bytes | str) -> MerkleProof:
    """Parse a proof document, refusing anything malformed with a typed error."""
    try:
        proof = _DECODER.decode(data)
    except msgspec.ValidationError as e:
        raise LantauError(ErrorCode.INVALID_FIELD, f"merkle proof: {e}") from None
    except msgspec.DecodeError as e:
        raise LantauError(ErrorCode.MALFORMED_MESSAGE, f"merkle proof is not JSON: {e}") from None
    if proof.v > SCHEMA_VERSION:
        raise LantauError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"merkle proof version {proof.v} is newer than this code ({SCHEMA_VERSION})",
        )
    return proof


def check_inclusion_proof(proof: InclusionProof, root: bytes) -> None:
    """Raise MERKLE_PROOF_REJECTED, saying why, unless the document proves its leaf is in
    the tree of its size with ``root`` (taken from a verified tree head)."""
    merkle.check_inclusion(
        _unhex(proof.leaf_hash), proof.leaf_index, proof.tree_size, _path(proof.path), root
    )


def check_consistency_proof(proof: ConsistencyProof, old_root: bytes, new_root: bytes) -> None:
    """Raise MERKLE_PROOF_REJECTED, saying why, unless the document proves the tree
    (old_size, old_root) is a prefix of the tree (new_size, new_root)."""
    merkle.check_consistency(proof.old_size, proof.new_size, old_root, new_root, _path(proof.path))


def _path(hashes: tuple[str, ...]) -> list[bytes]:
    return [_unhex(h) for h in hashes]


def _unhex(text: str) -> bytes:
    # A document built in code skips the decoder's pattern check.
    try:
        return bytes.fromhex(text)
    except (TypeError, ValueError):
        raise LantauError(
            ErrorCode.MERKLE_PROOF_REJECTED, "a proof hash is not hexadecimal"
        ) from None
