"""Share envelopes: one custodian's share sealed to their key, and opening one.

The envelope's header (set, fingerprint, custodian, share number, threshold, count) is
public; a copy of it is sealed with the SLIP-39 mnemonic, so an edited header is caught
when the share is opened. Pure functions: files.py does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Annotated, Any

import msgspec
import shamir_mnemonic as slip39

from libs.backup.custodian import PublicKeyHex, public_key_of, unseal
from proto.common import Name
from proto.errors import ErrorCode, LantauError

FORMAT_VERSION = 1
# SLIP-39 stores the share number and the count in 4 bits each.
MAX_SHARES = 16

BackupSetId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Fingerprint = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]
ShareNumber = Annotated[int, msgspec.Meta(ge=1, le=MAX_SHARES)]


class ShareEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """One custodian's share, sealed to their key; the header is public, the share is not."""

    v: int = FORMAT_VERSION
    backup_set: BackupSetId
    # Names one sharing of the secret: a reshare gives a new one, the secret stays.
    set_fingerprint: Fingerprint
    custodian: Name
    custodian_key: PublicKeyHex
    index: ShareNumber
    threshold: ShareNumber
    count: ShareNumber
    ciphertext: Annotated[bytes, msgspec.Meta(max_length=4096)]


class Payload(msgspec.Struct, frozen=True, kw_only=True):
    """What the sealed box holds: the header again, the mnemonic, and what binds them."""

    v: int
    backup_set: str
    set_fingerprint: str
    custodian: str
    custodian_key: str
    index: int
    threshold: int
    count: int
    nonce: bytes
    mnemonic: str
    tag: bytes


HEADER = (
    "v",
    "backup_set",
    "set_fingerprint",
    "custodian",
    "custodian_key",
    "index",
    "threshold",
    "count",
)

_payload_decoder = msgspec.msgpack.Decoder(Payload)


class DecryptedShare:
    """An opened share: its public header, and the mnemonic, held in a wipeable buffer."""

    __slots__ = (
        "_mnemonic",
        "_wiped",
        "backup_set",
        "count",
        "custodian",
        "custodian_key",
        "index",
        "nonce",
        "set_fingerprint",
        "tag",
        "threshold",
    )

    def __init__(
        self,
        *,
        backup_set: str,
        set_fingerprint: str,
        custodian: str,
        custodian_key: str,
        index: int,
        threshold: int,
        count: int,
        nonce: bytes,
        mnemonic: str,
        tag: bytes,
    ) -> None:
        self.backup_set = backup_set
        self.set_fingerprint = set_fingerprint
        self.custodian = custodian
        self.custodian_key = custodian_key
        self.index = index
        self.threshold = threshold
        self.count = count
        self.nonce = nonce
        self.tag = tag
        self._mnemonic = bytearray(mnemonic.encode())
        self._wiped = False

    @property
    def mnemonic(self) -> str:
        """The SLIP-39 mnemonic: secret, never to be logged or shown."""
        if self.wiped:
            raise LantauError(ErrorCode.INTERNAL, f"{self.label} was wiped after use")
        return self._mnemonic.decode()

    @property
    def label(self) -> str:
        """How messages name this share: number and custodian, never content."""
        return f"share #{self.index} ({self.custodian})"

    @property
    def wiped(self) -> bool:
        return getattr(self, "_wiped", True)

    def wipe(self) -> None:
        buf = getattr(self, "_mnemonic", None)  # absent if __init__ failed half way
        if buf is not None:
            zero(buf)
            buf.clear()
        self._wiped = True

    def __enter__(self) -> DecryptedShare:
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
            f"DecryptedShare(backup_set={self.backup_set!r}, "
            f"set_fingerprint={self.set_fingerprint!r}, custodian={self.custodian!r}, "
            f"index={self.index}, threshold={self.threshold}, count={self.count}, {state})"
        )

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("decrypted shares are not picklable")


