"""The record key's seed file: 64 hex characters, made 0600 at creation, refused when
anyone but its owner (and, for Kubernetes secret volumes, its group) can read it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libs.audit.records import RecordKey
from proto.errors import ErrorCode, LantauError

SEED_BYTES = 32


def create(path: str | os.PathLike[str]) -> RecordKey:
    """Make a new seed file (mode 0600 from its creation; never replaces a file)."""
    target = Path(path)
    seed = os.urandom(SEED_BYTES)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise LantauError(
            ErrorCode.FILE_EXISTS, f"record key file {target} exists; refusing to replace a key"
        ) from None
    except OSError as e:
        raise LantauError(
            ErrorCode.FILE_ERROR, f"cannot create record key file {target}: {e.strerror}"
        ) from None
    try:
        os.write(fd, (seed.hex() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return RecordKey(seed)


def load(path: str | os.PathLike[str]) -> RecordKey:
    """Read a seed file, refusing one others may read or anyone but its owner may change."""
    target = Path(path)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise LantauError(
            ErrorCode.FILE_ERROR, f"cannot read record key file {target}: {e.strerror}"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LantauError(ErrorCode.FILE_ERROR, f"record key file {target} is not a file")
        if st.st_mode & 0o027:
            raise LantauError(
                ErrorCode.INSECURE_FILE,
                f"record key file {target} has mode {stat.S_IMODE(st.st_mode):04o}: others may "
                "read it or someone besides its owner may change it; it must be 0600",
            )
        data = os.read(fd, 256)
    except OSError as e:
        raise LantauError(
            ErrorCode.FILE_ERROR, f"cannot read record key file {target}: {e.strerror}"
        ) from None
    finally:
        os.close(fd)
    try:
        seed = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        seed = b""
    if len(seed) != SEED_BYTES:
        raise LantauError(
            ErrorCode.BAD_KEY_FILE,
            f"record key file {target} does not hold a 32-byte Ed25519 seed in hex",
        )
    return RecordKey(seed)


def load_or_create(path: str | os.PathLike[str], create_missing: bool) -> RecordKey:
    if create_missing and not Path(path).exists():
        try:
            return create(path)
        except LantauError as e:
            if e.code != ErrorCode.FILE_EXISTS:  # another process made it first: use it
                raise
    return load(path)
