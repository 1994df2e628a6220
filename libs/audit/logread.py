"""Reading the audit log and its source streams by sequence, without creating consumers.

Each message is fetched with a direct get (``allow_direct`` on the stream) or, where the
stream does not allow it, the stream's message-get API; a window of requests is kept in
flight so a long log reads quickly. Every sequence from 1 to the stream's last is
returned: a sequence the store does not return is reported as missing, never skipped,
and a server that does not answer is a typed error naming the sequence.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StreamInfo

from libs.audit.trail import LogItem, decode_item
from proto.errors import ErrorCode, LantauError
from proto.subjects import AUDIT_CHAIN

WINDOW = 64
TIMEOUT_S = 2.0
TRIES = 3


@dataclass(frozen=True)
class Bounds:
    first_seq: int
    last_seq: int
    direct: bool
    # The stream's replicas (its num_replicas) and how many are current: its leader and
    # the followers caught up. Fewer current than configured: a NATS server is lost or
    # behind (alert LantauNatsReplicaLost).
    replicas: int = 1
    current: int = 1


def replica_health(info: StreamInfo) -> tuple[int, int]:
    """(configured, current) replicas of a stream as its leader reports them (pure)."""
    wanted = max(1, int(getattr(info.config, "num_replicas", None) or 1))
    cluster = info.cluster
    if cluster is None:  # a server alone: the one replica answered
        return wanted, 1
    current = 1 if cluster.leader else 0
    current += sum(1 for p in cluster.replicas or () if p.current and not p.offline)
    return wanted, current


@dataclass(frozen=True)
class Fetched:
    """One sequence of a stream: its bytes, or why there are none."""

    seq: int
    data: bytes | None
    problem: str = ""


async def bounds(js: JetStreamContext, stream: str = AUDIT_CHAIN.name) -> Bounds:
    """The stream's first and last sequence, and whether it allows direct gets."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        raise LantauError(
            ErrorCode.AUDIT_LOG_UNREADABLE, f"stream {stream} does not exist (deleted?)"
        ) from None
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
        raise LantauError(
            ErrorCode.AUDIT_LOG_UNREADABLE,
            f"NATS did not answer for stream {stream} ({type(e).__name__}): is JetStream up?",
        ) from None
    replicas, current = replica_health(info)
    return Bounds(
        info.state.first_seq,
        info.state.last_seq,
        bool(getattr(info.config, "allow_direct", False)),
        replicas,
        current,
    )


async def fetch(
    js: JetStreamContext,
    stream: str,
    seq: int,
    *,
    direct: bool = True,
    timeout_s: float = TIMEOUT_S,
    tries: int = TRIES,
) -> Fetched:
    """One message by sequence; missing when the store does not return it."""
    for attempt in range(1, tries + 1):
        try:
            if direct:
                msg = await asyncio.wait_for(js.get_msg(stream, seq, direct=True), timeout_s)
            else:
                msg = await asyncio.wait_for(js.get_msg(stream, seq), timeout_s)
            return Fetched(seq, msg.data or b"")
        except nats.js.errors.NotFoundError:
            return Fetched(seq, None, "missing from the store")
        except nats.js.errors.APIError as e:
            return Fetched(seq, None, f"the server could not return it ({e.description})")
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
            if attempt == tries:
                raise LantauError(
                    ErrorCode.AUDIT_LOG_UNREADABLE,
                    f"{stream} seq {seq}: NATS did not answer ({type(e).__name__}, {tries} "
                    f"tries of {timeout_s:g} s): the server is down or the store is damaged",
                ) from None
        except nats.errors.ConnectionClosedError:
            raise LantauError(
                ErrorCode.AUDIT_LOG_UNREADABLE,
                f"{stream} seq {seq}: the NATS connection closed while reading",
            ) from None
    raise AssertionError("unreachable")


async def fetch_range(
    js: JetStreamContext,
    stream: str,
    first: int,
    last: int,
    *,
    direct: bool = True,
    window: int = WINDOW,
) -> AsyncIterator[Fetched]:
    """Sequences first..last in order, ``window`` requests in flight."""
    pending: asyncio.Queue[asyncio.Task[Fetched]] = asyncio.Queue()
    seq = first
    try:
        while seq <= last or not pending.empty():
            while seq <= last and pending.qsize() < window:
                pending.put_nowait(asyncio.create_task(fetch(js, stream, seq, direct=direct)))
                seq += 1
            yield await pending.get_nowait()
    finally:
        while not pending.empty():
            pending.get_nowait().cancel()


async def read_items(
    js: JetStreamContext, start: int = 1, *, upto: int | None = None
) -> AsyncIterator[tuple[LogItem, bytes | None]]:
    """Log items from ``start`` to the log's last sequence (or ``upto``), each with its raw
    bytes when it is not an audit entry (for exports)."""
    b = await bounds(js)
    last = b.last_seq if upto is None else min(upto, b.last_seq)
    for seq in range(start, min(b.first_seq, last + 1)):
        yield LogItem(seq, None, "missing from the store (before the stream's first message)"), None
    async for f in fetch_range(
        js, AUDIT_CHAIN.name, max(start, b.first_seq), last, direct=b.direct
    ):
        if f.data is None:
            yield (
                LogItem(f.seq, None, f"{f.problem}: deleted on disk, or lost by a damaged store"),
                None,
            )
            continue
        item = decode_item(f.seq, f.data)
        yield item, (f.data if item.entry is None else None)


async def read_all(js: JetStreamContext) -> list[LogItem]:
    """The whole log, every sequence."""
    return [item async for item, _ in read_items(js)]
