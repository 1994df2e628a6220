"""What each key type is (libs/keytypes/kinds.py) and watch-only HD derivation from
exported xpubs (material.child_public), checked against the bip32 package."""

from __future__ import annotations

import os

import pytest
from bip32 import BIP32
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.keytypes import hd, kinds, material
from proto.common import HssShape
from proto.errors import ErrorCode, LantauError

SEED = bytes(range(32))


def refused(code: ErrorCode, fn, *args) -> str:
    with pytest.raises(LantauError) as e:
        fn(*args)
    assert e.value.code == code, e.value
    return e.value.message


def test_protection_follows_the_tokens_mechanisms() -> None:
    softhsm = ["ECDSA", "EC_KEY_PAIR_GEN", "EDDSA", "EC_EDWARDS_KEY_PAIR_GEN", "AES_GCM"]
    assert kinds.protection_for("secp256k1", softhsm) == "hsm"
    assert kinds.protection_for("ed25519", softhsm) == "hsm"
    for t in kinds.SEALED_TYPES:
        assert kinds.protection_for(t, softhsm) == "hsm-wrapped"
        assert kinds.protection_for(t, ["ECDSA"]) is None  # no AES-GCM: cannot seal
    assert kinds.protection_for("ed25519", ["ECDSA", "EC_KEY_PAIR_GEN"]) is None


def test_payloads_each_type_signs() -> None:
    kinds.check_payload("bip32-secp256k1", "digest", b"\x01" * 32)
    kinds.check_payload("bip32-secp256k1", "evm_tx", b"anything: chains decodes it")
    for t in ("slip10-ed25519", "ml-dsa-65", "lms-hss"):
        kinds.check_payload(t, "message", b"m")
        refused(ErrorCode.INVALID_PAYLOAD, kinds.check_payload, t, "digest", b"\x01" * 32)
        refused(ErrorCode.INVALID_PAYLOAD, kinds.check_payload, t, "message", b"")
    refused(ErrorCode.INVALID_PAYLOAD, kinds.check_payload, "bip32-secp256k1", "digest", b"x")
    refused(ErrorCode.KEY_TYPE_UNSUPPORTED, kinds.check_payload, "rsa", "digest", b"x")


def test_paths_are_required_for_hd_keys_canonical_and_refused_elsewhere() -> None:
    assert kinds.check_path("bip32-secp256k1", "m/44'/60'/0'/0/5") == "m/44'/60'/0'/0/5"
    assert kinds.check_path("ml-dsa-65", None) is None
    refused(ErrorCode.INVALID_DERIVATION_PATH, kinds.check_path, "bip32-secp256k1", None)
    refused(ErrorCode.INVALID_DERIVATION_PATH, kinds.check_path, "ml-dsa-65", "m/0")
    refused(ErrorCode.INVALID_DERIVATION_PATH, kinds.check_path, "secp256k1", "m")
    message = refused(
        ErrorCode.INVALID_DERIVATION_PATH, kinds.check_path, "bip32-secp256k1", "m/44h/0"
    )
    assert "m/44'/0" in message
    refused(ErrorCode.INVALID_DERIVATION_PATH, kinds.check_path, "slip10-ed25519", "m/0")


def test_hss_shape_only_for_hss_and_defaulted() -> None:
    assert kinds.effective_hss("lms-hss", None) == kinds.DEFAULT_HSS
    small = HssShape(levels=2, height=5, winternitz=4)
    assert kinds.effective_hss("lms-hss", small) == small
    assert kinds.effective_hss("ml-dsa-65", None) is None
    refused(ErrorCode.INVALID_FIELD, kinds.effective_hss, "ml-dsa-65", small)


def test_a_blob_binding_names_key_type_shape_creation_and_public_key() -> None:
    base = ("k", "lms-hss", HssShape(levels=2, height=5), "abc", b"pub")
    aads = {
        material.blob_aad(*base),
        material.blob_aad("k2", *base[1:]),
        material.blob_aad("k", "ml-dsa-65", None, "abc", b"pub"),
        material.blob_aad("k", "lms-hss", HssShape(levels=2, height=10), "abc", b"pub"),
        material.blob_aad(
            "k", "lms-hss", HssShape(levels=2, height=5, winternitz=8), "abc", b"pub"
        ),
        material.blob_aad(*base[:3], "abd", b"pub"),
        material.blob_aad(*base[:4], b"puc"),
    }
    assert len(aads) == 7


