"""BIP32 and SLIP-10 derivation against the published test vectors and against the
`bip32` and `slip10` packages as independent implementations."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import coincurve
import pytest
from bip32 import BIP32
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slip10 import SLIP10

from libs.keytypes import hd
from proto.errors import ErrorCode, LantauError

VECTORS = Path(__file__).parent / "vectors"
BIP32_VECTORS = json.loads((VECTORS / "bip32.json").read_text())
SLIP10_VECTORS = json.loads((VECTORS / "slip10.json").read_text())


def _bip32_chains() -> list[Any]:
    return [
        pytest.param(v["seed"], c, id=f"v{v['vector']}:{c['path']}")
        for v in BIP32_VECTORS["vectors"]
        for c in v["chains"]
    ]


def _slip10_chains() -> list[Any]:
    return [
        pytest.param(v["curve"], v["seed"], c, id=f"{v['curve']}-v{v['vector']}:{c['path']}")
        for v in SLIP10_VECTORS["vectors"]
        for c in v["chains"]
    ]


# -- published vectors --------------------------------------------------------------


def test_the_vector_files_hold_what_the_specifications_publish() -> None:
    assert [len(v["chains"]) for v in BIP32_VECTORS["vectors"]] == [6, 6, 2, 3]
    assert len(BIP32_VECTORS["invalid_extended_keys"]) == 16
    assert [(v["curve"], len(v["chains"])) for v in SLIP10_VECTORS["vectors"]] == [
        ("secp256k1", 6),
        ("ed25519", 6),
        ("secp256k1", 6),
        ("ed25519", 6),
    ]


@pytest.mark.parametrize(("seed", "chain"), _bip32_chains())
def test_bip32_vectors_1_to_4(seed: str, chain: dict[str, str]) -> None:
    key = hd.derive_private(bytes.fromhex(seed), chain["path"], "secp256k1")
    assert hd.serialize_xprv(key) == chain["xprv"]
    assert hd.serialize_xpub(key.public()) == chain["xpub"]
    parsed_pub, network = hd.parse_extended_key(chain["xpub"])
    assert network == "mainnet" and parsed_pub == key.public()
    parsed_prv, _ = hd.parse_extended_key(chain["xprv"])
    assert isinstance(parsed_prv, hd.ExtendedPrivateKey)
    assert parsed_prv.private_key == key.private_key


def _public_steps() -> list[Any]:
    """Consecutive vector chains whose last step is non-hardened: CKDpub can follow them."""
    return [
        pytest.param(parent["xpub"], child, id=f"v{v['vector']}:{child['path']}")
        for v in BIP32_VECTORS["vectors"]
        for parent, child in zip(v["chains"], v["chains"][1:], strict=False)
        if not child["path"].endswith("'")
    ]


@pytest.mark.parametrize(("parent_xpub", "child"), _public_steps())
def test_bip32_vectors_public_derivation_from_the_parent_xpub(
    parent_xpub: str, child: dict[str, str]
) -> None:
    parent, _ = hd.parse_extended_key(parent_xpub)
    assert isinstance(parent, hd.ExtendedPublicKey)
    last = child["path"].rsplit("/", 1)[1]
    assert hd.serialize_xpub(hd.derive_public(parent, f"m/{last}")) == child["xpub"]


@pytest.mark.parametrize("case", BIP32_VECTORS["invalid_extended_keys"], ids=lambda c: c["reason"])
def test_bip32_vector_5_invalid_extended_keys_are_refused(case: dict[str, str]) -> None:
    with pytest.raises(LantauError) as e:
        hd.parse_extended_key(case["key"])
    assert e.value.code == ErrorCode.INVALID_EXTENDED_KEY


@pytest.mark.parametrize(("curve", "seed", "chain"), _slip10_chains())
def test_slip10_vectors(curve: hd.HdCurve, seed: str, chain: dict[str, str]) -> None:
    key = hd.derive_private(bytes.fromhex(seed), chain["path"], curve)
    assert key.private_key.hex() == chain["private"]
    assert key.chain_code.hex() == chain["chain_code"]
    assert key.parent_fingerprint.hex() == chain["parent_fingerprint"]
    pub = key.public()
    serialised = pub.public_key if curve == "secp256k1" else b"\x00" + pub.public_key
    assert serialised.hex() == chain["public"]


def test_ed25519_export_is_the_slip10_public_key_and_chain_code() -> None:
    v = next(x for x in SLIP10_VECTORS["vectors"] if x["curve"] == "ed25519")
    chain = v["chains"][2]
    exported = hd.export_ed25519(
        hd.derive_private(bytes.fromhex(v["seed"]), chain["path"], "ed25519").public()
    )
    assert "00" + exported.public_key == chain["public"]
    assert exported.chain_code == chain["chain_code"]
    assert exported.parent_fingerprint == chain["parent_fingerprint"]
    assert exported.depth == 2
    with pytest.raises(LantauError) as e:
        hd.serialize_xpub(hd.derive_private(bytes.fromhex(v["seed"]), "m", "ed25519").public())
    assert e.value.code == ErrorCode.CURVE_MISMATCH


# -- paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "indices"),
    [
        ("m", ()),
        ("m/0", (0,)),
        ("m/44'/60'/0'/0/7", (hd.HARDENED | 44, hd.HARDENED | 60, hd.HARDENED, 0, 7)),
        (
            "m/44h/60H/0'/1/2147483647",
            (hd.HARDENED | 44, hd.HARDENED | 60, hd.HARDENED, 1, 2**31 - 1),
        ),
    ],
)
def test_paths_parse(path: str, indices: tuple[int, ...]) -> None:
    assert hd.parse_path(path, "secp256k1") == indices
    assert hd.parse_path(hd.format_path(indices), "secp256k1") == indices


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "m/",
        "M/0",
        "0/1",
        "m//1",
        "m/01",
        "m/-1",
        "m/+1",
        "m/1''",
        "m/1'h",
        "m/0x1",
        " m/1",
        "m/1 ",
        "m/\u0661",  # ARABIC-INDIC DIGIT ONE: digits are ASCII only
        "m/2147483648",  # raw hardened index: write 0' instead
        "m/99999999999",
        "m" + "/0" * 256,
    ],
)
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(LantauError) as e:
        hd.parse_path(path, "secp256k1")
    assert e.value.code == ErrorCode.INVALID_DERIVATION_PATH


def test_the_deepest_path_is_255_steps() -> None:
    assert len(hd.parse_path("m" + "/0" * 255, "secp256k1")) == 255


def test_ed25519_refuses_non_hardened_steps() -> None:
    with pytest.raises(LantauError) as e:
        hd.parse_path("m/44'/501'/0", "ed25519")
    assert e.value.code == ErrorCode.INVALID_DERIVATION_PATH
    assert "step 3" in e.value.message
    master = hd.master_key(bytes(32), "ed25519")
    with pytest.raises(LantauError) as e:
        hd.ckd_priv(master, 7)
    assert e.value.code == ErrorCode.INVALID_DERIVATION_PATH
    with pytest.raises(LantauError) as e:
        hd.ckd_pub(master.public(), hd.HARDENED)
    assert e.value.code == ErrorCode.INVALID_DERIVATION_PATH


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_text_as_a_path_gives_indices_or_a_typed_error(text: str) -> None:
    for curve in ("secp256k1", "ed25519"):
        try:
            indices = hd.parse_path(text, curve)
        except LantauError as e:
            assert e.code == ErrorCode.INVALID_DERIVATION_PATH
        else:
            assert hd.format_path(indices) == text.replace("h", "'").replace("H", "'")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_any_text_as_an_extended_key_gives_a_key_or_a_typed_error(text: str) -> None:
    try:
        hd.parse_extended_key(text)
    except LantauError as e:
        assert e.code == ErrorCode.INVALID_EXTENDED_KEY


def test_public_derivation_refuses_hardened_steps_and_depth_beyond_255() -> None:
    pub = hd.master_key(bytes(16), "secp256k1").public()
    with pytest.raises(LantauError) as e:
        hd.derive_public(pub, "m/0'")
    assert e.value.code == ErrorCode.INVALID_DERIVATION_PATH
    deep = hd.ExtendedPublicKey(
        curve="secp256k1",
        depth=255,
        parent_fingerprint=b"\x01\x02\x03\x04",
        child_number=1,
        chain_code=pub.chain_code,
        public_key=pub.public_key,
    )
    with pytest.raises(LantauError) as e:
        hd.derive_public(deep, "m/0")
    assert e.value.code == ErrorCode.INVALID_DERIVATION_PATH


@pytest.mark.parametrize("n", [0, 15, 65, 128])
def test_seed_length_outside_16_to_64_bytes_is_refused(n: int) -> None:
    for curve in ("secp256k1", "ed25519"):
        with pytest.raises(LantauError) as e:
            hd.master_key(bytes(n), curve)
        assert e.value.code == ErrorCode.INVALID_SEED


def test_private_keys_never_show_in_repr() -> None:
    key = hd.derive_private(bytes(range(32)), "m/0'", "secp256k1")
    text = repr(key) + str(key)
    assert key.private_key.hex() not in text and key.chain_code.hex() not in text


# -- the independent implementations --------------------------------------------------

SEEDS = st.binary(min_size=16, max_size=64)
INDEX = st.integers(min_value=0, max_value=2**31 - 1)
STEP = st.tuples(INDEX, st.booleans()).map(lambda t: t[0] | hd.HARDENED if t[1] else t[0])
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(SEEDS, st.lists(STEP, max_size=5), st.sampled_from(["mainnet", "testnet"]))
def test_secp256k1_matches_the_bip32_package(
    seed: bytes, indices: list[int], network: hd.Network
) -> None:
    ours = hd.derive_private(seed, hd.format_path(indices), "secp256k1")
    ref = BIP32.from_seed(seed, network="main" if network == "mainnet" else "test")
    assert hd.serialize_xprv(ours, network) == ref.get_xpriv_from_path(indices)
    assert hd.serialize_xpub(ours.public(), network) == ref.get_xpub_from_path(indices)
    assert ours.fingerprint == BIP32.from_xpub(ref.get_xpub_from_path(indices)).get_fingerprint()


@SETTINGS
@given(SEEDS, st.lists(STEP, max_size=5))
def test_secp256k1_matches_the_slip10_package(seed: bytes, indices: list[int]) -> None:
    ours = hd.derive_private(seed, hd.format_path(indices), "secp256k1")
    chain, private = SLIP10.from_seed(seed, curve_name="secp256k1").get_extended_privkey_from_path(
        indices
    )
    assert (ours.chain_code, ours.private_key) == (chain, private)


@SETTINGS
@given(SEEDS, st.lists(INDEX.map(lambda i: i | hd.HARDENED), max_size=5))
def test_ed25519_matches_the_slip10_package(seed: bytes, indices: list[int]) -> None:
    ours = hd.derive_private(seed, hd.format_path(indices), "ed25519")
    ref = SLIP10.from_seed(seed, curve_name="ed25519")
    chain, private = ref.get_extended_privkey_from_path(indices)
    assert (ours.chain_code, ours.private_key) == (chain, private)
    assert b"\x00" + ours.public().public_key == ref.get_pubkey_from_path(indices)
    # A signature from the derived key verifies under the reference's public key.
    message = b"lantau slip10 " + seed
    signature = Ed25519PrivateKey.from_private_bytes(ours.private_key).sign(message)
    Ed25519PublicKey.from_public_bytes(ref.get_pubkey_from_path(indices)[1:]).verify(
        signature, message
    )


@SETTINGS
@given(SEEDS, st.lists(STEP, min_size=1, max_size=3), st.lists(INDEX, min_size=1, max_size=3))
def test_a_signature_verifies_under_the_key_bip32_derives_from_our_xpub(
    seed: bytes, account_path: list[int], below: list[int]
) -> None:
    """Watch-only: a third party holding only our exported xpub finds the signing key."""
    account = hd.derive_private(seed, hd.format_path(account_path), "secp256k1")
    xpub = hd.serialize_xpub(account.public())
    signer = hd.derive_private(seed, hd.format_path(account_path + below), "secp256k1")
    digest = hashlib.sha256(b"pay 1 BTC " + seed).digest()
    signature = coincurve.PrivateKey(signer.private_key).sign(digest, hasher=None)

    relative = hd.format_path(below)
    watched = BIP32.from_xpub(xpub).get_pubkey_from_path(relative)
    assert coincurve.PublicKey(watched).verify(signature, digest, hasher=None)
    ours = hd.derive_public(account.public(), relative)
    assert ours.public_key == watched == signer.public().public_key
