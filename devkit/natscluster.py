"""A JetStream cluster of nats-servers on loopback, for the dev stack, the tests and chaos.

Every server runs from the same binary with its own config, store and ports; routes are
mutual TLS with the dev CA and a route identity of their own (``devkit.natsserver``).
Leaders are found through the monitoring endpoint (``/jsz``), never guessed: the pure
readers below take its JSON.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from devkit.natsserver import NatsServer, Routes, free_port
from devkit.tls import DevPki

# Each server's healthy state, after a start: JetStream current on every stream.
HEALTHY_TIMEOUT_S = 60.0


def meta_leader_of(jsz: Mapping[str, Any]) -> str | None:
    """The meta leader a server's /jsz names (None while there is none)."""
    meta = jsz.get("meta_cluster") or {}
    leader = meta.get("leader")
    return str(leader) if leader else None


def stream_leader_of(jsz: Mapping[str, Any], stream: str) -> str | None:
    """The leader of ``stream`` in a /jsz?streams=true answer (None when not listed)."""
    for account in jsz.get("account_details") or ():
        for detail in account.get("stream_detail") or ():
            if detail.get("name") == stream:
                leader = (detail.get("cluster") or {}).get("leader")
                return str(leader) if leader else None
    return None


def _get_json(url: str, timeout_s: float = 2.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        found = json.load(r)
    if not isinstance(found, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return found


class NatsCluster:
    """``size`` servers named ``nats-1`` ... ``nats-N``, one JetStream cluster."""

    def __init__(self, workdir: Path, size: int, *, pki: DevPki, authorized: bool = True) -> None:
        if size < 3 or size % 2 == 0:
            raise ValueError(
                f"a JetStream cluster needs an odd number of servers, at least 3 (got {size}): "
                "a majority must survive the loss of one"
            )
        route_ports = [free_port() for _ in range(size)]
        user = pki.route_user()
        self.servers = [
            NatsServer(
                workdir / f"nats-{i}",
                pki=pki,
                authorized=authorized,
                server_name=f"nats-{i}",
                routes=Routes(
                    port=route_ports[i - 1],
                    peers=tuple(p for j, p in enumerate(route_ports, 1) if j != i),
                    cert=pki.route,
                    ca=pki.route_ca,
                    user=user,
                ),
            )
            for i in range(1, size + 1)
        ]

    def __iter__(self) -> Iterator[NatsServer]:
        return iter(self.servers)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def server(self, name: str) -> NatsServer:
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(f"no NATS server named {name}")

    def alive(self) -> list[NatsServer]:
        return [s for s in self.servers if s.proc.alive]

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout_s: float = HEALTHY_TIMEOUT_S) -> NatsCluster:
        """Start every server, then wait until each is healthy (a meta leader elected)."""
        for s in self.servers:
            s.launch()
        with ThreadPoolExecutor(len(self.servers)) as pool:
            list(pool.map(lambda s: s.wait_healthy(timeout_s), self.servers))
        self.wait_meta_leader(timeout_s)
        return self

    def stop(self) -> None:
        with ThreadPoolExecutor(len(self.servers)) as pool:
            list(pool.map(lambda s: s.stop(), self.servers))

    def reload(self) -> None:
        for s in self.alive():
            s.reload()

    def kill(self, name: str) -> None:
        self.server(name).kill()

    def freeze(self, name: str) -> None:
        """SIGSTOP: the process holds its sockets open and answers nothing."""
        self.server(name).proc.stop()

    def thaw(self, name: str) -> None:
        self.server(name).proc.cont()

    def start_server(self, name: str, timeout_s: float = HEALTHY_TIMEOUT_S) -> NatsServer:
        """Start a stopped (or killed) server on its store and wait until it caught up."""
        return self.server(name).start(timeout_s)

    def restart(self, name: str, timeout_s: float = HEALTHY_TIMEOUT_S) -> NatsServer:
        """SIGTERM (the server hands its leaderships over and exits), start, wait healthy."""
        server = self.server(name)
        server.stop()
        return server.start(timeout_s)

    def wipe(self, name: str, timeout_s: float = HEALTHY_TIMEOUT_S) -> NatsServer:
        """SIGKILL, delete the whole JetStream store, start empty under the same name: the
        cluster must bring it back from the others' replicas."""
        server = self.server(name)
        server.kill()
        shutil.rmtree(server.store_dir, ignore_errors=True)
        return server.start(timeout_s)

    # -- who leads ---------------------------------------------------------------------

    def jsz(self, server: NatsServer, query: str = "") -> dict[str, Any]:
        return _get_json(f"{server.monitor_url}/jsz" + (f"?{query}" if query else ""))

    def meta_leader(self) -> str | None:
        """The meta leader as the live servers report it (None if they name none)."""
        for s in self.alive():
            try:
                found = meta_leader_of(self.jsz(s))
            except (OSError, ValueError):
                continue
            if found:
                return found
        return None

    def stream_leader(self, stream: str) -> str | None:
        """The server leading ``stream``: each live server is asked for the streams it leads."""
        for s in self.alive():
            try:
                jsz = self.jsz(s, "streams=true&stream-leader-only=true")
                found = stream_leader_of(jsz, stream)
            except (OSError, ValueError):
                continue
            if found:
                return found
        return None

    def wait_meta_leader(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.meta_leader()
            if found:
                return found
            time.sleep(0.1)
        raise RuntimeError(f"no JetStream meta leader after {timeout_s:.0f} s")

    def wait_stream_leader(self, stream: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.stream_leader(stream)
            if found:
                return found
            time.sleep(0.1)
        raise RuntimeError(f"stream {stream} has no leader after {timeout_s:.0f} s")
