"""ML-DSA (FIPS 204) signatures from a 32-byte seed, through `cryptography` (OpenSSL).

Pure: the caller passes the seed it has just unsealed. FIPS 204 key generation is a
deterministic function of the 32-byte seed xi, so the seed is the whole private key
and the form that is sealed (cryptography's own private_bytes_raw() is this seed).

Signing is hedged (FIPS 204's default: fresh randomness mixed with the key), so two
signatures of one message differ; both verify. The optional context string (at most
255 bytes) separates uses of one key, as FIPS 204 section 5.2 intends.
"""

from __future__ import annotations

from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import mldsa

from proto.errors import ErrorCode, LantauError

MlDsaParameters = Literal["ML-DSA-44", "ML-DSA-65", "ML-DSA-87"]

SEED_LEN = 32
MAX_CONTEXT_LEN = 255
PUBLIC_KEY_LEN: dict[str, int] = {"ML-DSA-44": 1312, "ML-DSA-65": 1952, "ML-DSA-87": 2592}
SIGNATURE_LEN: dict[str, int] = {"ML-DSA-44": 2420, "ML-DSA-65": 3309, "ML-DSA-87": 4627}

# The three classes per table share one interface; typing has no name for it.
_PRIVATE: dict[str, Any] = {
    "ML-DSA-44": mldsa.MLDSA44PrivateKey,
    "ML-DSA-65": mldsa.MLDSA65PrivateKey,
    "ML-DSA-87": mldsa.MLDSA87PrivateKey,
}
_PUBLIC: dict[str, Any] = {
    "ML-DSA-44": mldsa.MLDSA44PublicKey,
    "ML-DSA-65": mldsa.MLDSA65PublicKey,
    "ML-DSA-87": mldsa.MLDSA87PublicKey,
}


def public_key(seed: bytes | bytearray, parameters: MlDsaParameters = "ML-DSA-65") -> bytes:
    """The encoded public key (FIPS 204 pkEncode) of the key generated from ``seed``."""
    return _private(seed, parameters).public_key().public_bytes_raw()


def sign(
    seed: bytes | bytearray,
    message: bytes,
    parameters: MlDsaParameters = "ML-DSA-65",
    context: bytes = b"",
) -> bytes:
    """A hedged ML-DSA signature of ``message`` under the key generated from ``seed``."""
    _check_context(context)
    return _private(seed, parameters).sign(message, context)


def verify(
    public: bytes,
    message: bytes,
    signature: bytes,
    parameters: MlDsaParameters = "ML-DSA-65",
    context: bytes = b"",
) -> bool:
    """True when ``signature`` is a valid ML-DSA signature of ``message`` and ``context``."""
    _check_parameters(parameters)
    _check_context(context)
    if len(public) != PUBLIC_KEY_LEN[parameters]:
        raise LantauError(
            ErrorCode.INVALID_FIELD,
            f"{parameters} public key is {PUBLIC_KEY_LEN[parameters]} bytes, got {len(public)}",
        )
    try:
        key = _PUBLIC[parameters].from_public_bytes(public)
    except UnsupportedAlgorithm:
        raise _unsupported(parameters) from None
    except ValueError:
        raise LantauError(ErrorCode.INVALID_FIELD, f"not a valid {parameters} public key") from None
    try:
        key.verify(signature, message, context)
    except InvalidSignature:
        return False
    return True


def _private(seed: bytes | bytearray, parameters: MlDsaParameters) -> Any:
    _check_parameters(parameters)
    if len(seed) != SEED_LEN:
        raise LantauError(
            ErrorCode.INVALID_SEED, f"an {parameters} seed is {SEED_LEN} bytes, got {len(seed)}"
        )
    try:
        return _PRIVATE[parameters].from_seed_bytes(seed)
    except UnsupportedAlgorithm:
        raise _unsupported(parameters) from None


def _check_parameters(parameters: str) -> None:
    if parameters not in _PRIVATE:
        raise LantauError(
            ErrorCode.INVALID_FIELD,
            f"unknown ML-DSA parameter set {parameters!r}: use one of {sorted(_PRIVATE)}",
        )


def _check_context(context: bytes) -> None:
    if len(context) > MAX_CONTEXT_LEN:
        raise LantauError(
            ErrorCode.INVALID_FIELD,
            f"ML-DSA context is at most {MAX_CONTEXT_LEN} bytes, got {len(context)}",
        )


def _unsupported(parameters: str) -> LantauError:
    return LantauError(
        ErrorCode.INTERNAL, f"this cryptography/OpenSSL build does not provide {parameters}"
    )
