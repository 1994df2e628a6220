"""LMS/HSS through pyhsslms: RFC 8554 vectors, signing at given indices, and every
signature checked by a second implementation (hsslms) and for one-time key reuse."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import hsslms
import pyhsslms
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.keytypes import lms, lms_state
from proto.errors import ErrorCode, LantauError

RFC = json.loads((Path(__file__).parent / "vectors" / "rfc8554.json").read_text())

# Small and fast for tests: 2 levels of height 5 (1024 signatures), W4.
SMALL = lms.HssParameters(levels=2, height=5, winternitz=4)
MATERIAL = bytes(range(48))


def token_rng(n: int) -> bytes:
    """Stands in for the token RNG (tests of sealed.py use the real one)."""
    return os.urandom(n)


def second_opinion(public: bytes, message: bytes, signature: bytes) -> bool:
    """hsslms: an independent RFC 8554 implementation (raises on an invalid signature)."""
    try:
        hsslms.HSS_Pub(public).verify(message, signature)
    except Exception:  # hsslms signals rejection with exceptions
        return False
    return True


def one_time_uses(
    public: bytes, signatures: Iterable[bytes]
) -> dict[tuple[bytes, int], set[bytes]]:
    """Each one-time key (tree I, leaf q) with the distinct LM-OTS signatures it made.

    Implementation-independent check of the whole point of the state machinery: a
    one-time key must never produce two different signatures.
    """
    top = pyhsslms.HssPublicKey.deserialize(public).pub
    uses: dict[tuple[bytes, int], set[bytes]] = {}
    for signature in signatures:
        parsed = pyhsslms.HssSignature.deserialize(signature)
        identities = [top.I] + [p.I for p in parsed.pub]
        for ident, lms_sig in zip(identities, [*parsed.sig, parsed.lms_sig], strict=True):
            ots = pyhsslms.LmotsSignature.serialize(lms_sig.lmots_sig)
            uses.setdefault((ident, lms_sig.q), set()).add(ots)
    return uses


def assert_no_one_time_key_reused(public: bytes, signatures: list[bytes]) -> None:
    reused = {k: v for k, v in one_time_uses(public, signatures).items() if len(v) > 1}
    assert not reused, f"{len(reused)} one-time keys signed twice"


# -- RFC 8554 Appendix F --------------------------------------------------------------


@pytest.mark.parametrize("case", RFC["cases"], ids=lambda c: f"test-case-{c['case']}")
def test_rfc8554_signatures_verify_with_both_implementations(case: dict[str, str]) -> None:
    public, message, signature = (
        bytes.fromhex(case[k]) for k in ("public_key", "message", "signature")
    )
    assert lms.verify(public, message, signature)
    assert second_opinion(public, message, signature)
    assert not lms.verify(public, message + b"!", signature)
    altered = bytearray(signature)
    altered[200] ^= 1
    assert not lms.verify(public, message, bytes(altered))


def test_rfc8554_tree_generation_from_seed_and_i() -> None:
    """Test case 2's second tree rebuilt from its SEED and I gives the published key."""
    tree = RFC["tree_keygen"]
    params = lms.HssParameters(levels=1, height=5, winternitz=8)
    public = lms.public_key(params, bytes.fromhex(tree["seed"] + tree["i"]))
    expected = bytes.fromhex("00000001" + "00000005" + "00000004" + tree["i"] + tree["k"])
    assert public == expected


# -- parameters and inputs ---------------------------------------------------------


def test_sizes_of_the_key() -> None:
    assert lms.total_signatures(SMALL) == 1024
    assert lms.lease_alignment(SMALL) == 32
    one = lms.HssParameters(levels=1, height=10, winternitz=8)
    assert (lms.total_signatures(one), lms.lease_alignment(one)) == (1024, 1)


@pytest.mark.parametrize(
    "params",
    [
        lms.HssParameters(levels=0),
        lms.HssParameters(levels=9),
        lms.HssParameters(height=6),
        lms.HssParameters(winternitz=3),
    ],
)
def test_undefined_parameter_sets_are_refused(params: lms.HssParameters) -> None:
    with pytest.raises(LantauError) as e:
        lms.public_key(params, MATERIAL)
    assert e.value.code == ErrorCode.INVALID_FIELD


def test_material_must_be_seed_and_i() -> None:
    with pytest.raises(LantauError) as e:
        lms.public_key(SMALL, bytes(47))
    assert e.value.code == ErrorCode.INVALID_SEED


@pytest.mark.parametrize(("start", "end"), [(0, 31), (1, 33), (32, 1025), (64, 64), (-32, 0)])
def test_a_lease_must_cover_whole_top_level_subtrees(start: int, end: int) -> None:
    with pytest.raises(LantauError) as e:
        lms.HssSigner(SMALL, MATERIAL, start, end, token_rng)
    assert e.value.code == ErrorCode.INVALID_FIELD


def test_malformed_inputs_to_verify() -> None:
    public = lms.public_key(SMALL, MATERIAL)
    with pytest.raises(LantauError) as e:
        lms.verify(b"\x00\x00", b"m", b"sig")
    assert e.value.code == ErrorCode.INVALID_FIELD
    for junk in (b"", b"\x00" * 4, b"\x00\x00\x00\x01" + b"\xff" * 100, os.urandom(3000)):
        assert lms.verify(public, b"m", junk) is False


# -- signing at given indices --------------------------------------------------------


@pytest.fixture(scope="module")
def public() -> bytes:
    return lms.public_key(SMALL, MATERIAL)


