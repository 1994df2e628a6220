"""Publish a message and wait for the event that answers it (a vote's outcome, a
credential's or a second factor's verdict): policy answers on an event subject."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.bus.publish import publish
from libs.bus.violations import subscribe_checked
from proto import codec
from proto.errors import LantauError

A = TypeVar("A")


async def publish_and_wait(
    nc: Client,
    subject: str,
    message: msgspec.Struct,
    *,
    listen: str,
    answer: Callable[[object], A | None],
    timeout_s: float,
    msg_id: str | None = None,
) -> A | None:
    """Publish ``message`` durably, then wait for the first event on ``listen`` that
    ``answer`` turns into a value (None if none came within ``timeout_s``). The listener
    is in place before the publish, so a quick answer is never missed."""
    found: asyncio.Future[A] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Msg) -> None:
        try:
            event = codec.EVENT.decode(msg.data)
        except LantauError:
            return
        hit = answer(event)
        if hit is not None and not found.done():
            found.set_result(hit)

    sub = await subscribe_checked(nc, listen, cb=on_event)
    try:
        await publish(nc.jetstream(), subject, message, msg_id=msg_id)
        return await asyncio.wait_for(found, timeout=timeout_s)
    except TimeoutError:
        return None
    finally:
        await sub.unsubscribe()
