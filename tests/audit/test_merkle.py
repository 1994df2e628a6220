"""The Merkle tree under the audit log: published answers, an independent reference
built straight from RFC 9162's definitions, and tampering that must be caught."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.audit import merkle
from libs.audit.merkle import Frontier
from proto.errors import ErrorCode, LantauError

# --- Published answers -----------------------------------------------------------------
# The RFC 6962 reference tree of 8 leaves, first published in google/certificate-
# transparency's merkle_tree_test.cc and kept in transparency-dev/merkle:
# testonly/constants.go (LeafInputs, RootHashes, CompactTrees via NodeHashes) and
# proof/verify_test.go (inclusionProofs, consistencyProofs). That file numbers leaves
# from 1; the indexes below are 0-based.

RFC_LEAVES = [
    bytes.fromhex(x)
    for x in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
RFC_ROOTS = [  # by tree size 0..8
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
RFC_NODES = [  # NodeHashes: [level][index] of every perfect subtree
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]
# CompactTrees: the frontier of each tree size, as (level, index) into RFC_NODES.
RFC_FRONTIERS = [
    [],
    [(0, 0)],
    [(1, 0)],
    [(1, 0), (0, 2)],
    [(2, 0)],
    [(2, 0), (0, 4)],
    [(2, 0), (1, 2)],
    [(2, 0), (1, 2), (0, 6)],
    [(3, 0)],
]
RFC_INCLUSION = [  # (index, size, path)
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
RFC_CONSISTENCY = [  # (old size, new size, path)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
# verify_test.go's sha256SomeHash: a well-formed hash of nothing in particular.
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

RFC_HASHES = [merkle.leaf_hash(d) for d in RFC_LEAVES]


def unhex(hashes: list[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in hashes]


def rfc_root(size: int) -> bytes:
    return bytes.fromhex(RFC_ROOTS[size])


# --- An independent reference: RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1 word for word -------
# Over the raw leaf data, with its own hashing and list slicing: slow and obvious.


def ref_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def ref_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def ref_k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return ref_leaf(d[0])
    k = ref_k(len(d))
    return ref_node(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = ref_k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = ref_k(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True) if 0 < m < len(d) else []


# Reference verifiers: undo the recursions above instead of running the RFC's iterative
# algorithms, so the two can disagree if either is wrong.


class _Short(Exception):
    pass


def ref_inclusion_ok(leaf: bytes, m: int, n: int, proof: list[bytes], root: bytes) -> bool:
    if not 0 <= m < n:
        return False
    path = list(proof)

    def up(m: int, n: int) -> bytes:
        if n == 1:
            return leaf
        if not path:
            raise _Short
        sibling, k = path.pop(), ref_k(n)
        if m < k:
            return ref_node(up(m, k), sibling)
        return ref_node(sibling, up(m - k, n - k))

    try:
        got = up(m, n)
    except _Short:
        return False
    return not path and got == root


def ref_consistency_ok(m: int, n: int, old: bytes, new: bytes, proof: list[bytes]) -> bool:
    if not 0 <= m <= n:
        return False
    if m in (0, n):
        return not proof and old == (ref_mth([]) if m == 0 else new)
    path = list(proof)

    def sub(m: int, n: int, b: bool) -> tuple[bytes, bytes]:
        if m == n:
            if b:
                return old, old
            if not path:
                raise _Short
            h = path.pop()
            return h, h
        if not path:
            raise _Short
        sibling, k = path.pop(), ref_k(n)
        if m <= k:
            o, s = sub(m, k, b)
            return o, ref_node(s, sibling)
        o, s = sub(m - k, n - k, False)
        return ref_node(sibling, o), ref_node(sibling, s)

    try:
        got_old, got_new = sub(m, n, True)
    except _Short:
        return False
    return not path and got_old == old and got_new == new


# --- Known answers ------------------------------------------------------------------------


def test_hashes_follow_rfc_6962_known_answers():
    assert merkle.EMPTY_ROOT.hex() == RFC_ROOTS[0]
    assert [h.hex() for h in RFC_HASHES] == RFC_NODES[0]
    assert merkle.node_hash(RFC_HASHES[0], RFC_HASHES[1]).hex() == RFC_NODES[1][0]
    for size in range(9):
        assert merkle.root(RFC_HASHES[:size]) == rfc_root(size)


def test_the_frontier_matches_the_published_compact_trees():
    frontier = Frontier()
    for size in range(9):
        want = [RFC_NODES[level][index] for level, index in RFC_FRONTIERS[size]]
        assert [h.hex() for h in frontier.hashes] == want
        assert merkle.frontier_root(frontier) == rfc_root(size)
        assert merkle.frontier_at(size, RFC_HASHES.__getitem__) == frontier
        if size < 8:
            frontier = merkle.append(frontier, RFC_HASHES[size])


@pytest.mark.parametrize(("index", "size", "path"), RFC_INCLUSION)
def test_published_inclusion_proofs(index, size, path):
    proof = merkle.inclusion_proof(index, size, RFC_HASHES.__getitem__)
    assert proof == unhex(path)
    leaf, root = RFC_HASHES[index], rfc_root(size)
    assert merkle.verify_inclusion(leaf, index, size, proof, root)
    # verify_test.go's corruptInclusionProof: every probe must fail.
    probes = [
        (leaf, index - 1, size, proof, root),
        (leaf, index + 1, size, proof, root),
        (leaf, index ^ 2, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (leaf, index, size // 2, proof, root),
        (b"WrongLeaf", index, size, proof, root),
        (SOME_HASH, index, size, proof, root),
        (leaf, index, size, proof, merkle.EMPTY_ROOT),
        (leaf, index, size, proof, SOME_HASH),
        (leaf, index, size, [*proof, b""], root),
        (leaf, index, size, [*proof, root], root),
        (leaf, index, size, [b"", *proof], root),
        (leaf, index, size, [root, *proof], root),
    ]
    if proof:
        probes.append((leaf, index, size, proof[:-1], root))
    if len(proof) > 1:
        probes.append((leaf, index, size, [proof[0], SOME_HASH, *proof[1:]], root))
    for i in range(len(proof)):
        for bit in range(8):
            probes.append((leaf, index, size, flip(proof, i, 0, bit), root))
    for probe in probes:
        assert not merkle.verify_inclusion(*probe), probe


@pytest.mark.parametrize(("old", "new", "path"), RFC_CONSISTENCY)
def test_published_consistency_proofs(old, new, path):
    proof = merkle.consistency_proof(old, new, RFC_HASHES.__getitem__)
    assert proof == unhex(path)
    r1, r2 = rfc_root(old), rfc_root(new)
    assert merkle.verify_consistency(old, new, r1, r2, proof)
    if not proof:
        return
    # verify_test.go's corruptConsistencyProof: every probe must fail.
    probes = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, b"WrongRoot", r2, proof),
        (old, new, r1, b"WrongRoot", proof),
        (old, new, SOME_HASH, r2, proof),
        (old, new, r1, SOME_HASH, proof),
        (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, b""]),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [*proof, r2]),
        (old, new, r1, r2, [b"", *proof]),
        (old, new, r1, r2, [r1, *proof]),
        (old, new, r1, r2, [r2, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        for bit in range(8):
            probes.append((old, new, r1, r2, flip(proof, i, 0, bit)))
    for probe in probes:
        assert not merkle.verify_consistency(*probe), probe


def test_trivial_consistency_needs_an_empty_proof_and_matching_roots():
    empty, r1, r8 = merkle.EMPTY_ROOT, rfc_root(1), rfc_root(8)
    assert merkle.verify_consistency(0, 0, empty, empty, [])
    assert merkle.verify_consistency(0, 8, empty, r8, [])
    assert merkle.verify_consistency(8, 8, r8, r8, [])
    # Same size, other root: the log was rebuilt.
    assert not merkle.verify_consistency(8, 8, r8, SOME_HASH, [])
    assert not merkle.verify_consistency(1, 1, r1, r8, [])
    # A size-0 tree head that is not the empty root is a lie.
    assert not merkle.verify_consistency(0, 8, SOME_HASH, r8, [])
    assert not merkle.verify_consistency(0, 0, empty, SOME_HASH, [])
    # Roots match but a proof is attached: refused, as verify_test.go does.
    assert not merkle.verify_consistency(0, 0, empty, empty, [empty])
    assert not merkle.verify_consistency(0, 8, empty, r8, [empty])
    assert not merkle.verify_consistency(8, 8, r8, r8, [empty])
    # Time travel and a missing proof.
    assert not merkle.verify_consistency(1, 0, r1, empty, [])
    assert not merkle.verify_consistency(2, 1, rfc_root(2), r1, [])
    assert not merkle.verify_consistency(1, 2, r1, rfc_root(2), [])


def test_inclusion_in_a_one_leaf_tree():
    h = merkle.leaf_hash(b"data")
    assert merkle.verify_inclusion(h, 0, 1, [], h)
    assert not merkle.verify_inclusion(h, 0, 1, [], b"")
    assert not merkle.verify_inclusion(b"", 0, 1, [], h)
    for index, size in [(0, 0), (1, 0), (1, 1), (2, 1), (-1, 1)]:
        assert not merkle.verify_inclusion(h, index, size, [], h)


# --- Against the reference, exhaustively for small trees --------------------------------

SMALL = [f"record {i}".encode() for i in range(33)]
SMALL_HASHES = [merkle.leaf_hash(d) for d in SMALL]


def test_small_trees_match_the_reference_exhaustively():
    at = SMALL_HASHES.__getitem__
    for n in range(1, len(SMALL) + 1):
        d = SMALL[:n]
        r = ref_mth(d)
        assert merkle.root(SMALL_HASHES[:n]) == r
        for i in range(n):
            proof = merkle.inclusion_proof(i, n, at)
            assert proof == ref_path(i, d)
            assert merkle.verify_inclusion(SMALL_HASHES[i], i, n, proof, r)
            assert ref_inclusion_ok(SMALL_HASHES[i], i, n, proof, r)
        for m in range(n + 1):
            proof = merkle.consistency_proof(m, n, at)
            assert proof == ref_proof(m, d)
            old = ref_mth(d[:m])
            assert merkle.verify_consistency(m, n, old, r, proof)
            assert ref_consistency_ok(m, n, old, r, proof)


# --- Properties on random logs ------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=300)
salts = st.binary(max_size=8)


def log_of(size: int, salt: bytes) -> list[bytes]:
    """Distinct leaves, so swapping two of them is a real change."""
    return [salt + b"/" + i.to_bytes(4, "big") for i in range(size)]


def prefix_roots(hashes: list[bytes]) -> list[bytes]:
    frontier, roots = Frontier(), [merkle.EMPTY_ROOT]
    for h in hashes:
        frontier = merkle.append(frontier, h)
        roots.append(merkle.frontier_root(frontier))
    return roots


@settings(max_examples=60, deadline=None)
@given(size=sizes, salt=salts, data=st.data())
def test_the_frontier_gives_the_root_of_every_prefix(size, salt, data):
    d = log_of(size, salt)
    hashes = [merkle.leaf_hash(x) for x in d]
    frontier = Frontier()
    for k in range(1, size + 1):
        frontier = merkle.append(frontier, hashes[k - 1])
        assert merkle.frontier_root(frontier) == merkle.root(hashes[:k])
    assert merkle.root(hashes) == ref_mth(d)
    k = data.draw(st.integers(min_value=0, max_value=size), label="prefix")
    assert merkle.root(hashes[:k]) == ref_mth(d[:k])
    assert merkle.frontier_at(size, hashes.__getitem__) == frontier
    # What the service saves and reads back is the same frontier.
    again = msgspec.msgpack.decode(msgspec.msgpack.encode(frontier), type=Frontier)
    assert again == frontier


@settings(max_examples=40, deadline=None)
@given(size=sizes, salt=salts, data=st.data())
def test_every_inclusion_proof_verifies(size, salt, data):
    d = log_of(size, salt)
    hashes = [merkle.leaf_hash(x) for x in d]
    root = merkle.root(hashes)
    for i in range(size):
        proof = merkle.inclusion_proof(i, size, hashes.__getitem__)
        assert merkle.verify_inclusion(hashes[i], i, size, proof, root)
        assert ref_inclusion_ok(hashes[i], i, size, proof, root)
    for i in data.draw(st.lists(st.integers(0, size - 1), max_size=3), label="indexes"):
        assert merkle.inclusion_proof(i, size, hashes.__getitem__) == ref_path(i, d)


@settings(max_examples=40, deadline=None)
@given(size=sizes, salt=salts, data=st.data())
def test_every_consistency_proof_verifies(size, salt, data):
    d = log_of(size, salt)
    hashes = [merkle.leaf_hash(x) for x in d]
    roots = prefix_roots(hashes)
    for m in range(size + 1):
        proof = merkle.consistency_proof(m, size, hashes.__getitem__)
        assert merkle.verify_consistency(m, size, roots[m], roots[size], proof)
        assert ref_consistency_ok(m, size, roots[m], roots[size], proof)
    for m in data.draw(st.lists(st.integers(0, size), max_size=3), label="old sizes"):
        assert merkle.consistency_proof(m, size, hashes.__getitem__) == ref_proof(m, d)


def flip(proof: list[bytes], i: int, byte: int, bit: int) -> list[bytes]:
    bad = bytearray(proof[i])
    bad[byte] ^= 1 << bit
    return [*proof[:i], bytes(bad), *proof[i + 1 :]]


@settings(max_examples=150, deadline=None)
@given(size=sizes, salt=salts, data=st.data())
def test_a_changed_inclusion_proof_fails_both_verifiers(size, salt, data):
    hashes = [merkle.leaf_hash(x) for x in log_of(size, salt)]
    root = merkle.root(hashes)
    i = data.draw(st.integers(0, size - 1), label="index")
    proof = merkle.inclusion_proof(i, size, hashes.__getitem__)
    must_fail = [
        (hashes[i], i, size, [*proof, SOME_HASH], root),
        (hashes[i], i, size, [SOME_HASH, *proof], root),
        (hashes[(i + 1) % size] if size > 1 else SOME_HASH, i, size, proof, root),
        (hashes[i], i, size, proof, merkle.root(hashes[: size - 1])),
        (hashes[i], size, size, proof, root),
        (hashes[i], i, size * 2, proof, root),
    ]
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1), label="element")
        byte = data.draw(st.integers(0, 31), label="byte")
        bit = data.draw(st.integers(0, 7), label="bit")
        must_fail += [
            (hashes[i], i, size, flip(proof, j, byte, bit), root),
            (hashes[i], i, size, proof[:j], root),
            (hashes[i], i, size, [*proof[:j], *proof[j + 1 :]], root),
        ]
    for probe in must_fail:
        assert not merkle.verify_inclusion(*probe)
        assert not ref_inclusion_ok(*probe)
    # Nearby indexes and sizes: whatever the RFC algorithm says, the reference agrees.
    for di, ds in [(-1, 0), (1, 0), (0, -1), (0, 1), (1, 1)]:
        probe = (hashes[i], i + di, size + ds, proof, root)
        assert merkle.verify_inclusion(*probe) == ref_inclusion_ok(*probe)


@settings(max_examples=150, deadline=None)
@given(size=st.integers(2, 300), salt=salts, data=st.data())
def test_a_changed_consistency_proof_fails_both_verifiers(size, salt, data):
    hashes = [merkle.leaf_hash(x) for x in log_of(size, salt)]
    roots = prefix_roots(hashes)
    m = data.draw(st.integers(1, size - 1), label="old size")
    proof = merkle.consistency_proof(m, size, hashes.__getitem__)
    old, new = roots[m], roots[size]
    j = data.draw(st.integers(0, len(proof) - 1), label="element")
    byte = data.draw(st.integers(0, 31), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    must_fail = [
        (m, size, old, new, flip(proof, j, byte, bit)),
        (m, size, old, new, proof[:j]),
        (m, size, old, new, [*proof[:j], *proof[j + 1 :]]),
        (m, size, old, new, [*proof, SOME_HASH]),
        (m, size, old, new, [SOME_HASH, *proof]),
        (m, size, old, new, []),
        (m, size, roots[m - 1], new, proof),
        (m, size, old, roots[size - 1], proof),
        (m, size, new, old, proof),
        (size, m, old, new, proof),
    ]
    for probe in must_fail:
        assert not merkle.verify_consistency(*probe)
        assert not ref_consistency_ok(*probe)
    for dm, dn in [(-1, 0), (1, 0), (0, -1), (0, 1), (1, 1)]:
        probe = (m + dm, size + dn, old, new, proof)
        assert merkle.verify_consistency(*probe) == ref_consistency_ok(*probe)


TAMPERINGS = ["edit", "drop", "swap", "truncate and re-extend"]


@settings(max_examples=200, deadline=None)
@given(size=st.integers(2, 300), salt=salts, how=st.sampled_from(TAMPERINGS), data=st.data())
def test_rewriting_what_an_old_tree_head_covered_breaks_consistency(size, salt, how, data):
    """The log saved a tree head (m, root) at some point; then someone rewrote it. Any
    proof the rewritten log can offer must fail against the saved head."""
    d = log_of(size, salt)
    m = data.draw(st.integers(1, size), label="old size")
    old_root = merkle.root([merkle.leaf_hash(x) for x in d[:m]])
    j = data.draw(st.integers(0, m - 1), label="a leaf the old head covers")
    forged = list(d)
    if how == "edit":
        forged[j] = d[j] + b"!"
    elif how == "drop":
        del forged[j]
    elif how == "swap":
        k = data.draw(st.integers(0, size - 1).filter(lambda k: k != j), label="other")
        forged[j], forged[k] = forged[k], forged[j]
    else:
        extra = data.draw(st.integers(m - j, size + 5 - j), label="new leaves")
        # One byte longer than any real leaf, so no re-extended leaf equals the original.
        forged = d[:j] + [b"\xff" + x for x in log_of(extra, salt)]
    hashes = [merkle.leaf_hash(x) for x in forged]
    n = len(hashes)
    new_root = merkle.root(hashes)
    if m > n:  # the log is now shorter than a head it signed: it cannot even offer a proof
        with pytest.raises(LantauError) as e:
            merkle.consistency_proof(m, n, hashes.__getitem__)
        assert e.value.code == ErrorCode.MERKLE_OUT_OF_RANGE
        assert not merkle.verify_consistency(m, n, old_root, new_root, [])
        return
    proof = merkle.consistency_proof(m, n, hashes.__getitem__)
    assert not merkle.verify_consistency(m, n, old_root, new_root, proof)
    with pytest.raises(LantauError) as e:
        merkle.check_consistency(m, n, old_root, new_root, proof)
    assert e.value.code == ErrorCode.MERKLE_PROOF_REJECTED
    # The honest log's proof does not rescue the forged root either.
    honest = merkle.consistency_proof(m, size, [merkle.leaf_hash(x) for x in d].__getitem__)
    assert not merkle.verify_consistency(m, size, old_root, new_root, honest)


@settings(max_examples=100, deadline=None)
@given(size=sizes, salt=salts, data=st.data())
def test_a_log_rebuilt_at_the_same_size_is_caught(size, salt, data):
    d = log_of(size, salt)
    hashes = [merkle.leaf_hash(x) for x in d]
    j = data.draw(st.integers(0, size - 1), label="edited leaf")
    forged = list(hashes)
    forged[j] = merkle.leaf_hash(d[j] + b"!")
    good, bad = merkle.root(hashes), merkle.root(forged)
    assert not merkle.verify_consistency(size, size, good, bad, [])
    # The forged record cannot be proven in the signed tree, nor the real one in the forged.
    assert not merkle.verify_inclusion(
        forged[j], j, size, merkle.inclusion_proof(j, size, forged.__getitem__), good
    )
    assert not merkle.verify_inclusion(
        hashes[j], j, size, merkle.inclusion_proof(j, size, hashes.__getitem__), bad
    )


# --- Cost: linear without a cache, small with one ------------------------------------------


class CountingLeaves:
    def __init__(self, hashes: list[bytes]) -> None:
        self.hashes, self.calls = hashes, 0

    def __call__(self, i: int) -> bytes:
        self.calls += 1
        return self.hashes[i]


BIG = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(5_000)]


def test_a_proof_reads_each_leaf_at_most_once():
    leaves = CountingLeaves(BIG)
    merkle.inclusion_proof(1234, len(BIG), leaves)
    assert leaves.calls == len(BIG) - 1  # every leaf but the one proven
    leaves.calls = 0
    merkle.consistency_proof(1234, len(BIG), leaves)
    assert leaves.calls <= len(BIG)


def test_a_shared_cache_gives_the_same_proofs_with_little_hashing():
    cache: dict[tuple[int, int], bytes] = {}
    leaves = CountingLeaves(BIG)
    at = BIG.__getitem__
    small = 2**merkle.CACHE_MIN_LEVEL
    # The log grows while the cache is in use: subtrees cached at 3,000 leaves stay true.
    before = 0
    for size in (3_000, 4_097, 5_000):
        # Computing the frontier warms the cache, reading little more than the new leaves.
        leaves.calls = 0
        assert merkle.frontier_at(size, leaves, cache=cache) == merkle.frontier_at(size, at)
        assert leaves.calls <= size - before + small
        before = size
        for i in (0, 1, 1_111, size // 2, size - 1):
            leaves.calls = 0
            got = merkle.inclusion_proof(i, size, leaves, cache=cache)
            assert got == merkle.inclusion_proof(i, size, at)
            # Only the subtrees too small to cache: in the leaf's block, and the right edge.
            assert leaves.calls < 2 * small
        for m in (1, 7, 2_048, size - 1):
            leaves.calls = 0
            got = merkle.consistency_proof(m, size, leaves, cache=cache)
            assert got == merkle.consistency_proof(m, size, at)
            assert leaves.calls < 2 * small
    # Only whole subtrees are ever cached, never part of the right edge.
    for level, index in cache:
        assert level >= merkle.CACHE_MIN_LEVEL
        assert (index + 1) << level <= len(BIG)


# --- Bad input: typed errors, never another exception --------------------------------------


def code_of(call) -> ErrorCode:
    with pytest.raises(LantauError) as e:
        call()
    return e.value.code


def test_bad_arguments_to_the_prover_raise_typed_errors():
    at = RFC_HASHES.__getitem__
    for args in [(8, 8), (0, 0), (-1, 8), (0, -1), (True, 8), ("0", 8), (0, 2.0)]:
        assert code_of(lambda a=args: merkle.inclusion_proof(*a, at)) == (
            ErrorCode.MERKLE_OUT_OF_RANGE
        )
    for args in [(5, 4), (-1, 4), (1, -1), (None, 4)]:
        assert code_of(lambda a=args: merkle.consistency_proof(*a, at)) == (
            ErrorCode.MERKLE_OUT_OF_RANGE
        )
    assert code_of(lambda: merkle.frontier_at(-1, at)) == ErrorCode.MERKLE_OUT_OF_RANGE
    # More leaves asked for than the log has.
    assert code_of(lambda: merkle.inclusion_proof(0, 9, at)) == ErrorCode.MERKLE_OUT_OF_RANGE
    assert code_of(lambda: merkle.consistency_proof(3, 9, at)) == ErrorCode.MERKLE_OUT_OF_RANGE
    assert code_of(lambda: merkle.frontier_at(9, at)) == ErrorCode.MERKLE_OUT_OF_RANGE
    # Leaf hashes that are not hashes.
    for bad in [b"\x00" * 31, b"\x00" * 33, "00" * 32, None, bytearray(32)]:
        leaves = [*RFC_HASHES[:3], bad, *RFC_HASHES[4:]]
        assert code_of(lambda v=leaves: merkle.inclusion_proof(0, 8, v.__getitem__)) == (
            ErrorCode.MERKLE_BAD_HASH
        )
        assert code_of(lambda v=leaves: merkle.root(v)) == ErrorCode.MERKLE_BAD_HASH
        assert code_of(lambda b=bad: merkle.append(Frontier(), b)) == ErrorCode.MERKLE_BAD_HASH
        assert code_of(lambda b=bad: merkle.node_hash(b, SOME_HASH)) == ErrorCode.MERKLE_BAD_HASH


def test_a_frontier_that_does_not_fit_its_size_is_refused():
    h = SOME_HASH
    for size, hashes in [(3, (h,)), (1, ()), (0, (h,)), (-1, ()), (2, (b"short",)), (4, (h, h))]:
        assert code_of(lambda s=size, hs=hashes: Frontier(size=s, hashes=hs)) == (
            ErrorCode.MERKLE_BAD_FRONTIER
        )
    # Also when read back from storage.
    stored = msgspec.msgpack.encode({"size": 3, "hashes": [h]})
    assert code_of(lambda: msgspec.msgpack.decode(stored, type=Frontier)) == (
        ErrorCode.MERKLE_BAD_FRONTIER
    )


def test_the_verifiers_answer_false_for_junk_and_check_says_why():
    h, r = RFC_HASHES[0], rfc_root(8)
    junk_inclusion = [
        (h, 0, 8, None, r),
        (h, 0, 8, 5, r),
        (h, 0, 8, ["00" * 32] * 3, r),
        (h, 0, 8, [None] * 3, r),
        ("00" * 32, 0, 8, [h] * 3, r),
        (h, "0", 8, [h] * 3, r),
        (h, 0, True, [], r),
        (h, 0, 8, [h] * 3, None),
        (h, 2**80, 2**81, [h] * 3, r),
    ]
    for probe in junk_inclusion:
        assert merkle.verify_inclusion(*probe) is False
        assert code_of(lambda p=probe: merkle.check_inclusion(*p)) == (
            ErrorCode.MERKLE_PROOF_REJECTED
        )
    junk_consistency = [
        (3, 8, r, r, None),
        (3, 8, r, r, [b"x"]),
        (3, 8, "r", r, [h]),
        (3.0, 8, r, r, [h]),
        (-1, 8, r, r, []),
        (3, -8, r, r, []),
        (2**80, 2**81, r, r, [h] * 3),
    ]
    for probe in junk_consistency:
        assert merkle.verify_consistency(*probe) is False
        assert code_of(lambda p=probe: merkle.check_consistency(*p)) == (
            ErrorCode.MERKLE_PROOF_REJECTED
        )
    with pytest.raises(LantauError, match="fewer than the hashes"):
        merkle.check_consistency(6, 8, rfc_root(6), r, unhex(RFC_CONSISTENCY[2][2])[:2])
    with pytest.raises(LantauError, match="old root"):
        merkle.check_consistency(6, 8, rfc_root(5), r, unhex(RFC_CONSISTENCY[2][2]))
