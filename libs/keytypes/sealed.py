"""Key material sealed under a non-extractable AES-256 key that never leaves the token.

For key types the HSM has no mechanism for (HD seeds, ML-DSA seeds, LMS/HSS trees on
SoftHSM 2.6.1), the material is drawn from the token's RNG, stored only as a sealed
blob, and opened in this process for one operation, after which our copy is zeroed.
Records call this protection "hsm-wrapped" (native token keys are "hsm").

Mechanism: CKM_AES_GCM on the token. SoftHSM 2.6.1 implements it and python-pkcs11
passes the IV and the AAD, so one token operation gives confidentiality and
integrity, and the AAD binds a blob to its key id and key type: no second MAC key,
no encrypt-then-MAC to get right by hand. The 96-bit IV comes from the token RNG for
every seal; random IVs keep one sealing key safe for far more than 2^32 seals, which
key material never approaches.

Blob layout: version (1 byte) || IV (12) || ciphertext || tag (16). The version byte is
also authenticated (it leads the AAD), so it cannot be changed either.

What the wipe does and does not cover: the bytearray we hand out is overwritten when
its `unsealed` block ends. python-pkcs11 returns the decrypted bytes as an immutable
`bytes` (copied to our bytearray and dropped at once), and libraries that consume
the material (coincurve, cryptography, pyhsslms) keep their own copies: those are
freed by Python, not zeroed. The wipe shortens the life of our copy; the process
boundary of the hsm-node is the real protection.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from proto.errors import ErrorCode, LantauError

SEAL_VERSION = 1
_IV_LEN = 12
_TAG_LEN = 16
_MAX_RANDOM = 4096
_AAD_DOMAIN = b"lantau/keytypes/sealed\x00"

# A token-local sealing key (tests, a single HSM): generated on the token, never
# extractable, sensitive, usable only to encrypt and decrypt (not to wrap other keys
# out, not to sign), and not modifiable afterwards.
_SEALING_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.ENCRYPT: True,
    Attribute.DECRYPT: True,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
    Attribute.COPYABLE: False,
    # Last: SoftHSM applies attributes in order and refuses any after this one.
    Attribute.MODIFIABLE: False,
}

# The key domain's sealing key (what hsm-nodes use): the same rights, but extractable
# ONLY wrapped under a trusted key (the domain KEK, set by the Security Officer), like
# every private key Lantau stores, so the admit ceremony can carry it to each HSM of the
# domain and a sealed blob opens on every node of its domain. A private object: the
# token stores its value encrypted under the user PIN.
DOMAIN_SEALING_TEMPLATE: dict[Attribute, object] = {
    **{a: v for a, v in _SEALING_TEMPLATE.items() if a != Attribute.MODIFIABLE},
    Attribute.EXTRACTABLE: True,
    Attribute.WRAP_WITH_TRUSTED: True,
    Attribute.MODIFIABLE: False,
}

# SoftHSM 2.6.1 answers a GCM tag that does not verify with CKR_GENERAL_ERROR
# (measured), where other tokens use CKR_ENCRYPTED_DATA_INVALID. The blob's shape is
# checked first, so on decrypt these mean "does not authenticate".
_TAG_FAILURES: tuple[type[Exception], ...] = (
    pkcs11.GeneralError,
    pkcs11.EncryptedDataInvalid,
    pkcs11.EncryptedDataLenRange,
)


def material_aad(key_id: str, key_type: str) -> bytes:
    """The AAD binding a blob to one key id and type: it opens for no other."""
    kid, ktype = key_id.encode(), key_type.encode()
    if not kid or not ktype:
        raise LantauError(ErrorCode.INVALID_FIELD, "key_id and key_type must not be empty")
    if len(kid) > 0xFFFF or len(ktype) > 0xFFFF:
        raise LantauError(ErrorCode.INVALID_FIELD, "key_id or key_type is too long to bind")
    # Length-prefixed, so ("ab", "c") and ("a", "bc") never give the same AAD.
    return _AAD_DOMAIN + struct.pack(">H", len(ktype)) + ktype + struct.pack(">H", len(kid)) + kid


def find_sealing_key(session: Any, label: str) -> Any:
    """The token's sealing key with this label; refuses a key that could leave the token
    other than wrapped under a trusted key."""
    try:
        key = session.get_key(
            object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=label
        )
    except pkcs11.NoSuchKey:
        raise LantauError(
            ErrorCode.UNKNOWN_KEY, f"no sealing key labelled {label!r} on the token"
        ) from None
    except pkcs11.MultipleObjectsReturned:
        raise LantauError(
            ErrorCode.HSM_ERROR, f"several AES keys are labelled {label!r} on the token"
        ) from None
    _check_sealing_key(key, label)
    return key


def ensure_sealing_key(session: Any, label: str) -> Any:
    """Find the sealing key, or generate it on the token if there is none yet.

    Callers serialise creation per token (the hsm-node has one PKCS#11 worker).
    """
    try:
        return find_sealing_key(session, label)
    except LantauError as e:
        if e.code != ErrorCode.UNKNOWN_KEY:
            raise
    key = session.generate_key(
        KeyType.AES,
        256,
        label=label,
        id=label.encode(),
        store=True,
        template=_SEALING_TEMPLATE,
    )
    _check_sealing_key(key, label)
    return key


def _check_sealing_key(key: Any, label: str) -> None:
    extractable = key[Attribute.EXTRACTABLE] is not False
    rules = (
        (
            not extractable or key[Attribute.WRAP_WITH_TRUSTED] is True,
            "it is extractable other than wrapped under a trusted key",
        ),
        (key[Attribute.SENSITIVE] is True, "it is not sensitive"),
        # SoftHSM 2.6.1 leaves CKA_VALUE_LEN at 0 on a key it unwrapped (measured); the
        # admit ceremony checks the wrapped length (AES-256) before it unwraps.
        (key[Attribute.VALUE_LEN] in (0, 32), "it is not AES-256"),
        (key[Attribute.ENCRYPT] and key[Attribute.DECRYPT], "it cannot encrypt and decrypt"),
        (
            key[Attribute.WRAP] is False and key[Attribute.UNWRAP] is False,
            "it can wrap or unwrap other keys",
        ),
    )
    for ok, why in rules:
        if not ok:
            raise LantauError(ErrorCode.HSM_ERROR, f"key {label!r} cannot be a sealing key: {why}")


def random_bytes(session: Any, n: int) -> bytearray:
    """``n`` bytes from the token's random generator (C_GenerateRandom)."""
    if not 1 <= n <= _MAX_RANDOM:
        raise LantauError(
            ErrorCode.INVALID_FIELD, f"random byte count must be 1..{_MAX_RANDOM}, got {n}"
        )
    return bytearray(session.generate_random(n * 8))


@contextmanager
def fresh_secret(session: Any, n: int) -> Iterator[bytearray]:
    """New key material from the token RNG, zeroed when the block ends."""
    secret = random_bytes(session, n)
    try:
        yield secret
    finally:
        wipe(secret)


def seal(key: Any, plaintext: bytes | bytearray, aad: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` under the token key, bound to ``aad``."""
    if not plaintext:
        raise LantauError(ErrorCode.INVALID_FIELD, "nothing to seal: the material is empty")
    iv = key.session.generate_random(_IV_LEN * 8)
    header = bytes([SEAL_VERSION])
    # The chunked form takes the bytearray as it is; the one-shot form would need an
    # immutable bytes copy of the material first.
    chunks = key.encrypt(
        [plaintext],
        mechanism=Mechanism.AES_GCM,
        mechanism_param=GCMParams(iv, header + aad),
    )
    return header + iv + b"".join(chunks)


def unseal(key: Any, blob: bytes, aad: bytes) -> bytearray:
    """Open a sealed blob; `SEALED_BLOB_INVALID` if it was altered, swapped or sealed elsewhere.

    The caller wipes the result (or uses `unsealed`).
    """
    if len(blob) < 1 + _IV_LEN + _TAG_LEN + 1:
        raise LantauError(ErrorCode.SEALED_BLOB_INVALID, "sealed blob is too short")
    if blob[0] != SEAL_VERSION:
        raise LantauError(
            ErrorCode.SEALED_BLOB_INVALID, f"sealed blob has unknown version {blob[0]}"
        )
    iv, body = bytes(blob[1 : 1 + _IV_LEN]), bytes(blob[1 + _IV_LEN :])
    try:
        plain = key.decrypt(
            body,
            mechanism=Mechanism.AES_GCM,
            mechanism_param=GCMParams(iv, bytes(blob[:1]) + aad),
        )
    except _TAG_FAILURES:
        raise LantauError(
            ErrorCode.SEALED_BLOB_INVALID,
            "sealed blob does not authenticate: altered, sealed for another key id or "
            "type, or sealed under another token key",
        ) from None
    except pkcs11.PKCS11Error as e:
        raise LantauError(
            ErrorCode.HSM_ERROR, f"token could not unseal: {type(e).__name__}"
        ) from None
    out = bytearray(plain)
    del plain
    return out


@contextmanager
def unsealed(key: Any, blob: bytes, aad: bytes) -> Iterator[bytearray]:
    """The material of a sealed blob for one operation, zeroed when the block ends."""
    secret = unseal(key, blob, aad)
    try:
        yield secret
    finally:
        wipe(secret)


def wipe(buf: bytearray) -> None:
    """Overwrite a buffer in place (same length, so the storage is not reallocated)."""
    buf[:] = bytes(len(buf))
