"""Durable publishing to JetStream, and reading back the newest message on a subject.

Both name their subject to ``libs.bus.violations.guarded``: a publish or read the server
refuses for this identity raises PERMISSION_DENIED at once, never a silent timeout.
"""

from __future__ import annotations

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from libs import tracing
from libs.bus.violations import guarded
from proto import codec
from proto.subjects import HDR_EXPECTED_LAST_SUBJECT_SEQ, HDR_MSG_ID, js_direct_get

# JetStream's error code when an expected-last-sequence check fails.
WRONG_LAST_SEQUENCE = 10071


async def publish(
    js: JetStreamContext,
    subject: str,
    message: msgspec.Struct,
    *,
    msg_id: str | None = None,
    first_on_subject: bool = False,
    headers: dict[str, str] | None = None,
) -> bool:
    """Durably publish; returns False when ``first_on_subject`` and the subject already has one.

    ``msg_id`` lets JetStream drop a duplicate within its window; ``first_on_subject``
    makes the stream refuse a second message on the subject forever (one result per request).
    """
    hdrs = tracing.inject(dict(headers or {}))
    if msg_id:
        hdrs[HDR_MSG_ID] = msg_id
    if first_on_subject:
        hdrs[HDR_EXPECTED_LAST_SUBJECT_SEQ] = "0"
    try:
        await guarded(
            js._nc, subject, js.publish(subject, codec.encode(message), headers=hdrs or None)
        )
    except nats.js.errors.APIError as e:
        if first_on_subject and e.err_code == WRONG_LAST_SEQUENCE:
            return False
        raise
    return True


async def publish_after(
    js: JetStreamContext, subject: str, message: msgspec.Struct, last_seq: int
) -> int | None:
    """Durably publish only if the subject's newest message is still ``last_seq`` (0: the
    subject is empty); the new sequence, or None if someone else wrote there first."""
    hdrs = tracing.inject({HDR_EXPECTED_LAST_SUBJECT_SEQ: str(last_seq)})
    try:
        ack = await guarded(
            js._nc, subject, js.publish(subject, codec.encode(message), headers=hdrs)
        )
    except nats.js.errors.APIError as e:
        if e.err_code == WRONG_LAST_SEQUENCE:
            return None
        raise
    return int(ack.seq)


async def last_on_subject(js: JetStreamContext, stream: str, subject: str) -> bytes | None:
    """The newest message stored on a subject, or None. A direct get (the stream allows
    them all), which the bus can allow per subject."""
    raw = await last_raw(js, stream, subject)
    return None if raw is None else raw.data


async def last_raw(js: JetStreamContext, stream: str, subject: str) -> RawStreamMsg | None:
    """Like ``last_on_subject``, with the message's sequence and headers."""
    try:
        return await guarded(
            js._nc,
            js_direct_get(stream, subject),
            js.get_last_msg(stream, subject, direct=True),
        )
    except nats.js.errors.NotFoundError:
        return None
