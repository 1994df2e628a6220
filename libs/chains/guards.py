"""Checks shared by every chain: sizes, keys, chain hints, library failures, signatures."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import coincurve

from libs.chains.model import MAX_ITEMS, MAX_PAYLOAD_BYTES
from libs.curves import SECP256K1_N, verify_ed25519, verify_secp256k1
from proto.errors import ErrorCode, LantauError

_HALF_N = SECP256K1_N // 2
_CHAIN_REF = re.compile(r"[A-Za-z0-9-]{1,32}")


def check_payload_size(payload: bytes) -> None:
    if not isinstance(payload, bytes | bytearray):
        raise LantauError(ErrorCode.INVALID_PAYLOAD, "payload must be bytes")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise LantauError(
            ErrorCode.TRANSACTION_TOO_LARGE,
            f"payload has {len(payload)} bytes, more than the {MAX_PAYLOAD_BYTES} accepted",
        )
    if not payload:
        raise LantauError(ErrorCode.INVALID_TRANSACTION, "payload is empty")


def check_count(what: str, count: int, *, minimum: int = 0) -> None:
    if count > MAX_ITEMS:
        raise LantauError(
            ErrorCode.TRANSACTION_TOO_LARGE,
            f"transaction has {count} {what}, more than the {MAX_ITEMS} accepted",
        )
    if count < minimum:
        raise LantauError(ErrorCode.INVALID_TRANSACTION, f"transaction has no {what}")


@contextmanager
def decoding(what: str) -> Iterator[None]:
    """Turn whatever a third-party parser raises on bad bytes into INVALID_TRANSACTION."""
    try:
        yield
    except LantauError:
        raise
    except BaseException as e:
        # The libraries raise anything from ValueError to RuntimeError, and a Rust
        # panic inside solders arrives as pyo3's PanicException, a BaseException.
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise
        detail = str(e)[:160] or type(e).__name__
        raise LantauError(ErrorCode.INVALID_TRANSACTION, f"{what}: {detail}") from None


def secp256k1_key(public_key: bytes) -> coincurve.PublicKey:
    """The parsed 33-byte compressed secp256k1 key, or INVALID_FIELD."""
    if not isinstance(public_key, bytes) or len(public_key) != 33 or public_key[0] not in (2, 3):
        raise LantauError(
            ErrorCode.INVALID_FIELD, "public_key must be a 33-byte compressed secp256k1 point"
        )
    try:
        return coincurve.PublicKey(public_key)
    except Exception:
        raise LantauError(
            ErrorCode.INVALID_FIELD, "public_key is not a point on secp256k1"
        ) from None


def ed25519_key(public_key: bytes) -> bytes:
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise LantauError(ErrorCode.INVALID_FIELD, "public_key must be a 32-byte Ed25519 key")
    return public_key


def chain_reference(hint: str | None, namespace: str) -> str | None:
    """The reference part of a CAIP-2 hint ("bip122:testnet" or bare "testnet"), or None."""
    if hint is None:
        return None
    if not isinstance(hint, str):
        raise LantauError(ErrorCode.INVALID_FIELD, "chain_hint must be a string")
    ref = hint.removeprefix(f"{namespace}:")
    if not _CHAIN_REF.fullmatch(ref):
        raise LantauError(
            ErrorCode.INVALID_FIELD,
            f"chain_hint {hint[:80]!r} is not '{namespace}:<name>' or '<name>'",
        )
    return ref


def check_signature_count(signatures: list[tuple[bytes, int | None]], expected: int) -> None:
    if not isinstance(signatures, list) or len(signatures) != expected:
        got = len(signatures) if isinstance(signatures, list) else type(signatures).__name__
        raise LantauError(
            ErrorCode.INVALID_FIELD,
            f"expected {expected} signature(s), one per signing input, got {got}",
        )
    for item in signatures:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes)):
            raise LantauError(
                ErrorCode.INVALID_FIELD, "each signature must be a (bytes, recovery id) tuple"
            )


def check_ecdsa(public_key: bytes, digest: bytes, signature: bytes) -> None:
    """Refuse anything but a low-S 64-byte r||s that verifies for ``public_key``."""
    if len(signature) != 64:
        raise LantauError(
            ErrorCode.SIGNATURE_VERIFICATION_FAILED,
            f"ECDSA signature has {len(signature)} bytes, expected 64 (r||s)",
        )
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < SECP256K1_N and 0 < s <= _HALF_N):
        raise LantauError(
            ErrorCode.SIGNATURE_VERIFICATION_FAILED,
            "ECDSA signature r or s out of range (S must be low, as Bitcoin and Ethereum require)",
        )
    verify_secp256k1(public_key, digest, signature)


def check_recovery_id(public_key: bytes, digest: bytes, signature: bytes, recid: int | None) -> int:
    """The recovery id, checked: it must recover ``public_key`` (Ethereum's v is built from it)."""
    if recid not in (0, 1):
        raise LantauError(
            ErrorCode.SIGNATURE_VERIFICATION_FAILED, "ECDSA recovery id must be 0 or 1"
        )
    recovered = coincurve.PublicKey.from_signature_and_message(
        signature + bytes([recid]), digest, hasher=None
    )
    if recovered.format(compressed=True) != public_key:
        raise LantauError(
            ErrorCode.SIGNATURE_VERIFICATION_FAILED,
            "ECDSA recovery id does not recover the key's public key",
        )
    return recid


def check_ed25519(public_key: bytes, message: bytes, signature: bytes) -> None:
    if len(signature) != 64:
        raise LantauError(
            ErrorCode.SIGNATURE_VERIFICATION_FAILED,
            f"Ed25519 signature has {len(signature)} bytes, expected 64",
        )
    verify_ed25519(public_key, message, signature)
