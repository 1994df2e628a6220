"""Files holding secrets (keys, PINs, seeds): created 0600 at open, never chmod'ed after.

Writing first and chmod'ing later leaves a window in which the secret is readable
under the umask; opening with the mode closes it.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_secret(path: str | os.PathLike[str], data: str | bytes, *, replace: bool = False) -> None:
    """Create ``path`` with mode 0600 holding ``data``; an existing file is refused unless
    ``replace``, which removes it first (never reopens a file that may be more open)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
