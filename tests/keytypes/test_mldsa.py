"""ML-DSA through `cryptography`: NIST ACVP key generation vectors, FIPS 204 behaviour,
and cross-verification with dilithium-py, an independent pure-Python FIPS 204 code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from dilithium_py.ml_dsa import ML_DSA_44, ML_DSA_65, ML_DSA_87
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.keytypes import mldsa
from proto.errors import ErrorCode, LantauError

ACVP = json.loads((Path(__file__).parent / "vectors" / "mldsa_keygen_acvp.json").read_text())
REFERENCE = {"ML-DSA-44": ML_DSA_44, "ML-DSA-65": ML_DSA_65, "ML-DSA-87": ML_DSA_87}
PARAMETERS: list[mldsa.MlDsaParameters] = ["ML-DSA-44", "ML-DSA-65", "ML-DSA-87"]
SEED = bytes(range(32))


def test_the_acvp_file_has_25_cases_per_parameter_set() -> None:
    counts = {p: sum(t["parameterSet"] == p for t in ACVP["tests"]) for p in PARAMETERS}
    assert counts == dict.fromkeys(PARAMETERS, 25)


@pytest.mark.parametrize("case", ACVP["tests"], ids=lambda t: f"{t['parameterSet']}-tc{t['tcId']}")
def test_nist_acvp_key_generation(case: dict[str, str | int]) -> None:
    public = mldsa.public_key(bytes.fromhex(str(case["seed"])), case["parameterSet"])  # type: ignore[arg-type]
    assert len(public) == case["pk_len"]
    assert hashlib.sha256(public).hexdigest() == case["pk_sha256"]


@pytest.mark.parametrize("parameters", PARAMETERS)
def test_sign_and_verify_with_the_fips_204_sizes(parameters: mldsa.MlDsaParameters) -> None:
    public = mldsa.public_key(SEED, parameters)
    signature = mldsa.sign(SEED, b"transfer 10", parameters)
    assert len(public) == mldsa.PUBLIC_KEY_LEN[parameters]
    assert len(signature) == mldsa.SIGNATURE_LEN[parameters]
    assert mldsa.verify(public, b"transfer 10", signature, parameters)


def test_signing_is_hedged_and_both_signatures_verify() -> None:
    public = mldsa.public_key(SEED)
    a, b = mldsa.sign(SEED, b"m"), mldsa.sign(SEED, b"m")
    assert a != b
    assert mldsa.verify(public, b"m", a) and mldsa.verify(public, b"m", b)


def test_the_seed_is_the_whole_key() -> None:
    assert mldsa.public_key(bytearray(SEED)) == mldsa.public_key(SEED)
    assert mldsa.public_key(SEED) != mldsa.public_key(bytes(31) + b"\x01")


def test_a_changed_message_signature_context_or_key_does_not_verify() -> None:
    public = mldsa.public_key(SEED)
    signature = mldsa.sign(SEED, b"pay 10", context=b"lantau")
    assert mldsa.verify(public, b"pay 10", signature, context=b"lantau")
    assert not mldsa.verify(public, b"pay 11", signature, context=b"lantau")
    assert not mldsa.verify(public, b"pay 10", signature)  # context is part of what is signed
    assert not mldsa.verify(public, b"pay 10", signature, context=b"lantaU")
    flipped = bytearray(signature)
    flipped[100] ^= 1
    assert not mldsa.verify(public, b"pay 10", bytes(flipped), context=b"lantau")
    assert not mldsa.verify(public, b"pay 10", signature[:-1], context=b"lantau")
    other = mldsa.public_key(bytes(32))
    assert not mldsa.verify(other, b"pay 10", signature, context=b"lantau")
    # A signature under one parameter set is not one under another.
    assert not mldsa.verify(
        mldsa.public_key(SEED, "ML-DSA-44"), b"pay 10", signature[:2420], "ML-DSA-44", b"lantau"
    )


@pytest.mark.parametrize("n", [0, 16, 31, 33, 64])
def test_a_seed_that_is_not_32_bytes_is_refused(n: int) -> None:
    with pytest.raises(LantauError) as e:
        mldsa.sign(bytes(n), b"m")
    assert e.value.code == ErrorCode.INVALID_SEED


def test_bad_inputs_are_typed_errors() -> None:
    public = mldsa.public_key(SEED)
    with pytest.raises(LantauError) as e:
        mldsa.sign(SEED, b"m", context=bytes(256))
    assert e.value.code == ErrorCode.INVALID_FIELD
    with pytest.raises(LantauError) as e:
        mldsa.verify(public[:-1], b"m", b"sig")
    assert e.value.code == ErrorCode.INVALID_FIELD
    with pytest.raises(LantauError) as e:
        mldsa.public_key(SEED, "ML-DSA-66")  # type: ignore[arg-type]
    assert e.value.code == ErrorCode.INVALID_FIELD
    assert mldsa.verify(public, b"m", b"") is False


CROSS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@CROSS
@given(
    st.binary(min_size=32, max_size=32),
    st.binary(max_size=200),
    st.binary(max_size=255),
    st.sampled_from(PARAMETERS),
)
def test_dilithium_py_agrees_on_keys_and_verifies_our_signatures(
    seed: bytes, message: bytes, context: bytes, parameters: mldsa.MlDsaParameters
) -> None:
    reference = REFERENCE[parameters]
    ref_public, _ = reference.key_derive(seed)
    assert mldsa.public_key(seed, parameters) == ref_public
    signature = mldsa.sign(seed, message, parameters, context)
    assert reference.verify(ref_public, message, signature, ctx=context)
    assert not reference.verify(ref_public, message + b"x", signature, ctx=context)


@CROSS
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=200), st.binary(max_size=255))
def test_we_verify_dilithium_py_signatures(seed: bytes, message: bytes, context: bytes) -> None:
    ref_public, ref_secret = ML_DSA_65.key_derive(seed)
    signature = ML_DSA_65.sign(ref_secret, message, ctx=context)
    assert mldsa.verify(ref_public, message, signature, context=context)
    assert not mldsa.verify(ref_public, message, signature, context=context + b"x")