def test_material_of_the_wrong_length_is_refused() -> None:
    refused(ErrorCode.INVALID_SEED, material.public_key, "ml-dsa-65", b"\x00" * 31)
    refused(ErrorCode.KEY_TYPE_UNSUPPORTED, material.public_key, "secp256k1", SEED)
    refused(ErrorCode.KEY_TYPE_UNSUPPORTED, material.sign, "lms-hss", bytes(48), b"m", None)


_STEP = st.integers(0, 2**31 - 1)


@settings(max_examples=40, deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    st.lists(st.tuples(_STEP, st.booleans()), min_size=0, max_size=3),
    st.lists(_STEP, min_size=1, max_size=3),
)
def test_watch_only_children_match_the_bip32_package(
    seed: bytes, prefix: list[tuple[int, bool]], tail: list[int]
) -> None:
    """Below an exported xpub (any path), non-hardened children derive without the seed
    and match what the bip32 package derives from the same xpub."""
    top = hd.format_path([i | (hd.HARDENED if h else 0) for i, h in prefix])
    exported = material.hd_public("bip32-secp256k1", seed, top)
    path = top + "".join(f"/{i}" for i in tail)
    ours = material.child_public("bip32-secp256k1", [exported], path)
    theirs = BIP32.from_xpub(exported.xpub).get_pubkey_from_path(
        "m" + "".join(f"/{i}" for i in tail)
    )
    assert ours == theirs == material.hd_public("bip32-secp256k1", seed, path).public_key


def test_child_keys_no_export_leads_to_are_unknown() -> None:
    root = material.hd_public("bip32-secp256k1", SEED, "m")
    account = material.hd_public("bip32-secp256k1", SEED, "m/44'/60'/0'")
    xpubs = [root, account]
    assert material.child_public("bip32-secp256k1", xpubs, "m/44'/60'/1'/0") is None
    assert material.child_public("bip32-secp256k1", xpubs, "m/44'/60'/0'/0/1") is not None
    assert material.child_public("bip32-secp256k1", xpubs, "m/1") is not None
    assert material.child_public("bip32-secp256k1", [], "m/1") is None
    ed = material.hd_public("slip10-ed25519", SEED, "m/44'")
    assert material.child_public("slip10-ed25519", [ed], "m/44'") == ed.public_key
    assert material.child_public("slip10-ed25519", [ed], "m/44'/1'") is None
    # Prefixes are whole steps: m/4 is not an ancestor of m/44.
    four = material.hd_public("bip32-secp256k1", SEED, "m/4")
    assert material.child_public("bip32-secp256k1", [four], "m/44") is None


def test_stateless_signatures_verify_under_the_derived_child() -> None:
    from libs import curves

    seed = os.urandom(32)
    digest = bytes(range(32))
    path = "m/44'/60'/0'/0/3"
    signature = material.sign("bip32-secp256k1", seed, digest, path)
    child = material.hd_public("bip32-secp256k1", seed, path).public_key
    curves.finalize("bip32-secp256k1", child, digest, signature)
    ed_path = "m/44'/501'/0'"
    sig = material.sign("slip10-ed25519", seed, b"m", ed_path)
    curves.finalize(
        "slip10-ed25519", material.hd_public("slip10-ed25519", seed, ed_path).public_key, b"m", sig
    )
    pq = material.sign("ml-dsa-65", seed, b"m", None)
    curves.finalize("ml-dsa-65", material.public_key("ml-dsa-65", seed), b"m", pq)
    with pytest.raises(LantauError) as e:
        curves.finalize("ml-dsa-65", material.public_key("ml-dsa-65", seed), b"n", pq)
    assert e.value.code == ErrorCode.SIGNATURE_VERIFICATION_FAILED
