"""Permission violations: what the NATS server refused this connection.

nats-py reports a refused publish or subscribe only to the error callback ("Permissions
Violation for Publish to ..."): a refused JetStream publish would otherwise just time
out, and a refused subscribe still returns a Subscription. Every connection made by
``libs.bus.connect`` records violations here; operations wrapped in ``guarded`` turn a
violation on their subject into ``PERMISSION_DENIED`` at once: typed, not retryable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import weakref
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import nats.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from libs.headers import safe_for_log
from proto.errors import ErrorCode, LantauError

log = logging.getLogger("lantau.bus")

T = TypeVar("T")

# A refused subscription's -ERR does not always come before the PONG of the next PING
# (measured on nats-server 2.15, 200 refusals under load: 191 before the first PONG, 9
# before the second, none later). Three round trips and a short grace cover that at a
# cost of well under a millisecond on a local server.
SUBSCRIBE_ROUND_TRIPS = 3
SUBSCRIBE_GRACE_S = 0.005

_VIOLATION = re.compile(
    r'Permissions Violation for (Publish|Subscription) (?:to|with Reply of) "([^"]*)"', re.I
)


def parse(text: str) -> tuple[str, str] | None:
    """(kind, subject) of a server permissions error; kind is "publish" or "subscribe".

    nats-py lowercases the server's error line, so the subject comes back lowercased:
    subjects are compared case-insensitively here (``_key``)."""
    m = _VIOLATION.search(text)
    if m is None:
        return None
    return ("publish" if m.group(1).lower() == "publish" else "subscribe"), m.group(2)


def _key(subject: str) -> str:
    return subject.lower()


def denied(kind: str, subject: str) -> LantauError:
    return LantauError(
        ErrorCode.PERMISSION_DENIED,
        f"the NATS server refused this identity permission to {kind} on {safe_for_log(subject)}",
    )


@dataclass(eq=False)
class _Watch:
    subject: str
    task: asyncio.Task[object] | None
    hit: bool = False


@dataclass
class Violations:
    """One connection's violations: counted, logged, and told to operations waiting on
    the refused subject."""

    recent: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=256))
    _watches: dict[str, set[_Watch]] = field(default_factory=dict)
    _news: asyncio.Event | None = None
    count: int = 0

    def record(self, text: str) -> bool:
        """Note a server error; True if it was a permissions violation."""
        found = parse(text)
        if found is None:
            return False
        kind, subject = found
        self.count += 1
        # Imported here: the client SDK uses this module and must register no server
        # metrics by being imported (a violation in a client process counts, though).
        from libs import metrics

        metrics.BUS_PERMISSION_VIOLATIONS.labels(kind).inc()
        log.error("NATS refused permission to %s on %s", kind, safe_for_log(subject))
        self.recent.append((time.monotonic(), kind, _key(subject)))
        if self._news is not None:
            self._news.set()
            self._news = None
        for watch in self._watches.get(_key(subject), ()):
            if not watch.hit:
                watch.hit = True
                if watch.task is not None:
                    watch.task.cancel()
        return True

    def seen(self, subject: str, since: float) -> str | None:
        """The kind of a violation on ``subject`` recorded at or after ``since``."""
        wanted = _key(subject)
        for at, kind, refused in reversed(self.recent):
            if at < since:
                break
            if refused == wanted:
                return kind
        return None

    async def wait(self, subject: str, since: float, timeout: float) -> str | None:
        """Like ``seen``, waiting up to ``timeout`` for a violation to arrive."""
        deadline = time.monotonic() + timeout
        while (kind := self.seen(subject, since)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self._news is None:
                self._news = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), timeout=left)
        return kind

    def watch(self, subject: str) -> _Watch:
        w = _Watch(_key(subject), asyncio.current_task())
        self._watches.setdefault(w.subject, set()).add(w)
        return w

    def unwatch(self, w: _Watch) -> None:
        watching = self._watches.get(w.subject)
        if watching is not None:
            watching.discard(w)
            if not watching:
                del self._watches[w.subject]


_REGISTRY: weakref.WeakKeyDictionary[Client, Violations] = weakref.WeakKeyDictionary()


def register(nc: Client, record: Violations) -> None:
    _REGISTRY[nc] = record


def of(nc: Client) -> Violations | None:
    return _REGISTRY.get(nc)


async def guarded(nc: Client, subject: str, op: Awaitable[T]) -> T:
    """Await ``op`` (a publish or request on ``subject``); a permissions violation on that
    subject meanwhile ends it at once with PERMISSION_DENIED instead of a timeout."""
    record = _REGISTRY.get(nc)
    if record is None:
        return await op
    started = time.monotonic()
    w = record.watch(subject)
    try:
        return await op
    except asyncio.CancelledError:
        if w.hit and w.task is not None:
            w.task.uncancel()
            raise denied("publish", subject) from None
        raise
    except (TimeoutError, nats.errors.TimeoutError):
        kind = record.seen(subject, started)
        if kind is not None:
            raise denied(kind, subject) from None
        raise
    finally:
        record.unwatch(w)


async def subscribe_checked(nc: Client, subject: str, **kwargs: object) -> Subscription:
    """Subscribe and make sure the server accepted it (a round trip): a refused
    subscription raises PERMISSION_DENIED instead of silently receiving nothing."""
    started = time.monotonic()
    subscription = await nc.subscribe(subject, **kwargs)  # type: ignore[arg-type]
    record = _REGISTRY.get(nc)
    if record is None:
        return subscription
    for _ in range(SUBSCRIBE_ROUND_TRIPS):
        await nc.flush()
        if record.seen(subject, started) is not None:
            break
    if await record.wait(subject, started, SUBSCRIBE_GRACE_S) is not None:
        await subscription.unsubscribe()
        raise denied("subscribe", subject)
    return subscription
