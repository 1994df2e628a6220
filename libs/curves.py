"""Per-curve signature handling outside the HSM: encoding, normalisation, verification.

The HSM returns raw signatures; before anyone sees one it is normalised (low-S
for ECDSA, as Bitcoin and Ethereum require), given its recovery id, and verified
in software against the key's public key (invariant 5). Every key type goes through
here: HD children as their curve (under the child's public key), ML-DSA-65 and HSS
with their own verifiers (libs/keytypes).
"""

from __future__ import annotations

from typing import NamedTuple

import coincurve
import nacl.exceptions
import nacl.signing

from libs.keytypes import kinds, lms, mldsa
from proto.common import Curve
from proto.errors import ErrorCode, LantauError

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = SECP256K1_N // 2


class FinalSignature(NamedTuple):
    signature: bytes
    recovery_id: int | None


def check_payload(curve: Curve, payload_kind: str, payload: bytes) -> None:
    """Refuse payloads the key type cannot sign meaningfully, naming the rule broken."""
    kinds.check_payload(curve, payload_kind, payload)


def public_key_from_ec_point(curve: Curve, ec_point: bytes) -> bytes:
    """Lantau's public key form from a PKCS#11 CKA_EC_POINT (a DER OCTET STRING).

    secp256k1 -> 33-byte compressed point; Ed25519 -> 32 raw bytes.
    """
    raw = _der_octet_string(ec_point)
    if curve == "secp256k1":
        return coincurve.PublicKey(raw).format(compressed=True)
    if len(raw) != 32:
        raise LantauError(ErrorCode.HSM_ERROR, f"Ed25519 point has {len(raw)} bytes, expected 32")
    return raw


def ec_point_from_public_key(curve: Curve, public_key: bytes) -> bytes:
    """CKA_EC_POINT (DER OCTET STRING) for a public key in Lantau's form."""
    raw = (
        coincurve.PublicKey(public_key).format(compressed=False)
        if curve == "secp256k1"
        else public_key
    )
    return bytes([0x04, len(raw)]) + raw


def _der_octet_string(data: bytes) -> bytes:
    # SoftHSM and most HSMs wrap the point in an OCTET STRING; some return it bare.
    if len(data) >= 2 and data[0] == 0x04:
        length = data[1]
        if length < 0x80 and len(data) == 2 + length:
            return data[2:]
        if length == 0x81 and len(data) >= 3 and len(data) == 3 + data[2]:
            return data[3:]
    return data


def finalize(curve: Curve, public_key: bytes, payload: bytes, raw_sig: bytes) -> FinalSignature:
    """Normalise a raw HSM signature and verify it in software; raise if it does not verify.

    ``public_key`` is the key that signed: an HD key's derived child."""
    scheme = kinds.scheme(curve)
    if scheme == "secp256k1":
        return _finalize_secp256k1(public_key, payload, raw_sig)
    if scheme == "ed25519":
        verify_ed25519(public_key, payload, raw_sig)
    elif scheme == "ml-dsa-65":
        if not mldsa.verify(public_key, payload, raw_sig, "ML-DSA-65", kinds.MLDSA_CONTEXT):
            raise LantauError(
                ErrorCode.SIGNATURE_VERIFICATION_FAILED,
                "ML-DSA-65 signature does not verify against the key's public key",
            )
    elif not lms.verify(public_key, payload, raw_sig):
        raise LantauError(
            ErrorCode.SIGNATURE_VERIFICATION_FAILED,
            "HSS signature does not verify against the key's public key",
        )
    return FinalSignature(raw_sig, None)


def _finalize_secp256k1(public_key: bytes, digest: bytes, raw_sig: bytes) -> FinalSignature:
    if len(raw_sig) != 64:
        raise LantauError(
            ErrorCode.SIGNATURE_VERIFICATION_FAILED, f"ECDSA signature has {len(raw_sig)} bytes"
        )
    r = int.from_bytes(raw_sig[:32], "big")
    s = int.from_bytes(raw_sig[32:], "big")
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise LantauError(ErrorCode.SIGNATURE_VERIFICATION_FAILED, "ECDSA r or s out of range")
    if s > _HALF_N:
        s = SECP256K1_N - s
    compact = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    for recid in (0, 1):
        try:
            recovered = coincurve.PublicKey.from_signature_and_message(
                compact + bytes([recid]), digest, hasher=None
            )
        except Exception:
            continue
        if recovered.format(compressed=True) == public_key:
            verify_secp256k1(public_key, digest, compact)
            return FinalSignature(compact, recid)
    raise LantauError(
        ErrorCode.SIGNATURE_VERIFICATION_FAILED,
        "ECDSA signature does not verify against the key's public key",
    )


def verify_secp256k1(public_key: bytes, digest: bytes, compact: bytes) -> None:
    sig = coincurve.ecdsa.cdata_to_der(coincurve.ecdsa.deserialize_compact(compact))
    if not coincurve.PublicKey(public_key).verify(sig, digest, hasher=None):
        raise LantauError(
            ErrorCode.SIGNATURE_VERIFICATION_FAILED,
            "ECDSA signature does not verify against the key's public key",
        )


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> None:
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        raise LantauError(
            ErrorCode.SIGNATURE_VERIFICATION_FAILED,
            "Ed25519 signature does not verify against the key's public key",
        ) from None
