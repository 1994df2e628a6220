"""Error codes shared by the wire (``ErrorInfo.code``) and Python (``LantauError.code``)."""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    # The message itself is bad: never retried.
    MALFORMED_MESSAGE = "MALFORMED_MESSAGE"
    WRONG_MESSAGE_TYPE = "WRONG_MESSAGE_TYPE"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    INVALID_FIELD = "INVALID_FIELD"
    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    # Authentication and authorisation.
    UNKNOWN_REQUESTER = "UNKNOWN_REQUESTER"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    REQUEST_EXPIRED = "REQUEST_EXPIRED"
    REQUEST_FROM_FUTURE = "REQUEST_FROM_FUTURE"
    REQUEST_ID_CONFLICT = "REQUEST_ID_CONFLICT"
    ACCESS_DENIED = "ACCESS_DENIED"
    POLICY_DENIED = "POLICY_DENIED"
    APPROVAL_REJECTED = "APPROVAL_REJECTED"
    APPROVAL_EXPIRED = "APPROVAL_EXPIRED"
    UNKNOWN_APPROVER = "UNKNOWN_APPROVER"
    NOT_PENDING = "NOT_PENDING"
    WRONG_GROUP = "WRONG_GROUP"
    SELF_APPROVAL = "SELF_APPROVAL"
    DUPLICATE_APPROVAL = "DUPLICATE_APPROVAL"
    APPROVAL_MISMATCH = "APPROVAL_MISMATCH"
    # Keys.
    UNKNOWN_KEY = "UNKNOWN_KEY"
    KEY_EXISTS = "KEY_EXISTS"
    CURVE_MISMATCH = "CURVE_MISMATCH"
    # The HSM cannot export this key type even wrapped (SoftHSM 2.6: EdDSA keys).
    KEY_NOT_WRAPPABLE = "KEY_NOT_WRAPPABLE"
    # Execution.
    HSM_UNAVAILABLE = "HSM_UNAVAILABLE"
    HSM_ERROR = "HSM_ERROR"
    SIGNATURE_VERIFICATION_FAILED = "SIGNATURE_VERIFICATION_FAILED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    DEAD_LETTER = "DEAD_LETTER"
    INTERNAL = "INTERNAL"


def printable(text: str, limit: int = 200) -> str:
    """Text from outside made fit for an error message or a log line: non-printable
    characters escaped, at most ``limit`` characters, then how many were left out."""
    out: list[str] = []
    size = 0
    for i, char in enumerate(text):
        piece = _escape(char)
        if size + len(piece) > limit:
            return "".join(out) + f"...(+{len(text) - i} chars)"
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _escape(char: str) -> str:
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class LantauError(Exception):
    """An error with a wire code and a human sentence naming the field or rule at fault.

    The message must never contain secrets: it travels to clients and logs.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TransientError(Exception):
    """A failure worth retrying later (HSM busy, node down, bus hiccup).

    ``delivered`` is False only when the request certainly never reached its target
    (NATS had no responder): the operation did not happen.
    """

    def __init__(self, code: ErrorCode, message: str, *, delivered: bool = True) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.delivered = delivered
