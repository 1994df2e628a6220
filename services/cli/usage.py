"""The one error of the command line itself: asked for something that cannot be done."""

from __future__ import annotations

from proto.errors import ErrorCode, LantauError


class UsageError(LantauError):
    """The command line asks for something that cannot be done as given."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.USAGE, message)
