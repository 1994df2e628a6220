"""NATS headers a service reads, checked before use: anyone who can publish can set them.

A header value ends up in subjects (``lantau.result.<id>``), KV keys and log lines. One
with a space, '.', '*', '>', a newline or a few thousand characters breaks the subject
(NATS closes the connection: "maximum control line exceeded"), so nothing from a
header is used until it passes these functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from proto.common import RequestId
from proto.errors import printable
from proto.subjects import HDR_REQUEST_ID

# Headers JetStream sets on a pull consumer's status messages (never on stored messages).
HDR_STATUS = "Status"
HDR_PENDING_MESSAGES = "Nats-Pending-Messages"

# Three ASCII digits: 100 heartbeat, 404/408 no messages or request expired, 409 limit.
_STATUS = re.compile(r"[0-9]{3}")
# A count the server reports: no sign, no '_' separators, no non-ASCII digits, and short
# enough that int() never meets Python's 4300-digit limit.
_COUNT = re.compile(r"[0-9]{1,19}")

LOG_LIMIT = 128


def _value(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    return value if isinstance(value, str) else None


def request_id_from(headers: Mapping[str, str] | None) -> str | None:
    """The ``Lantau-Request-Id`` header if it is a valid RequestId (proto/common.py), else None."""
    value = _value(headers, HDR_REQUEST_ID)
    if value is None:
        return None
    try:
        return msgspec.convert(value, RequestId)
    except msgspec.ValidationError:
        return None


def status_from(headers: Mapping[str, str] | None) -> str | None:
    """The three-digit ``Status`` of a JetStream status message, else None."""
    value = _value(headers, HDR_STATUS)
    return value if value is not None and _STATUS.fullmatch(value) else None


def pending_messages_from(headers: Mapping[str, str] | None) -> int | None:
    """``Nats-Pending-Messages`` as a non-negative int, or None if absent or not a count."""
    value = _value(headers, HDR_PENDING_MESSAGES)
    return int(value) if value is not None and _COUNT.fullmatch(value) else None


def safe_for_log(value: str, limit: int = LOG_LIMIT) -> str:
    """``value`` for a log line: non-printable characters escaped, at most ``limit``
    characters of output plus a note of how many input characters were left out."""
    return printable(value, limit)
