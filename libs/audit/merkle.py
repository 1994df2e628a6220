"""An append-only Merkle tree over audit records, as Certificate Transparency builds it.

RFC 9162 §2.1: leaves are hashed with a 0x00 prefix and interior nodes with 0x01, so
a leaf can never pass for a node. A signed tree head (size, root) commits to every
record below it; an inclusion proof shows one record is in it, and a consistency proof
shows a tree of one size is a prefix of a larger one: the log only grew.

Convention: every function here that takes leaves takes leaf *hashes* (``leaf_hash``
of the leaf's bytes), never the raw leaf data. Indexes are 0-based.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, MutableMapping, Sequence
from typing import Annotated, NoReturn

import msgspec

from proto.errors import ErrorCode, LantauError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
# Copying a primed hasher is about a fifth cheaper than building a new one per node,
# and proofs hash up to one node per leaf.
_NODE_HASHER = hashlib.sha256(b"\x01")

# Perfect subtrees of 2**CACHE_MIN_LEVEL leaves or more are worth caching across calls:
# about size / 2**(CACHE_MIN_LEVEL - 1) entries, and a warm cache leaves fewer than
# 2 * 2**CACHE_MIN_LEVEL leaves to hash per proof.
CACHE_MIN_LEVEL = 8

LeafHashAt = Callable[[int], bytes]
# (level, index) -> hash of the perfect subtree over leaves [index << level, (index + 1) << level).
SubtreeCache = MutableMapping[tuple[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash a leaf enters the tree with."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right) for two 32-byte child hashes."""
    _check_hash("left child hash", left)
    _check_hash("right child hash", right)
    return _node(left, right)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of a whole list of leaf hashes; SHA-256 of nothing for an empty tree."""
    if not leaf_hashes:
        return EMPTY_ROOT
    return _Subtrees(leaf_hashes.__getitem__, None).range_hash(0, len(leaf_hashes))


class Frontier(msgspec.Struct, frozen=True, kw_only=True):
    """The right edge of a tree of ``size`` leaves: O(log size) state to append and to
    compute the root without the leaves.

    ``hashes`` are the roots of the perfect subtrees that tile leaves [0, size), largest
    (leftmost) first: one per set bit of ``size``.
    """

    size: Annotated[int, msgspec.Meta(ge=0)] = 0
    hashes: tuple[Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)], ...] = ()

    def __post_init__(self) -> None:
        # Runs on decode too: a frontier read back from storage is checked as it loads.
        if not _is_int(self.size) or self.size < 0:
            _frontier_error(f"size must be a non-negative integer, not {self.size!r}")
        if len(self.hashes) != self.size.bit_count():
            _frontier_error(
                f"a tree of {self.size} leaves has {self.size.bit_count()} frontier hashes, "
                f"not {len(self.hashes)}"
            )
        for i, h in enumerate(self.hashes):
            if not _is_hash(h):
                _frontier_error(f"hash {i} is not a {HASH_SIZE}-byte hash")


def append(frontier: Frontier, leaf_hash: bytes) -> Frontier:
    """The frontier after appending one leaf hash."""
    _check_hash("leaf hash", leaf_hash)
    hashes, carry, size = list(frontier.hashes), leaf_hash, frontier.size
    # Like a binary increment: every trailing 1 bit is a perfect subtree the new leaf
    # completes, merged into the next bigger one.
    while size & 1:
        carry = _node(hashes.pop(), carry)
        size >>= 1
    hashes.append(carry)
    return Frontier(size=frontier.size + 1, hashes=tuple(hashes))


def frontier_root(frontier: Frontier) -> bytes:
    """The tree's root (MTH) from its frontier alone."""
    if not frontier.hashes:
        return EMPTY_ROOT
    r = frontier.hashes[-1]
    for h in reversed(frontier.hashes[:-1]):
        r = _node(h, r)
    return r


def frontier_at(
    size: int, leaf_hash_at: LeafHashAt, *, cache: SubtreeCache | None = None
) -> Frontier:
    """The frontier of the first ``size`` leaves, recomputed from the leaf hashes (to
    resume without a saved frontier, or to check a saved one against the log)."""
    _check_size("tree size", size)
    tree, hashes, start = _Subtrees(leaf_hash_at, cache), [], 0
    for level in reversed(range(size.bit_length())):
        if size >> level & 1:
            hashes.append(tree.perfect(level, start >> level))
            start += 1 << level
    return Frontier(size=size, hashes=tuple(hashes))


