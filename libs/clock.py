"""Time as the platform uses it: Unix milliseconds, and interruptible waits."""

from __future__ import annotations

import asyncio
import contextlib
import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def wait_or_stop(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``, waking early when ``stopping`` is set; True if it is."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    return stopping.is_set()
