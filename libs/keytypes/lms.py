"""LMS/HSS (RFC 8554, NIST SP 800-208) signatures through pyhsslms, at caller-chosen indices.

A stateful hash-based key is a tree of one-time keys: signing twice with one index
breaks it. The hsm-node signs only at indices inside a range it has leased
(`lms_state`), so this module signs at a GIVEN global index and refuses any index
below one it has already passed.

Global index g of an HSS key with L levels of height h: the leaf used at level l is
(g >> (L-1-l)*h) mod 2^h. Level 0 (the top tree) comes from the sealed material;
every lower tree is generated in memory from the caller's random source (the token
RNG) when a signature first needs it, and is signed by its parent's leaf.

Why leases are whole top-level subtrees (`lease_alignment`): a lower tree is new
random material signed by one top-level leaf. Two nodes signing in the same subtree
would each make their own lower tree and sign it with the same top-level leaf: a
one-time key used twice. With leases aligned to 2^((L-1)h) indices, each top-level
leaf and everything below it belongs to exactly one lease on one node, so lower trees
never need to be shared or replicated, and a crash burns at most one subtree.

pyhsslms facts this relies on (read in its source, 2.0.0): `LmsPrivateKey(SEED, I, q)`
rebuilds a tree from SEED and I and takes the next leaf q, and signs leaf q then
moves to q+1; `HssPrivateKey(prvs=..., sigs=...)` assembles the RFC 8554 HSS
signature from trees we built. The LM-OTS randomizer C comes from Python's `secrets`
inside pyhsslms (not injectable); it is public, not key material.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pyhsslms

from proto.errors import ErrorCode, LantauError

SEED_LEN = 32  # SHA-256/M32 parameter sets only
I_LEN = 16
MATERIAL_LEN = SEED_LEN + I_LEN  # the top tree's SEED || I: what gets sealed

_LMS_TYPES = {
    5: pyhsslms.lms_sha256_m32_h5,
    10: pyhsslms.lms_sha256_m32_h10,
    15: pyhsslms.lms_sha256_m32_h15,
    20: pyhsslms.lms_sha256_m32_h20,
    25: pyhsslms.lms_sha256_m32_h25,
}
_LMOTS_TYPES = {
    1: pyhsslms.lmots_sha256_n32_w1,
    2: pyhsslms.lmots_sha256_n32_w2,
    4: pyhsslms.lmots_sha256_n32_w4,
    8: pyhsslms.lmots_sha256_n32_w8,
}
_MAX_LEVELS = 8  # RFC 8554

RandomSource = Callable[[int], bytes | bytearray]


class HssParameters(msgspec.Struct, frozen=True, kw_only=True):
    """Shape of an HSS key: every level uses LMS_SHA256_M32_H<height> / LMOTS_SHA256_N32_W<w>."""

    levels: int = 2
    height: int = 5
    winternitz: int = 8

    def check(self) -> None:
        """Refuse shapes RFC 8554 (or pyhsslms) does not define."""
        if not 1 <= self.levels <= _MAX_LEVELS:
            raise LantauError(
                ErrorCode.INVALID_FIELD, f"HSS levels must be 1..{_MAX_LEVELS}, got {self.levels}"
            )
        if self.height not in _LMS_TYPES:
            raise LantauError(
                ErrorCode.INVALID_FIELD,
                f"LMS tree height must be one of {sorted(_LMS_TYPES)}, got {self.height}",
            )
        if self.winternitz not in _LMOTS_TYPES:
            raise LantauError(
                ErrorCode.INVALID_FIELD,
                f"LM-OTS Winternitz parameter must be one of {sorted(_LMOTS_TYPES)}, "
                f"got {self.winternitz}",
            )


def total_signatures(params: HssParameters) -> int:
    """How many signatures the key allows: 2^(levels * height)."""
    params.check()
    return 1 << (params.levels * params.height)


def lease_alignment(params: HssParameters) -> int:
    """Lease boundaries fall on multiples of this: one top-level leaf's whole subtree."""
    params.check()
    return 1 << ((params.levels - 1) * params.height)