def inclusion_proof(
    index: int, size: int, leaf_hash_at: LeafHashAt, *, cache: SubtreeCache | None = None
) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1: the sibling hashes from the leaf up.

    ``leaf_hash_at(i)`` returns leaf hash i. ``cache``, shared between calls for one
    log, keeps big perfect subtrees so later proofs hash few leaves; without it a
    proof hashes every leaf but the one proven, once.
    """
    _check_size("tree size", size)
    _check_size("leaf index", index)
    if index >= size:
        raise LantauError(
            ErrorCode.MERKLE_OUT_OF_RANGE,
            f"leaf index {index} is not in a tree of {size} leaves",
        )
    return _Subtrees(leaf_hash_at, cache).path(index, 0, size)


def consistency_proof(
    old_size: int,
    new_size: int,
    leaf_hash_at: LeafHashAt,
    *,
    cache: SubtreeCache | None = None,
) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1: the hashes that show the
    first ``old_size`` leaves are a prefix of the first ``new_size``.

    Empty when old_size is 0 or equals new_size: there is nothing to prove.
    """
    _check_size("old tree size", old_size)
    _check_size("new tree size", new_size)
    if old_size > new_size:
        raise LantauError(
            ErrorCode.MERKLE_OUT_OF_RANGE,
            f"old tree size {old_size} is larger than new tree size {new_size}: "
            "a log never shrinks",
        )
    if old_size in (0, new_size):
        return []
    return _Subtrees(leaf_hash_at, cache).subproof(old_size, 0, new_size, True)


