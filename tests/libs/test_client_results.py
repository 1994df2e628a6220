"""CustodyClient keeps one results subscription per client, however many first sends
race for it (each extra one made every result reach the client once more)."""

from __future__ import annotations

import asyncio
from typing import Any

import nacl.signing

from libs.client import CustodyClient


class _SlowSubscriber:
    """Just enough of a nats Client: subscribing takes a while, as a checked one does."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []

    def jetstream(self) -> object:
        return object()

    async def subscribe(self, subject: str, **_: Any) -> object:
        await asyncio.sleep(0.01)
        self.subscribed.append(subject)
        return object()


async def test_concurrent_first_sends_share_one_subscription() -> None:
    nc = _SlowSubscriber()
    client = CustodyClient(nc, "bench", nacl.signing.SigningKey.generate())  # type: ignore[arg-type]
    await asyncio.gather(*(client._listen() for _ in range(20)))
    await client._listen()
    assert len(nc.subscribed) == 1
    assert nc.subscribed[0].startswith("lantau.result.bench")