def test_signatures_at_chosen_indices_verify_and_use_those_leaves(public: bytes) -> None:
    signer = lms.HssSigner(SMALL, MATERIAL, 64, 160, token_rng)
    signatures = []
    for index in (64, 65, 90, 95, 96, 130, 159):
        signature = signer.sign(index, b"tx %d" % index)
        assert lms.signature_leaves(signature) == [index // 32, index % 32]
        assert lms.verify(public, b"tx %d" % index, signature)
        assert second_opinion(public, b"tx %d" % index, signature)
        signatures.append(signature)
    assert signer.remaining() == 0 and signer.next_index == 160
    assert_no_one_time_key_reused(public, signatures)


def test_an_index_already_passed_or_outside_the_lease_is_refused(public: bytes) -> None:
    signer = lms.HssSigner(SMALL, MATERIAL, 32, 64, token_rng)
    signer.sign(40, b"a")
    for index, code in (
        (40, ErrorCode.ONE_TIME_INDEX_USED),
        (33, ErrorCode.ONE_TIME_INDEX_USED),
        (31, ErrorCode.INDEX_NOT_LEASED),
        (64, ErrorCode.INDEX_NOT_LEASED),
    ):
        with pytest.raises(LantauError) as e:
            signer.sign(index, b"b")
        assert e.value.code == code
    assert lms.verify(public, b"c", signer.sign(41, b"c"))


def test_a_single_level_key_signs_every_index_once_then_is_used_up() -> None:
    params = lms.HssParameters(levels=1, height=5, winternitz=4)
    public = lms.public_key(params, MATERIAL)
    assert lms.lease_alignment(params) == 1
    state = lms_state.new_index_state("k", lms.total_signatures(params))
    signatures = []
    while lms_state.signatures_left(state):
        state, granted = lms_state.lease(state, "n1", 7, now=0.0)
        signer = lms.HssSigner(params, MATERIAL, granted.start, granted.end, token_rng)
        for index in range(granted.start, granted.end):
            signatures.append(signer.sign(index, b"m%d" % index))
    assert len(signatures) == 32
    with pytest.raises(LantauError) as e:
        lms_state.lease(state, "n1", 1, now=0.0)
    assert e.value.code == ErrorCode.KEY_EXHAUSTED
    assert all(second_opinion(public, b"m%d" % i, s) for i, s in enumerate(signatures))
    assert_no_one_time_key_reused(public, signatures)


def test_three_levels_regenerate_lower_trees_as_the_index_moves() -> None:
    params = lms.HssParameters(levels=3, height=5, winternitz=4)
    public3 = lms.public_key(params, MATERIAL)
    assert lms.lease_alignment(params) == 1024
    signer = lms.HssSigner(params, MATERIAL, 2048, 3072, token_rng)
    signatures = [signer.sign(i, b"m") for i in (2048, 2049, 2080, 2081, 3000, 3071)]
    assert [lms.signature_leaves(s) for s in signatures][-1] == [2, 31, 31]
    assert all(
        lms.verify(public3, b"m", s) and second_opinion(public3, b"m", s) for s in signatures
    )
    assert_no_one_time_key_reused(public3, signatures)


def test_the_checker_sees_a_reused_one_time_key(public: bytes) -> None:
    """Two nodes that ignore the ledger and sign in the same subtree reuse a top leaf."""
    a = lms.HssSigner(SMALL, MATERIAL, 0, 32, token_rng).sign(0, b"m")
    b = lms.HssSigner(SMALL, MATERIAL, 0, 32, token_rng).sign(1, b"m")
    assert lms.verify(public, b"m", a) and lms.verify(public, b"m", b)
    with pytest.raises(AssertionError, match="signed twice"):
        assert_no_one_time_key_reused(public, [a, b])


NODES = ["n1", "n2", "n3"]
Step = tuple[str, str, int]  # (action, node, amount)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["lease", "sign", "skip", "crash"]),
            st.sampled_from(NODES),
            st.integers(min_value=1, max_value=40),
        ),
        max_size=30,
    )
)
def test_nodes_leasing_signing_and_crashing_never_reuse_a_one_time_key(
    public: bytes, steps: list[Step]
) -> None:
    """Ledger plus signers, end to end: whatever the interleaving, every signature
    verifies (two implementations) and no one-time key signs twice."""
    state = lms_state.new_index_state("k", lms.total_signatures(SMALL), lms.lease_alignment(SMALL))
    signers: dict[str, lms.HssSigner] = {}
    signatures: list[tuple[bytes, bytes]] = []
    for action, node, amount in steps:
        if action == "lease":
            try:
                state, granted = lms_state.lease(state, node, amount, now=0.0)
            except LantauError as e:
                assert e.code == ErrorCode.KEY_EXHAUSTED
                continue
            signers[node] = lms.HssSigner(SMALL, MATERIAL, granted.start, granted.end, token_rng)
        elif action == "crash":
            signers.pop(node, None)  # memory gone; the ledger still names its lease
        elif node in signers and signers[node].remaining():
            signer = signers[node]
            index = signer.next_index
            if action == "skip":
                index = min(signer.end - 1, index + amount)
            message = b"%s:%d" % (node.encode(), index)
            signatures.append((message, signer.sign(index, message)))
    for message, signature in signatures[:6]:
        assert second_opinion(public, message, signature)
    assert all(lms.verify(public, m, s) for m, s in signatures)
    assert_no_one_time_key_reused(public, [s for _, s in signatures])