def check_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise MERKLE_PROOF_REJECTED, saying why, unless ``proof`` shows leaf ``index`` of
    the tree of ``size`` leaves with ``root`` is ``leaf_hash`` (RFC 9162 §2.1.3.2)."""
    if not _is_int(index) or not _is_int(size):
        _reject("the leaf index and tree size must be integers")
    if not 0 <= index < size:
        _reject(f"leaf index {index} is not in a tree of {size} leaves")
    _check_proof_hashes(leaf_hash=leaf_hash, root=root)
    path = _proof_hashes(proof)
    fn, sn, r = index, size - 1, leaf_hash
    for p in path:
        if sn == 0:
            _reject(f"the proof has more than the hashes a tree of {size} leaves needs")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        _reject(f"the proof has fewer than the hashes a tree of {size} leaves needs")
    if r != root:
        _reject(f"the proof does not lead from leaf {index} to the root given")


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """True if ``proof`` shows ``leaf_hash`` is leaf ``index`` of the tree (size, root)."""
    try:
        check_inclusion(leaf_hash, index, size, proof, root)
    except LantauError:
        return False
    return True


def check_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise MERKLE_PROOF_REJECTED, saying why, unless ``proof`` shows the tree
    (old_size, old_root) is a prefix of the tree (new_size, new_root) (RFC 9162 §2.1.4.2).

    The RFC covers 0 < old_size < new_size; here equal sizes need equal roots and an
    empty proof, and old size 0 needs the empty tree's root and an empty proof.
    """
    if not _is_int(old_size) or not _is_int(new_size):
        _reject("the tree sizes must be integers")
    if old_size < 0 or new_size < 0:
        _reject("tree sizes cannot be negative")
    if old_size > new_size:
        _reject(f"old tree size {old_size} is larger than new tree size {new_size}")
    _check_proof_hashes(old_root=old_root, new_root=new_root)
    path = _proof_hashes(proof)
    if old_size in (0, new_size):
        if path:
            _reject(f"a proof from size {old_size} to {new_size} has no hashes")
        if old_size == 0 and old_root != EMPTY_ROOT:
            _reject("the old root is not the empty tree's root")
        if old_size == new_size and old_root != new_root:
            _reject(f"two different roots for the same tree size {old_size}")
        return
    if not path:
        _reject(f"a proof from size {old_size} to {new_size} needs hashes")
    # An old tree that is one perfect subtree of the new tree is a node of it: the
    # proof leaves its hash out and the verifier starts from the old root.
    if old_size & (old_size - 1) == 0:
        path = [old_root, *path]
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            _reject(f"the proof has more than the hashes sizes {old_size}, {new_size} need")
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        _reject(f"the proof has fewer than the hashes sizes {old_size}, {new_size} need")
    if fr != old_root:
        _reject(
            f"the proof does not lead to the old root: the first {old_size} leaves "
            "are not what the old tree head signed"
        )
    if sr != new_root:
        _reject("the proof does not lead to the new root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True if ``proof`` shows the tree (old_size, old_root) is a prefix of the tree
    (new_size, new_root)."""
    try:
        check_consistency(old_size, new_size, old_root, new_root, proof)
    except LantauError:
        return False
    return True


class _Subtrees:
    """Hashes of the leaf ranges the RFC's recursions visit, computed from leaf hashes.

    Every range [lo, hi) those recursions produce starts at a multiple of the smallest
    power of two >= hi - lo, so it is a perfect subtree or splits into one plus a
    smaller such range. The ranges one proof needs are disjoint: each leaf is hashed at
    most once per call, so a per-call memo would hold nothing twice.
    """

    def __init__(self, leaf_hash_at: LeafHashAt, cache: SubtreeCache | None) -> None:
        self._leaf_hash_at = leaf_hash_at
        self._cache = cache

    def range_hash(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi])."""
        n = hi - lo
        if n & (n - 1) == 0:
            level = n.bit_length() - 1
            return self.perfect(level, lo >> level)
        k = _split(n)
        return _node(self.range_hash(lo, lo + k), self.range_hash(lo + k, hi))

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        """PATH(m, D[lo:hi])."""
        if hi - lo == 1:
            return []
        k = _split(hi - lo)
        if m < k:
            return [*self.path(m, lo, lo + k), self.range_hash(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.range_hash(lo, lo + k)]

    def subproof(self, m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        """SUBPROOF(m, D[lo:hi], complete)."""
        if m == hi - lo:
            return [] if complete else [self.range_hash(lo, hi)]
        k = _split(hi - lo)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, complete), self.range_hash(lo + k, hi)]
        return [*self.subproof(m - k, lo + k, hi, False), self.range_hash(lo, lo + k)]

    def perfect(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree of 2**level leaves starting at index << level."""
        if level < CACHE_MIN_LEVEL:
            return self._from_leaves(level, index)
        key = (level, index)
        if self._cache is not None:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
        # Recursing above CACHE_MIN_LEVEL also bounds memory: at most 2**CACHE_MIN_LEVEL
        # leaf hashes are held at once, whatever the tree's size.
        if level == CACHE_MIN_LEVEL:
            h = self._from_leaves(level, index)
        else:
            h = _node(self.perfect(level - 1, 2 * index), self.perfect(level - 1, 2 * index + 1))
        if self._cache is not None:
            self._cache[key] = h
        return h

    def _from_leaves(self, level: int, index: int) -> bytes:
        start, count = index << level, 1 << level
        try:
            hashes = list(map(self._leaf_hash_at, range(start, start + count)))
        except LookupError:
            raise LantauError(
                ErrorCode.MERKLE_OUT_OF_RANGE,
                f"no leaf hash for some index in {start}..{start + count - 1}: "
                "the log has fewer leaves than the tree size asked for",
            ) from None
        # Checked in bulk: a per-leaf Python check would cost as much as the hashing.
        if set(map(type, hashes)) != {bytes} or set(map(len, hashes)) != {HASH_SIZE}:
            raise LantauError(
                ErrorCode.MERKLE_BAD_HASH,
                f"a leaf hash in {start}..{start + count - 1} is not {HASH_SIZE} bytes",
            )
        copy = _NODE_HASHER.copy
        while len(hashes) > 1:
            pairs = iter(hashes)
            level_up = []
            for left, right in zip(pairs, pairs, strict=True):
                h = copy()
                h.update(left)
                h.update(right)
                level_up.append(h.digest())
            hashes = level_up
        return hashes[0]


def _node(left: bytes, right: bytes) -> bytes:
    h = _NODE_HASHER.copy()
    h.update(left)
    h.update(right)
    return h.digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2): the RFC's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _check_size(name: str, value: object) -> None:
    if not _is_int(value) or value < 0:  # type: ignore[operator]
        raise LantauError(
            ErrorCode.MERKLE_OUT_OF_RANGE, f"{name} must be a non-negative integer, not {value!r}"
        )


def _check_hash(name: str, value: object) -> None:
    if not _is_hash(value):
        raise LantauError(ErrorCode.MERKLE_BAD_HASH, f"{name} must be {HASH_SIZE} bytes")


def _check_proof_hashes(**named: object) -> None:
    for name, value in named.items():
        if not _is_hash(value):
            _reject(f"{name} is not a {HASH_SIZE}-byte hash")


def _proof_hashes(proof: object) -> list[bytes]:
    try:
        path = list(proof)  # type: ignore[call-overload]
    except TypeError:
        _reject("the proof is not a list of hashes")
    for i, h in enumerate(path):
        if not _is_hash(h):
            _reject(f"proof hash {i} is not a {HASH_SIZE}-byte hash")
    return path


def _reject(reason: str) -> NoReturn:
    raise LantauError(ErrorCode.MERKLE_PROOF_REJECTED, reason)


def _frontier_error(reason: str) -> NoReturn:
    raise LantauError(ErrorCode.MERKLE_BAD_FRONTIER, f"frontier: {reason}")
