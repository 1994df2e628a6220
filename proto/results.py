"""Terminal outcomes, one per request, on ``lantau.result.<request_id>``."""

from __future__ import annotations

from typing import Literal

from proto.base import Message
from proto.common import Curve, DerivationPath, ErrorInfo, Protection, TimestampMs

SignStatus = Literal["signed", "rejected", "expired", "failed"]
KeyStatus = Literal["created", "rejected", "expired", "failed"]


class SignResult(Message, tag="sign_result", frozen=True, kw_only=True):
    request_id: str
    # Hash of the request this answers; a client that reused an id for different
    # content sees a mismatch and knows the result is not its own.
    request_hash: str = ""
    status: SignStatus
    key_id: str = ""
    curve: Curve | None = None
    # secp256k1: 64-byte r||s with low S; Ed25519: the 64-byte RFC 8032 signature.
    signature: bytes | None = None
    # secp256k1 only: 0 or 1, so Ethereum can recover the address (v = 27 + id).
    recovery_id: int | None = None
    # Every signature made, in the order of the bytes signed (a PSBT signs one per input
    # of the key); ``signature`` is the first.
    signatures: list[bytes] = []
    # For a decoded transaction: what a wallet broadcasts (the signed EVM transaction,
    # the PSBT with its signatures in place, the signed Solana transaction).
    signed_payload: bytes | None = None
    # secp256k1: 33-byte compressed point; Ed25519: 32 raw bytes. HD keys: the derived
    # child's (at ``path``), which the signature verifies under.
    public_key: bytes | None = None
    node: str | None = None
    error: ErrorInfo | None = None
    completed_at_ms: TimestampMs = 0
    # HD keys: the derivation path of the child key that signed.
    path: DerivationPath | None = None


class KeyResult(Message, tag="key_result", frozen=True, kw_only=True):
    request_id: str
    request_hash: str = ""
    status: KeyStatus
    key_id: str = ""
    curve: Curve | None = None
    public_key: bytes | None = None
    node: str | None = None
    error: ErrorInfo | None = None
    completed_at_ms: TimestampMs = 0
    protection: Protection | None = None
    # bip32-secp256k1: the root's xpub (Base58Check), for watch-only derivation.
    xpub: str | None = None


Result = SignResult | KeyResult


def unsuccessful(
    *,
    for_key: bool,
    request_id: str,
    request_hash: str,
    status: str,
    key_id: str,
    code: str,
    message: str,
    completed_at_ms: int,
    curve: Curve | None = None,
) -> Result:
    """The terminal result of a request that produced no signature (or no key)."""
    error = ErrorInfo(code=code, message=message)
    if for_key:
        return KeyResult(
            request_id=request_id,
            request_hash=request_hash,
            status=status,  # type: ignore[arg-type]
            key_id=key_id,
            curve=curve,
            error=error,
            completed_at_ms=completed_at_ms,
        )
    return SignResult(
        request_id=request_id,
        request_hash=request_hash,
        status=status,  # type: ignore[arg-type]
        key_id=key_id,
        error=error,
        completed_at_ms=completed_at_ms,
    )
