"""Values taken from message headers, validated before they reach a subject, key or log.

A header is whatever the sender wrote: a request id of thousands of characters used in
``lantau.result.<id>`` once made nats-server close the publisher's connection
("maximum control line exceeded"). Nothing from a header is used unvalidated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from proto.subjects import HDR_REQUEST_ID

# The RequestId pattern of proto/common.py: safe as a NATS subject token and a KV key.
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LOG_MAX = 300


def request_id_from(headers: Mapping[str, str] | None) -> str | None:
    """The request id the sender put in ``Lantau-Request-Id``, or None unless it is valid."""
    if not headers:
        return None
    value = headers.get(HDR_REQUEST_ID)
    if isinstance(value, str) and _ID.match(value):
        return value
    return None


def safe_for_log(value: object) -> str:
    """A short, printable rendering of an untrusted value for a log line."""
    text = value if isinstance(value, str) else repr(value)
    shown = text[:_LOG_MAX].encode("unicode_escape").decode("ascii")
    return shown + (f"... ({len(text)} chars)" if len(text) > _LOG_MAX else "")
