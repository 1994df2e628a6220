"""What each key type is: how it is kept, what it signs, how its signatures are checked.

Pure facts shared by policy (what a request may ask), the signer (what it verifies), the
hsm-node (how it keeps and uses a key) and the CLI. The token's own types (secp256k1,
Ed25519) are token objects ("hsm"); the others are sealed material ("hsm-wrapped") on
tokens without a mechanism for them (SoftHSM 2.6.1 has none).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from libs.keytypes import hd, lms
from proto.common import TX_KINDS, Curve, HssShape, Protection
from proto.errors import ErrorCode, LantauError

NATIVE_TYPES: tuple[Curve, ...] = ("secp256k1", "ed25519")
HD_TYPES: tuple[Curve, ...] = ("bip32-secp256k1", "slip10-ed25519")
SEALED_TYPES: tuple[Curve, ...] = (*HD_TYPES, "ml-dsa-65", "lms-hss")
ALL_TYPES: tuple[Curve, ...] = (*NATIVE_TYPES, *SEALED_TYPES)
# Signing consumes a one-time key: copies sign only from ranges leased by CAS.
STATEFUL_TYPES: tuple[Curve, ...] = ("lms-hss",)

# The signature scheme behind each type: what payloads it takes, how it is verified.
Scheme = Literal["secp256k1", "ed25519", "ml-dsa-65", "lms-hss"]
_SCHEME: dict[str, Scheme] = {
    "secp256k1": "secp256k1",
    "bip32-secp256k1": "secp256k1",
    "ed25519": "ed25519",
    "slip10-ed25519": "ed25519",
    "ml-dsa-65": "ml-dsa-65",
    "lms-hss": "lms-hss",
}
_HD_CURVE: dict[str, hd.HdCurve] = {"bip32-secp256k1": "secp256k1", "slip10-ed25519": "ed25519"}
# Bytes of material drawn from the token RNG and sealed: HD seeds (256 bits, within
# BIP32's 128..512), the FIPS 204 seed xi, and HSS's top tree SEED || I.
MATERIAL_LEN: dict[str, int] = {
    "bip32-secp256k1": 32,
    "slip10-ed25519": 32,
    "ml-dsa-65": 32,
    "lms-hss": lms.MATERIAL_LEN,
}
# PKCS#11 mechanism names a token would report for a native implementation. None of
# them is driven yet (no token here has one): such tokens still get sealed material.
NATIVE_MECHANISMS: dict[str, tuple[str, ...]] = {
    "secp256k1": ("EC_KEY_PAIR_GEN", "ECDSA"),
    "ed25519": ("EC_EDWARDS_KEY_PAIR_GEN", "EDDSA"),
}
# Sealing needs AES-GCM on the token (one call: confidentiality and integrity).
SEALING_MECHANISM = "AES_GCM"
DEFAULT_HSS = HssShape(levels=2, height=10, winternitz=4)
# ML-DSA's FIPS 204 context string: empty, as every other verifier assumes by default.
MLDSA_CONTEXT = b""


def scheme(key_type: str) -> Scheme:
    """The signature scheme of a key type (an HD type signs like its curve)."""
    try:
        return _SCHEME[key_type]
    except KeyError:
        raise LantauError(
            ErrorCode.KEY_TYPE_UNSUPPORTED, f"key type {str(key_type)[:40]!r} is not known"
        ) from None


def is_hd(key_type: str) -> bool:
    return key_type in HD_TYPES


def is_sealed(key_type: str) -> bool:
    return key_type in SEALED_TYPES


def is_stateful(key_type: str) -> bool:
    return key_type in STATEFUL_TYPES


def hd_curve(key_type: str) -> hd.HdCurve:
    """The curve an HD type derives on."""
    if key_type not in _HD_CURVE:
        raise LantauError(ErrorCode.KEY_TYPE_UNSUPPORTED, f"{key_type} is not an HD key type")
    return _HD_CURVE[key_type]


def protection_for(key_type: str, mechanisms: Iterable[str]) -> Protection | None:
    """How a token with ``mechanisms`` keeps ``key_type``; None when it cannot at all."""
    have = set(mechanisms)
    if key_type in NATIVE_MECHANISMS:
        return "hsm" if set(NATIVE_MECHANISMS[key_type]) <= have else None
    if key_type in SEALED_TYPES:
        return "hsm-wrapped" if SEALING_MECHANISM in have else None
    return None


def effective_hss(key_type: str, shape: HssShape | None) -> HssShape | None:
    """The HSS shape a key is made with: the one asked for, the default, or none at all."""
    if key_type == "lms-hss":
        shape = shape or DEFAULT_HSS
        hss_parameters(shape).check()
        return shape
    if shape is not None:
        raise LantauError(ErrorCode.INVALID_FIELD, f"hss applies to lms-hss keys, not {key_type}")
    return None


def hss_parameters(shape: HssShape) -> lms.HssParameters:
    return lms.HssParameters(levels=shape.levels, height=shape.height, winternitz=shape.winternitz)


def check_path(key_type: str, path: str | None) -> str | None:
    """The path an HD key signs at (required, canonical); None for every other type."""
    if not is_hd(key_type):
        if path is not None:
            raise LantauError(
                ErrorCode.INVALID_DERIVATION_PATH,
                f"a {key_type} key is not an HD key: leave out the derivation path",
            )
        return None
    if path is None:
        raise LantauError(
            ErrorCode.INVALID_DERIVATION_PATH,
            f"a {key_type} key signs with a derived child: name its path (e.g. m/44'/60'/0'/0/0)",
        )
    canonical = hd.format_path(hd.parse_path(path, hd_curve(key_type)))
    if canonical != path:
        raise LantauError(
            ErrorCode.INVALID_DERIVATION_PATH, f"write the path as {canonical!r}, not {path!r}"
        )
    return path


def check_payload(key_type: str, payload_kind: str, payload: bytes) -> None:
    """Refuse a blind payload the key type cannot sign meaningfully, naming the rule."""
    s = scheme(key_type)
    if payload_kind in TX_KINDS:
        return  # decoded and checked by libs/chains (which curve signs it, too)
    if s == "secp256k1":
        if payload_kind != "digest":
            raise LantauError(
                ErrorCode.INVALID_PAYLOAD,
                f"{key_type} signs a 32-byte digest: set payload_kind='digest' and hash first",
            )
        if len(payload) != 32:
            raise LantauError(
                ErrorCode.INVALID_PAYLOAD,
                f"{key_type} payload must be a 32-byte digest, got {len(payload)} bytes",
            )
        return
    if payload_kind != "message":
        raise LantauError(
            ErrorCode.INVALID_PAYLOAD,
            f"{key_type} signs the message itself: set payload_kind='message'",
        )
    if not payload:
        raise LantauError(ErrorCode.INVALID_PAYLOAD, f"{key_type} payload is empty")
