"""Custodians: the people who each hold one share, and their X25519 keys.

A custodian's share is sealed (libsodium sealed box) to their X25519 public key, so
only the holder of the matching private key can open it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import nacl.exceptions
import nacl.public

from proto.common import Name
from proto.errors import ErrorCode, LantauError

PublicKeyHex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
PRIVATE_KEY_BYTES = 32


class Custodian(msgspec.Struct, frozen=True, kw_only=True):
    """A share holder: a name for humans and the X25519 public key shares are sealed to."""

    name: Name
    public_key: PublicKeyHex


def custodian_keygen() -> tuple[str, bytes]:
    """A new X25519 key pair: (public key as lowercase hex, private key as 32 bytes)."""
    key = nacl.public.PrivateKey.generate()
    return key.public_key.encode().hex(), key.encode()


def public_key_of(private_key: bytes) -> str:
    """The lowercase hex public key of a 32-byte X25519 private key."""
    return _private_key(private_key).public_key.encode().hex()


def validate_custodians(custodians: list[Custodian]) -> None:
    """Refuse a custodian list that is malformed or names a person or key twice."""
    names: set[str] = set()
    keys: set[str] = set()
    for position, c in enumerate(custodians, start=1):
        try:
            msgspec.convert(msgspec.structs.asdict(c), Custodian)
        except (msgspec.ValidationError, TypeError) as e:
            # msgspec names the field and the rule, never the value.
            raise LantauError(ErrorCode.INVALID_FIELD, f"custodian #{position}: {e}") from None
        if c.name in names:
            raise LantauError(ErrorCode.INVALID_FIELD, f"custodian {c.name!r} is listed twice")
        # One person with two keys would hold two shares: the quorum would count them twice.
        if c.public_key in keys:
            raise LantauError(
                ErrorCode.INVALID_FIELD,
                f"custodian {c.name!r} has the same public key as another custodian",
            )
        names.add(c.name)
        keys.add(c.public_key)


def seal(public_key: str, plaintext: bytes, custodian: str) -> bytes:
    """Encrypt to a custodian's public key (anonymous sender: the sealed box proves no origin)."""
    try:
        return nacl.public.SealedBox(nacl.public.PublicKey(bytes.fromhex(public_key))).encrypt(
            plaintext
        )
    except (ValueError, TypeError, nacl.exceptions.CryptoError):
        # libsodium refuses low-order points (the shared secret would be all zeros).
        raise LantauError(
            ErrorCode.INVALID_FIELD,
            f"the public key of custodian {custodian!r} is not a usable X25519 key",
        ) from None


def unseal(private_key: bytes, ciphertext: bytes) -> bytes | None:
    """Decrypt a sealed box; None if it does not decrypt (wrong key or altered bytes)."""
    try:
        return nacl.public.SealedBox(_private_key(private_key)).decrypt(ciphertext)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return None


def _private_key(private_key: bytes) -> nacl.public.PrivateKey:
    if not isinstance(private_key, bytes | bytearray) or len(private_key) != PRIVATE_KEY_BYTES:
        raise LantauError(
            ErrorCode.INVALID_FIELD,
            f"a custodian private key is {PRIVATE_KEY_BYTES} bytes",
        )
    return nacl.public.PrivateKey(bytes(private_key))
