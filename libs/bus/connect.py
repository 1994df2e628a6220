"""Connecting to NATS as an identity: its nkey seed, its private inbox prefix, TLS.

Services reconnect endlessly; command-line tools try once. Every connection records the
permission violations the server reports (``libs.bus.violations``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client

from libs.bus import violations
from libs.bus.identity import read_seed, tls_context
from libs.config import NatsConfig
from proto.errors import ErrorCode, LantauError
from proto.subjects import inbox_prefix

log = logging.getLogger("lantau.bus")


class _QuietTlsClose(logging.Filter):
    """asyncio warns on every TLS connection the server closes first (a nats-py quirk
    with TLS transports): noise in every command's output, nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("returning true from eof_received()")


logging.getLogger("asyncio").addFilter(_QuietTlsClose())


def options(cfg: NatsConfig, identity: str | None, seed_file: str | None = None) -> dict[str, Any]:
    """nats.connect options for ``identity`` (its inbox prefix) with the seed in
    ``seed_file`` (default ``cfg.seed_file``) and the TLS files of ``cfg``."""
    found: dict[str, Any] = {
        "servers": cfg.servers,
        "connect_timeout": cfg.connect_timeout_s,
        "ping_interval": cfg.ping_interval_s,
        "max_outstanding_pings": cfg.max_outstanding_pings,
    }
    path = seed_file or cfg.seed_file
    if path:
        found["nkeys_seed_str"] = read_seed(path).decode()
    if identity:
        found["inbox_prefix"] = inbox_prefix(identity)
    tls = tls_context(cfg)
    if tls is not None:
        found["tls"] = tls
        # The dev CA names the server by IP and localhost; a name from the URL is checked.
    return found


async def connect(
    cfg: NatsConfig,
    name: str,
    *,
    identity: str | None = None,
    seed_file: str | None = None,
    patient: bool = True,
    on_closed: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    """Connect as ``identity``; a bus outage pauses a patient caller, never kills it.

    A command-line tool passes ``patient=False`` to fail after trying each server once.
    ``on_closed`` hears of a connection that will not come back (the server closed it
    for a protocol error, the identity was removed, or it was closed on purpose).
    """
    record = violations.Violations()
    made: list[Client] = []

    async def on_error(e: Exception) -> None:
        if not record.record(str(e)):
            log.warning("nats error: %s", type(e).__name__)

    async def on_disconnect() -> None:
        if made and made[0].is_closed:
            return  # closed on purpose (or for good: on_closed says so)
        log.warning("nats disconnected; reconnecting")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    nc = await nats.connect(
        name=name,
        allow_reconnect=patient,
        max_reconnect_attempts=-1 if patient else 1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        closed_cb=on_closed,
        **options(cfg, identity, seed_file),
    )
    made.append(nc)
    violations.register(nc, record)
    if identity:
        # A seed of another identity would have every reply refused (its inbox prefix is
        # someone else's): fail now, clearly, instead of timing out on each request.
        try:
            probe = await violations.subscribe_checked(nc, f"{inbox_prefix(identity)}.hello")
        except LantauError:
            await nc.close()
            raise LantauError(
                ErrorCode.PERMISSION_DENIED,
                f"this NATS identity may not use the inbox of {identity}: is the seed "
                f"file {seed_file or cfg.seed_file} the identity of {identity}?",
            ) from None
        await probe.unsubscribe()
    return nc
