"""TOTP (RFC 6238) codes checked with ``pyotp``: one step either side of now, and never a
step at or before the last one accepted (a code is good once). Pure, no I/O."""

from __future__ import annotations

import base64
import datetime
import hmac

import pyotp

from proto.errors import ErrorCode, LantauError

STEP_S = 30
DIGITS = 6
SECRET_BYTES = 20
ISSUER = "Lantau"


def _totp(secret: bytes | bytearray) -> pyotp.TOTP:
    return pyotp.TOTP(base64.b32encode(bytes(secret)).decode(), digits=DIGITS, interval=STEP_S)


def accept(secret: bytes | bytearray, code: str, now_s: float, last_step: int) -> int:
    """The time step ``code`` belongs to, or SECOND_FACTOR_INVALID. ``last_step`` is the
    step last accepted for this secret (0: never)."""
    totp = _totp(secret)
    for drift in (0, -1, 1):
        at = datetime.datetime.fromtimestamp(now_s + drift * STEP_S, tz=datetime.UTC)
        if hmac.compare_digest(totp.at(at), code):
            step = int(totp.timecode(at))
            if step <= last_step:
                raise LantauError(
                    ErrorCode.SECOND_FACTOR_INVALID, "this TOTP code was already used"
                )
            return step
    raise LantauError(ErrorCode.SECOND_FACTOR_INVALID, "the TOTP code is wrong or too old")


def provisioning_uri(secret: bytes | bytearray, person: str) -> str:
    """The otpauth:// URI an authenticator app reads (shown once, to the person)."""
    return _totp(secret).provisioning_uri(name=person, issuer_name=ISSUER)
