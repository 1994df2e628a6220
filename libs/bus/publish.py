"""Durable publishing to JetStream, and reading back the newest message on a subject.

Both name their subject to ``libs.bus.violations.guarded``: a publish or read the server
refuses for this identity raises PERMISSION_DENIED at once, never a silent timeout.

On a JetStream cluster a publish can meet a leader election (no responders, 503) or time
out while the stream's leader dies: the write may or may not have been stored. A publish
that can be repeated safely is tried again for up to ``RETRY_FOR_S``: one with a message
id (JetStream drops the repeat as a duplicate), or one that expects the subject's last
sequence and names its stream, so a refusal after a timed-out try is resolved by reading
the subject back: the message found there, byte for byte ours, is our earlier write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck, RawStreamMsg

from libs import tracing
from libs.bus.violations import guarded
from proto import codec
from proto.subjects import HDR_EXPECTED_LAST_SUBJECT_SEQ, HDR_MSG_ID, js_direct_get

T = TypeVar("T")

# JetStream's error code when an expected-last-sequence check fails.
WRONG_LAST_SEQUENCE = 10071
# An R3 stream that lost its leader elects another within about 4-9 s (raft election
# timeouts); a server that died under a connection costs the client its reconnect too.
RETRY_FOR_S = 20.0
FIRST_DELAY_S = 0.05
MAX_DELAY_S = 1.0


def retryable(e: BaseException) -> bool:
    """A failure the same publish can outlive: no stream leader answered (election under
    way), JetStream said it is unavailable (503), or no answer came in time."""
    if isinstance(e, nats.js.errors.APIError):
        return getattr(e, "code", None) == 503
    return isinstance(
        e,
        nats.errors.TimeoutError
        | nats.errors.NoRespondersError
        | nats.js.errors.NoStreamResponseError
        | TimeoutError,
    )


def maybe_stored(e: BaseException) -> bool:
    """The write may have been stored although no ack came (the answer was lost)."""
    return isinstance(e, TimeoutError)  # nats.errors.TimeoutError is one too


def not_stored(e: BaseException) -> bool:
    """A retryable failure that certainly stored nothing (no leader took the write)."""
    return retryable(e) and not maybe_stored(e)


async def until_stored(write: Callable[[], Awaitable[T]], *, retry_for_s: float = RETRY_FOR_S) -> T:
    """Run ``write`` (a fresh attempt each call) again while it fails with ``not_stored``:
    safe for any write, a compare-and-set included, since the failed try changed nothing.
    A timeout, which may have stored, is raised to the caller."""
    deadline = time.monotonic() + retry_for_s
    delay = 0.0
    while True:
        try:
            return await write()
        except (TimeoutError, nats.errors.Error) as e:
            delay = next_delay(delay)
            if not not_stored(e) or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)


def next_delay(previous: float) -> float:
    """Doubling pauses between tries, from FIRST_DELAY_S up to MAX_DELAY_S."""
    return min(MAX_DELAY_S, max(FIRST_DELAY_S, previous * 2))


@dataclass(frozen=True)
class Put:
    """What a publish came to: the ack, or None when the stream refused the expected last
    sequence; ``maybe_ours`` when an earlier try timed out (it may be what is there)."""

    ack: PubAck | None
    maybe_ours: bool


async def put(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    headers: dict[str, str] | None,
    *,
    retry_for_s: float,
    expects_last: bool = True,
) -> Put:
    """Publish ``data``, trying again on ``retryable`` failures for ``retry_for_s`` with the
    same headers (so the same message id); the last failure is raised when time is up.
    ``expects_last``: the headers expect a last sequence, and a refusal of it is an answer."""
    deadline = time.monotonic() + retry_for_s
    delay = 0.0
    timed_out = False
    while True:
        try:
            ack = await guarded(js._nc, subject, js.publish(subject, data, headers=headers))
            return Put(ack, timed_out)
        except nats.js.errors.APIError as e:
            if expects_last and e.err_code == WRONG_LAST_SEQUENCE:
                return Put(None, timed_out)
            if not retryable(e):
                raise
            failure: BaseException = e
        except (TimeoutError, nats.errors.Error) as e:
            if not retryable(e):
                raise
            failure = e
        timed_out = timed_out or maybe_stored(failure)
        delay = next_delay(delay)
        if time.monotonic() + delay > deadline:
            raise failure
        await asyncio.sleep(delay)


async def _ours(
    js: JetStreamContext, stream: str, subject: str, data: bytes
) -> RawStreamMsg | None:
    """The subject's newest message when it is exactly ``data`` (our timed-out write)."""
    raw = await last_raw(js, stream, subject)
    return raw if raw is not None and raw.data == data else None


async def publish(
    js: JetStreamContext,
    subject: str,
    message: msgspec.Struct,
    *,
    msg_id: str | None = None,
    first_on_subject: bool = False,
    headers: dict[str, str] | None = None,
    stream: str | None = None,
) -> bool:
    """Durably publish; returns False when ``first_on_subject`` and the subject already has one.

    ``msg_id`` lets JetStream drop a duplicate within its window; ``first_on_subject``
    makes the stream refuse a second message on the subject forever (one result per request).
    A publish with ``msg_id``, or ``first_on_subject`` with its ``stream`` named, is tried
    again through a leader election (module docstring); any other is tried once.
    """
    hdrs = tracing.inject(dict(headers or {}))
    if msg_id:
        hdrs[HDR_MSG_ID] = msg_id
    if first_on_subject:
        hdrs[HDR_EXPECTED_LAST_SUBJECT_SEQ] = "0"
    data = codec.encode(message)
    repeatable = bool(msg_id) or (first_on_subject and stream is not None)
    done = await put(
        js,
        subject,
        data,
        hdrs or None,
        retry_for_s=RETRY_FOR_S if repeatable else 0,
        expects_last=first_on_subject,
    )
    if done.ack is not None:
        return True
    return bool(done.maybe_ours and stream and await _ours(js, stream, subject, data))


async def publish_after(
    js: JetStreamContext,
    subject: str,
    message: msgspec.Struct,
    last_seq: int,
    *,
    stream: str | None = None,
) -> int | None:
    """Durably publish only if the subject's newest message is still ``last_seq`` (0: the
    subject is empty); the new sequence, or None if someone else wrote there first.

    With ``stream`` named it is tried again through a leader election, and a refusal after
    a timed-out try returns the sequence of our own write when that is what is there."""
    hdrs = tracing.inject({HDR_EXPECTED_LAST_SUBJECT_SEQ: str(last_seq)})
    data = codec.encode(message)
    done = await put(js, subject, data, hdrs, retry_for_s=RETRY_FOR_S if stream else 0)
    if done.ack is not None:
        return int(done.ack.seq)
    if done.maybe_ours and stream:
        raw = await _ours(js, stream, subject, data)
        if raw is not None and raw.seq is not None:
            return int(raw.seq)
    return None


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