def open_share(envelope: ShareEnvelope, custodian_private_key: bytes) -> DecryptedShare:
    """Decrypt a custodian's share and check that the sealed header matches the envelope."""
    _check_envelope(envelope)
    who = f"share #{envelope.index} ({envelope.custodian}) of backup set {envelope.backup_set!r}"
    if public_key_of(custodian_private_key) != envelope.custodian_key:
        raise LantauError(
            ErrorCode.WRONG_CUSTODIAN_KEY,
            f"{who} is sealed to key {envelope.custodian_key[:16]}..., "
            "not to the key given: is it the right custodian's key file?",
        )
    plaintext = unseal(custodian_private_key, envelope.ciphertext)
    if plaintext is None:
        raise LantauError(
            ErrorCode.BAD_SHARE,
            f"{who} does not decrypt: its ciphertext was altered or sealed to another key",
        )
    payload = _decode_payload(plaintext)
    if payload is None:
        raise LantauError(ErrorCode.BAD_SHARE, f"{who} decrypts to something not a share")
    edited = [f for f in HEADER if getattr(payload, f) != getattr(envelope, f)]
    if edited:
        raise LantauError(
            ErrorCode.BAD_SHARE,
            f"{who}: the envelope's {', '.join(edited)} disagree(s) with the sealed copy: "
            "the header was edited",
        )
    share = DecryptedShare(
        backup_set=payload.backup_set,
        set_fingerprint=payload.set_fingerprint,
        custodian=payload.custodian,
        custodian_key=payload.custodian_key,
        index=payload.index,
        threshold=payload.threshold,
        count=payload.count,
        nonce=payload.nonce,
        mnemonic=payload.mnemonic,
        tag=payload.tag,
    )
    parse_mnemonic(share)
    return share


def parse_mnemonic(share: DecryptedShare) -> slip39.Share:
    """The SLIP-39 share, checked against the header it travelled with."""
    parsed = _share_from_mnemonic(share.mnemonic)
    if parsed is None:
        raise LantauError(
            ErrorCode.BAD_SHARE,
            f"{share.label}: the mnemonic is not a valid SLIP-39 share "
            "(unknown word, wrong length or checksum)",
        )
    expected = (share.index - 1, share.threshold, share.count, 0, 1, False)
    found = (
        parsed.group_index,
        parsed.group_threshold,
        parsed.group_count,
        parsed.index,
        parsed.member_threshold,
        parsed.extendable,
    )
    if found != expected:
        raise LantauError(
            ErrorCode.BAD_SHARE,
            f"{share.label}: the mnemonic's share number, threshold or count disagree with "
            "its header",
        )
    return parsed


def header_of(s: DecryptedShare) -> dict[str, Any]:
    # Only v1 shares are ever opened (open_share refuses other versions).
    return {"v": FORMAT_VERSION, **{f: getattr(s, f) for f in HEADER[1:]}}


def _check_envelope(envelope: ShareEnvelope) -> None:
    if not isinstance(envelope, ShareEnvelope):
        raise LantauError(ErrorCode.INVALID_FIELD, "expected a ShareEnvelope")
    if envelope.v != FORMAT_VERSION:
        raise LantauError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"share envelope format v{envelope.v} is not supported (this version reads v1)",
        )
    try:
        # Structs built in code skip the constraints that decoding enforces.
        msgspec.convert(msgspec.structs.asdict(envelope), ShareEnvelope)
    except msgspec.ValidationError as e:
        raise LantauError(ErrorCode.BAD_SHARE, f"malformed share envelope: {e}") from None
    if not envelope.threshold <= envelope.count or not envelope.index <= envelope.count:
        raise LantauError(
            ErrorCode.BAD_SHARE,
            f"share #{envelope.index} ({envelope.custodian}): share number and threshold "
            f"must not exceed the count ({envelope.count})",
        )


def labels(shares: Iterable[DecryptedShare]) -> str:
    return ", ".join(s.label for s in sorted(shares, key=lambda s: s.index))


def zero(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


# The library's errors quote mnemonic words. These wrappers return None instead, so that the
# LantauError raised next is not even chained (__context__) to a message holding a share.


def _share_from_mnemonic(mnemonic: str) -> slip39.Share | None:
    try:
        return slip39.Share.from_mnemonic(mnemonic)
    except Exception:
        return None


def _decode_payload(plaintext: bytes) -> Payload | None:
    try:
        return _payload_decoder.decode(plaintext)
    except msgspec.DecodeError:
        return None
