"""Share files and custodian key files: created 0600 at open, never overwritten.

A file is created with O_CREAT|O_EXCL and mode 0600 in the same call, so it never
exists with looser permissions, and a path that exists (even as a dangling symlink) is
refused rather than replaced.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import msgspec

from libs.backup.custodian import PRIVATE_KEY_BYTES, public_key_of
from libs.backup.envelope import FORMAT_VERSION, ShareEnvelope
from proto.errors import ErrorCode, LantauError

MAX_FILE_BYTES = 64 * 1024

_envelope_decoder = msgspec.json.Decoder(ShareEnvelope)
_encoder = msgspec.json.Encoder()


def write_share(path: str | os.PathLike[str], envelope: ShareEnvelope) -> None:
    """Write an envelope as JSON to a new file of mode 0600; an existing path is refused."""
    _create(Path(path), _encoder.encode(envelope) + b"\n", "share file")


def read_share(path: str | os.PathLike[str]) -> ShareEnvelope:
    """Read a share file written by write_share."""
    path = Path(path)
    data = _read(path, "share file", ErrorCode.BAD_SHARE)
    try:
        envelope = _envelope_decoder.decode(data)
    except msgspec.ValidationError as e:
        # msgspec names the field and the rule at fault, never the value.
        raise LantauError(
            ErrorCode.BAD_SHARE, f"share file {path} is not a share envelope: {e}"
        ) from None
    except msgspec.DecodeError:
        raise LantauError(ErrorCode.BAD_SHARE, f"share file {path} is not JSON") from None
    if envelope.v != FORMAT_VERSION:
        raise LantauError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"share file {path} is format v{envelope.v}; this version reads v{FORMAT_VERSION}",
        )
    return envelope


def write_custodian_key(path: str | os.PathLike[str], private_key: bytes) -> str:
    """Write a custodian's private key (hex) to a new 0600 file; returns the public key."""
    public_key = public_key_of(private_key)  # refuses a key of the wrong size
    _create(Path(path), bytes(private_key).hex().encode() + b"\n", "custodian key file")
    return public_key


def read_custodian_key(path: str | os.PathLike[str]) -> bytes:
    """Read a custodian's private key; refuses a file others can read or write, like ssh."""
    path = Path(path)
    data = _read(path, "custodian key file", ErrorCode.BAD_KEY_FILE, private=True)
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != PRIVATE_KEY_BYTES:
        raise LantauError(
            ErrorCode.BAD_KEY_FILE,
            f"custodian key file {path} does not hold a {PRIVATE_KEY_BYTES}-byte key "
            f"as {2 * PRIVATE_KEY_BYTES} hex characters",
        )
    return key


def _create(path: Path, data: bytes, what: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise LantauError(
            ErrorCode.FILE_EXISTS, f"{what} {path} exists: refusing to overwrite it"
        ) from None
    except OSError as e:
        raise LantauError(
            ErrorCode.FILE_ERROR, f"cannot create {what} {path}: {e.strerror}"
        ) from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        # A ceremony writes to removable media: the file must be on it before it is pulled.
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise LantauError(
            ErrorCode.FILE_ERROR, f"cannot write {what} {path}: {e.strerror}"
        ) from None
    os.close(fd)


def _read(path: Path, what: str, garbled: ErrorCode, *, private: bool = False) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO put in the file's place must not hang the ceremony.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise LantauError(
            ErrorCode.FILE_ERROR, f"cannot read {what} {path}: {e.strerror}"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LantauError(ErrorCode.FILE_ERROR, f"{what} {path} is not a regular file")
        if private and st.st_mode & 0o077:
            raise LantauError(
                ErrorCode.INSECURE_FILE,
                f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}: others may read or "
                "change it; it must be 0600 (and ask how it got looser)",
            )
        chunks = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise LantauError(
            ErrorCode.FILE_ERROR, f"cannot read {what} {path}: {e.strerror}"
        ) from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise LantauError(garbled, f"{what} {path} is larger than {MAX_FILE_BYTES} bytes")
    return b"".join(chunks)
