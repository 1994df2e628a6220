"""What every Lantau process shares: connect, provision, HTTP health/metrics, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import prometheus_client
from nats.aio.client import Client
from nats.js import JetStreamContext

from libs.bus import permissions
from libs.bus.connect import connect
from libs.bus.provision import provision as provision_streams
from libs.clock import wait_or_stop
from libs.config import Config

log = logging.getLogger("lantau.service")


class Runtime:
    """One running service: its bus connection, readiness, and the stop signal."""

    def __init__(
        self,
        name: str,
        config: Config,
        metrics_port: int,
        *,
        identity: str | None = None,
        provision: bool = False,
    ) -> None:
        self.name = name
        # The NATS identity this process connects as (its seed: [nats] seed_file).
        self.identity = identity
        # Only for tests and tools holding the provisioner's identity: running services
        # may not create streams or consumers (`lantau provision` does, once).
        self.provision = provision
        self.config = config
        self.metrics_port = metrics_port
        self.stopping = asyncio.Event()
        self._not_ready: dict[str, str] = {"startup": "starting"}
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._http: asyncio.Server | None = None
        # Set when the bus connection closed for good while the service was running.
        self.lost_bus = False

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "connect() first"
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "connect() first"
        return self._js

    def set_ready(self, check: str, ok: bool, reason: str = "") -> None:
        if ok:
            self._not_ready.pop(check, None)
        else:
            self._not_ready[check] = reason or check

    def readiness(self) -> tuple[bool, str]:
        if self.stopping.is_set():
            return False, "shutting down"
        if self._nc is None or not self._nc.is_connected:
            return False, "not connected to NATS"
        if self._not_ready:
            return False, "; ".join(f"{k}: {v}" for k, v in sorted(self._not_ready.items()))
        return True, "ready"

    async def connect(self, *, provision: bool = False) -> None:
        self._nc = await connect(
            self.config.nats, self.name, identity=self.identity, on_closed=self._on_closed
        )
        self._js = self._nc.jetstream()
        if provision:
            await provision_streams(self._js, self.config.nats)

    async def serve_http(self) -> int:
        self._http = await asyncio.start_server(self._handle_http, "0.0.0.0", self.metrics_port)
        port = self._http.sockets[0].getsockname()[1]
        log.info("metrics and health on http://127.0.0.1:%d/metrics /healthz /readyz", port)
        return port

    async def _handle_http(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) > 1 else "/"
            if path == "/metrics":
                status, ctype, body = (
                    200,
                    prometheus_client.CONTENT_TYPE_LATEST,
                    prometheus_client.generate_latest(),
                )
            elif path == "/healthz":
                if self.lost_bus:
                    status, ctype, body = 503, "text/plain", b"NATS connection lost for good\n"
                else:
                    status, ctype, body = 200, "text/plain", b"ok\n"
            elif path == "/readyz":
                ok, reason = self.readiness()
                status, ctype, body = (200 if ok else 503), "text/plain", (reason + "\n").encode()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            head = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
            head += (
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _on_closed(self) -> None:
        if self.stopping.is_set():
            return  # our own drain
        # nats-py closes for good on some server errors (a protocol violation, say): a
        # service that cannot talk to the bus must not look alive. Exit, so that the
        # supervisor (Kubernetes, compose, the dev stack) starts it afresh.
        log.error("the NATS connection closed and will not come back; exiting to be restarted")
        self.lost_bus = True
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stopping.is_set():
            log.info("%s received; draining", sig.name)
        self.stopping.set()

    async def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.drain()


async def run(runtime: Runtime, body: Callable[[Runtime], Awaitable[None]]) -> int:
    """Start HTTP, connect, run ``body`` until SIGTERM/SIGINT, then drain and close."""
    runtime.install_signal_handlers()
    await runtime.serve_http()
    try:
        while not runtime.stopping.is_set():
            try:
                await runtime.connect(provision=runtime.provision)
                break
            except Exception as e:  # bus not up yet: keep trying, stay not-ready
                runtime.set_ready("nats", False, f"cannot reach NATS ({type(e).__name__})")
                log.warning("cannot reach NATS (%s); retrying", type(e).__name__)
                await wait_or_stop(runtime.stopping, 1.0)
        runtime.set_ready("nats", True)
        if not runtime.stopping.is_set():
            await body(runtime)
    finally:
        await runtime.close()
    if runtime.lost_bus:
        return 1
    log.info("stopped cleanly")
    return 0


@dataclass(frozen=True)
class ServiceEntry:
    """How ``lantau serve`` runs one service: its name and port from the config, an early
    check of the config, and the body that runs once connected."""

    # The config section holding ``id`` and ``metrics_port`` (per-node services: the node).
    section: str
    # serve(runtime), or serve(runtime, node config) for a per-node service.
    serve: Callable[..., Awaitable[None]]
    per_node: bool = False
    check: Callable[[Config], None] | None = None

    def identity(self, cfg: Config, node_id: str | None) -> tuple[str, int]:
        """The process's name (logs, metrics, connection name) and metrics port."""
        if self.per_node:
            node = cfg.hsm_node(node_id or "")
            return f"{self.section}-{node.id}", node.metrics_port
        section: Any = getattr(cfg, self.section)
        return section.id, section.metrics_port

    def bus_identity(self, cfg: Config, node_id: str | None) -> str:
        """The NATS identity it connects as: its role (replicas share it), or its node."""
        if self.per_node:
            return permissions.node_identity(cfg.hsm_node(node_id or "").id)
        return self.section

    def check_config(self, cfg: Config, node_id: str | None) -> None:
        if self.per_node:
            cfg.hsm_node(node_id or "")
        if self.check is not None:
            self.check(cfg)

    def body(self, cfg: Config, node_id: str | None) -> Callable[[Runtime], Awaitable[None]]:
        if not self.per_node:
            return self.serve
        node = cfg.hsm_node(node_id or "")
        return lambda rt: self.serve(rt, node)
