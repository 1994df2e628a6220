"""What the master secret of a backup set is turned into, each under its own HKDF label.

The master secret is 32 random bytes that only ever exist split into shares, or for the
length of a ceremony. Everything else is derived from it with HKDF-SHA256, one label per
use, so learning one derived value (the token PIN, typed into an HSM) reveals nothing
about another (the KEK). The labels are a format: changing one locks every existing
backup out, and tests/backup pin them.
"""

from __future__ import annotations

import hashlib
import hmac
from types import TracebackType

import msgspec
import nacl.signing
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proto.errors import ErrorCode, LantauError

MASTER_SECRET_BYTES = 32
PIN_BYTES = 16  # 32 hex characters: SoftHSM takes 4 to 255; check a production HSM's limit
KEK_BYTES = 32
FINGERPRINT_BYTES = 16
TAG_BYTES = 16

LABEL_PIN = b"lantau/backup/v1/token-pin"
LABEL_SO_PIN = b"lantau/backup/v1/token-so-pin"
LABEL_KEK = b"lantau/backup/v1/kek"
# The seed of the set's Ed25519 key: it signs the clone authorizations that move keys
# into and out of the set, and the ceremonies' manifests ([evidence] backup_set_keys).
LABEL_SIGNING = b"lantau/backup/v1/authorization-key"
SIGNING_SEED_BYTES = 32
LABEL_FINGERPRINT = b"lantau/backup/v1/set-fingerprint"
LABEL_SHARE_TAG = b"lantau/backup/v1/share-tag"


def hkdf(
    master: bytes | bytearray,
    label: bytes,
    context: bytes,
    length: int,
    *,
    salt: bytes | None = None,
) -> bytes:
    """HKDF-SHA256 of the master secret with info = label, a zero byte, then the context."""
    return HKDF(
        algorithm=hashes.SHA256(), length=length, salt=salt, info=label + b"\x00" + context
    ).derive(bytes(master))


def set_fingerprint(
    master: bytes | bytearray,
    *,
    backup_set: str,
    nonce: bytes,
    identifier: int,
    threshold: int,
    count: int,
) -> str:
    """A public name for one sharing of the secret: commits to it, reveals nothing of it.

    The random nonce makes every sharing's fingerprint new, even of the same secret; being
    keyed by the secret, a forged share set cannot carry a genuine set's fingerprint.
    """
    context = msgspec.msgpack.encode([backup_set, identifier, threshold, count])
    return hkdf(master, LABEL_FINGERPRINT, context, FINGERPRINT_BYTES, salt=nonce).hex()


def share_tag(master: bytes | bytearray, backup_set: str, fields: list[object]) -> bytes:
    """A MAC over one share and its header, checked once the secret is back.

    Sealed boxes are anonymous: anyone with a custodian's public key can seal a share to
    them. The tag shows a share was issued by whoever held the secret.
    """
    key = hkdf(master, LABEL_SHARE_TAG, backup_set.encode(), 32)
    return hmac.new(key, msgspec.msgpack.encode(fields), hashlib.sha256).digest()[:TAG_BYTES]


class BackupSecrets:
    """The backup HSM's credentials, in memory for one ceremony.

    Use as a context manager or call wipe(): the buffers are zeroed. What it hands out
    (``pin`` a str, ``kek`` bytes, the signing key) are copies Python cannot wipe: keep
    them short-lived.
    """

    __slots__ = (
        "_kek",
        "_pin",
        "_signing_seed",
        "_so_pin",
        "_wiped",
        "backup_set",
        "set_fingerprint",
    )

    def __init__(self, master: bytes | bytearray, *, backup_set: str, set_fingerprint: str) -> None:
        self.backup_set = backup_set
        self.set_fingerprint = set_fingerprint
        context = backup_set.encode()
        self._pin = bytearray(hkdf(master, LABEL_PIN, context, PIN_BYTES).hex().encode())
        self._so_pin = bytearray(hkdf(master, LABEL_SO_PIN, context, PIN_BYTES).hex().encode())
        self._kek = bytearray(hkdf(master, LABEL_KEK, context, KEK_BYTES))
        self._signing_seed = bytearray(hkdf(master, LABEL_SIGNING, context, SIGNING_SEED_BYTES))
        self._wiped = False

    @property
    def pin(self) -> str:
        """The backup token's user PIN (32 lowercase hex characters)."""
        self._check()
        return self._pin.decode()

    @property
    def so_pin(self) -> str:
        """The backup token's Security Officer PIN (32 lowercase hex characters)."""
        self._check()
        return self._so_pin.decode()

    def signing_key(self) -> nacl.signing.SigningKey:
        """The set's Ed25519 key: signs clone authorizations and ceremony manifests."""
        self._check()
        return nacl.signing.SigningKey(bytes(self._signing_seed))

    @property
    def signing_public_key(self) -> str:
        """The hex public key to pin in [evidence] backup_set_keys."""
        return self.signing_key().verify_key.encode().hex()

    @property
    def kek(self) -> bytes:
        """The 32-byte backup key-encryption secret."""
        self._check()
        return bytes(self._kek)

    @property
    def wiped(self) -> bool:
        return getattr(self, "_wiped", True)

    def wipe(self) -> None:
        """Zero the buffers; later reads refuse."""
        for name in ("_pin", "_so_pin", "_kek", "_signing_seed"):
            buf = getattr(self, name, None)  # absent if __init__ failed half way
            if buf is not None:
                buf[:] = bytes(len(buf))
                buf.clear()
        self._wiped = True

    def _check(self) -> None:
        if self.wiped:
            raise LantauError(ErrorCode.INTERNAL, "the backup secrets were wiped after use")

    def __enter__(self) -> BackupSecrets:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.wipe()

    def __del__(self) -> None:
        self.wipe()

    def __repr__(self) -> str:
        state = "wiped" if self.wiped else "held"
        return (
            f"BackupSecrets(backup_set={self.backup_set!r}, "
            f"set_fingerprint={self.set_fingerprint!r}, {state})"
        )

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("backup secrets are not picklable")
