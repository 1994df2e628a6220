"""Software keys standing in for the HSM, and small builders shared by the chain tests."""

from __future__ import annotations

import coincurve
import nacl.signing
import pytest

from proto.errors import ErrorCode, LantauError

SECRET = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
OTHER_SECRET = bytes.fromhex("1f" * 32)


class Secp:
    """A secp256k1 software key that signs digests the way the HSM path returns them."""

    def __init__(self, secret: bytes = SECRET) -> None:
        self.secret = secret
        self.key = coincurve.PrivateKey(secret)
        self.public = self.key.public_key.format(compressed=True)

    def sign(self, digest: bytes) -> tuple[bytes, int | None]:
        # libsecp256k1 (RFC 6979) always returns low-S, as libs/curves normalises to.
        sig = self.key.sign_recoverable(digest, hasher=None)
        return sig[:64], sig[64]

    def sign_all(self, digests: list[bytes]) -> list[tuple[bytes, int | None]]:
        return [self.sign(d) for d in digests]


class Ed:
    def __init__(self, seed: bytes = b"\x07" * 32) -> None:
        self.seed = seed
        self.key = nacl.signing.SigningKey(seed)
        self.public = bytes(self.key.verify_key)

    def sign(self, message: bytes) -> tuple[bytes, int | None]:
        return self.key.sign(message).signature, None


def refused(code: ErrorCode, fn, *args, **kwargs) -> LantauError:
    """Assert ``fn`` raises a LantauError with ``code``; return it for message checks."""
    with pytest.raises(LantauError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value


def high_s(sig: bytes) -> bytes:
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(sig[32:], "big")
    return sig[:32] + (n - s).to_bytes(32, "big")