def public_key(params: HssParameters, material: bytes | bytearray) -> bytes:
    """The HSS public key (u32 levels || top LMS public key) of sealed material SEED || I."""
    return _hss_public(params, _top_tree(params, material, 0))


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid HSS signature of ``message`` (pyhsslms verify)."""
    try:
        key = pyhsslms.HssPublicKey.deserialize(public)
        if not 1 <= key.levels <= _MAX_LEVELS:
            raise ValueError(key.levels)
    except (ValueError, IndexError, KeyError):
        raise LantauError(ErrorCode.INVALID_FIELD, "not an HSS/LMS public key") from None
    try:
        return bool(key.verify(message, signature))
    except Exception:  # pyhsslms raises assorted errors on malformed signatures
        return False


class HssSigner:
    """Signs with the one-time keys of one lease [start, end), in increasing index order.

    Holds the top tree and the lower trees it generates in memory for the lease's
    life; a new process or node never resumes a lease: it leases afresh.
    """

    def __init__(
        self,
        params: HssParameters,
        material: bytes | bytearray,
        start: int,
        end: int,
        random_source: RandomSource,
    ) -> None:
        params.check()
        total, align = total_signatures(params), lease_alignment(params)
        if not 0 <= start < end <= total:
            raise LantauError(
                ErrorCode.INVALID_FIELD, f"lease [{start}, {end}) is not inside [0, {total})"
            )
        if start % align or (end % align and end != total):
            raise LantauError(
                ErrorCode.INVALID_FIELD,
                f"lease [{start}, {end}) does not fall on whole top-level subtrees of {align}",
            )
        self.params, self.start, self.end = params, start, end
        self._next = start
        self._random = random_source
        self._lms_type = _LMS_TYPES[params.height]
        self._lmots_type = _LMOTS_TYPES[params.winternitz]
        self._top = _top_tree(params, material, self._leaf(start, 0))
        # _trees[l] for l >= 1: (tree, the parent leaf that signed it, that signature)
        self._trees: list[tuple[Any, int, bytes] | None] = [None] * params.levels

    @property
    def next_index(self) -> int:
        """The lowest index this signer may still use."""
        return self._next

    def remaining(self) -> int:
        """Signatures left in this lease."""
        return self.end - self._next

    def sign(self, index: int, message: bytes) -> bytes:
        """Sign at global ``index``: inside the lease and not below any index already passed.

        Indices skipped on the way are burnt, never used later.
        """
        if not self.start <= index < self.end:
            raise LantauError(
                ErrorCode.INDEX_NOT_LEASED,
                f"index {index} is outside this node's lease [{self.start}, {self.end})",
            )
        if index < self._next:
            raise LantauError(
                ErrorCode.ONE_TIME_INDEX_USED,
                f"index {index} is below {self._next}: one-time keys are never used twice",
            )
        # Consume the index before any one-time key signs, so that a failure half-way
        # can only burn indices, never repeat them.
        self._next = index + 1
        levels = self.params.levels
        leaves = [self._leaf(index, level) for level in range(levels)]
        prvs = [self._top]
        sigs: list[bytes] = []
        rebuilt = False
        for level in range(1, levels):
            current = self._trees[level]
            if rebuilt or current is None or current[1] != leaves[level - 1]:
                current = self._new_child(prvs[-1], leaves[level - 1])
                self._trees[level] = current
                rebuilt = True
            prvs.append(current[0])
            sigs.append(current[2])
        _advance(prvs[-1], leaves[-1])
        hss = pyhsslms.HssPrivateKey(
            levels=levels,
            lms_type=self._lms_type,
            lmots_type=self._lmots_type,
            remaining_signatures=1,
            prvs=list(prvs),
            sigs=list(sigs),
        )
        signature = bytes(hss.sign(message))
        if signature_leaves(signature) != leaves:
            raise LantauError(ErrorCode.INTERNAL, f"signature for index {index} used other leaves")
        return signature

    def _new_child(self, parent: Any, parent_leaf: int) -> tuple[Any, int, bytes]:
        seed, ident = bytes(self._random(SEED_LEN)), bytes(self._random(I_LEN))
        if len(seed) != SEED_LEN or len(ident) != I_LEN:
            raise LantauError(ErrorCode.INTERNAL, "random source returned the wrong length")
        child = pyhsslms.LmsPrivateKey(
            lms_type=self._lms_type, lmots_type=self._lmots_type, SEED=seed, I=ident
        )
        _advance(parent, parent_leaf)
        return child, parent_leaf, bytes(parent.sign(child.publicKey().serialize()))

    def _leaf(self, index: int, level: int) -> int:
        h = self.params.height
        return (index >> ((self.params.levels - 1 - level) * h)) & ((1 << h) - 1)


def signature_leaves(signature: bytes) -> list[int]:
    """The leaf index used at each level, top first, read from an HSS signature."""
    parsed = pyhsslms.HssSignature.deserialize(signature)
    return [s.q for s in parsed.sig] + [parsed.lms_sig.q]


def signature_index(params: HssParameters, signature: bytes) -> int:
    """The global one-time index a signature used (its leaves, top first, as one number)."""
    index = 0
    for leaf in signature_leaves(signature):
        index = (index << params.height) | leaf
    return index


def one_time_keys(public: bytes, signature: bytes) -> list[tuple[bytes, int, bytes]]:
    """Each one-time key a signature used, as (tree identifier I, leaf q, the LM-OTS
    signature it made), top level first: a one-time key must never make two different
    LM-OTS signatures, whichever node, copy or restart made them."""
    top = pyhsslms.HssPublicKey.deserialize(public).pub
    parsed = pyhsslms.HssSignature.deserialize(signature)
    identities = [top.I] + [p.I for p in parsed.pub]
    return [
        (bytes(ident), int(s.q), bytes(pyhsslms.LmotsSignature.serialize(s.lmots_sig)))
        for ident, s in zip(identities, [*parsed.sig, parsed.lms_sig], strict=True)
    ]


def _advance(tree: Any, leaf: int) -> None:
    """Move a tree's next leaf forward to ``leaf``; never backwards."""
    if leaf < tree.q:
        raise LantauError(
            ErrorCode.ONE_TIME_INDEX_USED,
            f"leaf {leaf} of an LMS tree is already used (next is {tree.q})",
        )
    tree.q = leaf


def _top_tree(params: HssParameters, material: bytes | bytearray, leaf: int) -> Any:
    params.check()
    if len(material) != MATERIAL_LEN:
        raise LantauError(
            ErrorCode.INVALID_SEED,
            f"HSS material is SEED || I, {MATERIAL_LEN} bytes, got {len(material)}",
        )
    return pyhsslms.LmsPrivateKey(
        lms_type=_LMS_TYPES[params.height],
        lmots_type=_LMOTS_TYPES[params.winternitz],
        SEED=bytes(material[:SEED_LEN]),
        I=bytes(material[SEED_LEN:]),
        q=leaf,
    )


def _hss_public(params: HssParameters, top: Any) -> bytes:
    return bytes(pyhsslms.HssPublicKey(top.publicKey(), params.levels).serialize())
