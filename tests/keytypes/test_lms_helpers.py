"""Reading one-time keys and global indices back from HSS signatures (what the chaos
check relies on), against the signer's own choice of index and the tests' reader."""

from __future__ import annotations

import os

import pytest

from libs.keytypes import lms
from tests.keytypes.test_lms import one_time_uses, second_opinion

THREE = lms.HssParameters(levels=3, height=5, winternitz=4)


@pytest.fixture(scope="module")
def key() -> tuple[bytes, lms.HssSigner]:
    material = os.urandom(lms.MATERIAL_LEN)
    public = lms.public_key(THREE, material)
    return public, lms.HssSigner(THREE, material, 2048, 3072, os.urandom)


def test_the_index_read_back_is_the_one_signed_at(key: tuple[bytes, lms.HssSigner]) -> None:
    public, signer = key
    signatures = []
    for index in (2048, 2049, 2080, 3071):  # crossing lower trees of both levels
        signature = signer.sign(index, b"m%d" % index)
        assert lms.signature_index(THREE, signature) == index
        assert second_opinion(public, b"m%d" % index, signature)
        signatures.append(signature)
    keys = [k for s in signatures for k in lms.one_time_keys(public, s)]
    assert {(i, q): {o} for i, q, o in keys} == {
        k: v for k, v in one_time_uses(public, signatures).items()
    }
    # Top level first: every signature of this lease used top-level leaf 2.
    assert {lms.one_time_keys(public, s)[0][1] for s in signatures} == {2}
