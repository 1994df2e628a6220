"""Connecting to NATS: endless reconnects for services, one try for command-line tools."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client

from libs.config import NatsConfig

log = logging.getLogger("lantau.bus")


async def connect(
    cfg: NatsConfig,
    name: str,
    *,
    patient: bool = True,
    on_closed: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    """Connect with endless reconnects: a bus outage pauses a service, never kills it.

    A command-line tool passes ``patient=False`` to fail after trying each server once.
    ``on_closed`` hears of a connection that will not come back (the server closed it
    for a protocol error, or it was closed on purpose).
    """

    async def on_error(e: Exception) -> None:
        log.warning("nats error: %s", type(e).__name__)

    async def on_disconnect() -> None:
        log.warning("nats disconnected; reconnecting")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        servers=cfg.servers,
        name=name,
        connect_timeout=cfg.connect_timeout_s,
        allow_reconnect=patient,
        max_reconnect_attempts=-1 if patient else 1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        closed_cb=on_closed,
    )
