"""The embedded dev stack: nats-server, SoftHSM tokens, one hsm-node per token, services.

``lantau dev up`` and the test fixtures both start the platform through
``start_platform``, so the tests exercise the same code path a developer runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nacl.signing

from devkit import demo_policy
from devkit.backup import BackupSetSpec, DevBackupSet, make_backup_sets
from devkit.natsserver import NatsServer, free_port
from devkit.procs import ManagedProcess, ProcessGroup
from devkit.softhsm import SoftHsmToken, find_module, init_token
from libs import config as config_mod
from libs.config import (
    AuditConfig,
    AuthorityConfig,
    BackupConfig,
    Config,
    HsmNodeConfig,
    NatsConfig,
    PolicyConfig,
    RequesterConfig,
    SignerConfig,
)
from libs.secret_files import write_secret
from services.cli import hsm_admin

ALERT_RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"
READY_TIMEOUT_S = 60.0


@dataclass
class DevStack:
    run_dir: Path
    config: Config
    config_path: Path
    nats: NatsServer
    tokens: list[SoftHsmToken]
    procs: ProcessGroup = field(default_factory=ProcessGroup)
    ports: dict[str, int] = field(default_factory=dict)
    # Offline backup sets made by `lantau backup init` (start_platform(backup_sets=...)).
    backup_sets: dict[str, DevBackupSet] = field(default_factory=dict)

    def service(self, name: str) -> ManagedProcess:
        return self.procs[name]

    def url(self, name: str, path: str = "/metrics") -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def start_service(
        self, name: str, argv: Sequence[str], port: int, env: dict[str, str] | None = None
    ) -> ManagedProcess:
        proc = ManagedProcess(
            name,
            [sys.executable, "-m", "services.cli.main", *argv, "--config", str(self.config_path)],
            log_path=self.run_dir / "logs" / f"{name}.log",
            env={**os.environ, **(env or {})},
        )
        self.ports[name] = port
        return self.procs.add(proc.start())

    async def restart(self, name: str, *, wait_ready: bool = True) -> ManagedProcess:
        proc = self.procs[name]
        await proc.terminate_async()
        proc.start()
        if wait_ready:
            await self.wait_ready([name])
        return proc

    async def wait_ready(
        self, names: Sequence[str] | None = None, timeout_s: float = READY_TIMEOUT_S
    ) -> None:
        pending = list(names or self.procs.processes)
        deadline = time.monotonic() + timeout_s
        while pending:
            name = pending[0]
            proc = self.procs[name]
            if not proc.alive:
                raise RuntimeError(
                    f"{name} exited ({proc.returncode}); log tail:\n{proc.log_tail()}"
                )
            if await asyncio.to_thread(_ready, self.url(name, "/readyz")):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} not ready after {timeout_s:.0f} s; log tail:\n{proc.log_tail()}"
                )
            await asyncio.sleep(0.1)

    def start_prometheus(self) -> str | None:
        """A real Prometheus (Debian package) scraping every process, with the alert rules;
        returns its URL, or None when it is not installed."""
        binary = shutil.which("prometheus")
        if binary is None:
            return None
        home = self.run_dir / "prometheus"
        home.mkdir(parents=True, exist_ok=True)
        jobs: dict[str, list[str]] = {}
        for name in self.procs.processes:
            job = "hsm-node" if name.startswith("hsm-") else name.split("-")[0]
            jobs.setdefault(f"lantau-{job}", []).append(f"127.0.0.1:{self.ports[name]}")
        scrape = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: {targets}\n"
            for job, targets in sorted(jobs.items())
        ).replace("'", '"')
        (home / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 2s\n  evaluation_interval: 5s\n"
            + (f"rule_files:\n  - {ALERT_RULES}\n" if ALERT_RULES.exists() else "")
            + f"scrape_configs:\n{scrape}"
        )
        port = free_port()
        proc = ManagedProcess(
            "prometheus",
            [
                binary,
                f"--config.file={home / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            log_path=self.run_dir / "logs" / "prometheus.log",
            env=dict(os.environ),
        )
        self.procs.add(proc.start())
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> dict[str, int | None]:
        codes = await asyncio.to_thread(self.procs.stop_all)
        await asyncio.to_thread(self.nats.stop)
        return codes

    def summary(self) -> str:
        lines = [
            f"run directory   {self.run_dir}",
            f"config          {self.config_path}",
            f"NATS            {self.nats.url} (monitoring {self.nats.monitor_url})",
            f"{'process':<16}{'pid':>8}  {'metrics / health':<34} log",
        ]
        for name, proc in self.procs.processes.items():
            lines.append(
                f"{name:<16}{proc.pid:>8}  {self.url(name, '/metrics'):<34} {proc.log_path}"
            )
        return "\n".join(lines)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def start_platform(
    run_dir: Path,
    *,
    nodes: int = 3,
    signers: int = 1,
    requesters: Sequence[RequesterConfig] = (),
    tweak: Callable[[Config], Config] | None = None,
    backup_sets: Sequence[BackupSetSpec] = (),
) -> DevStack:
    """Start everything and return once every service answers /readyz; ``backup_sets``
    are made (tokens, custodians, `lantau backup init`) before the services start."""
    run_dir.mkdir(parents=True, exist_ok=True)
    nats = await asyncio.to_thread(NatsServer(run_dir / "nats").start)
    module = find_module()
    tokens = [
        await asyncio.to_thread(init_token, run_dir / "hsm", f"lantau-hsm-{i}")
        for i in range(1, nodes + 1)
    ]
    policy_file = demo_policy.write(run_dir, [r.name for r in requesters])
    # Policy's authority key lives in a token of its own; the backup service's in a
    # 0600 seed file (either may be either: see [policy]/[backup] authority).
    authority_token = await asyncio.to_thread(init_token, run_dir / "authority", "lantau-policy")
    policy_authority = AuthorityConfig(
        module=module,
        token_label=authority_token.label,
        pin_file=str(authority_token.pin_file),
        key_label="lantau-policy-authority-1",
        softhsm_conf=str(authority_token.conf_path),
    )
    backup_seed = run_dir / "authority" / "backup.seed"
    backup_key = nacl.signing.SigningKey.generate()
    write_secret(backup_seed, backup_key.encode().hex() + "\n", replace=True)
    cfg = Config(
        nats=NatsConfig(servers=[nats.url]),
        hsm_nodes=[
            HsmNodeConfig(
                id=f"hsm-{i}",
                module=module,
                token_label=t.label,
                pin_file=str(t.pin_file),
                softhsm_conf=str(t.conf_path),
                state_dir=str(t.token_dir.parent / "state"),
                region="hk",
                metrics_port=free_port(),
            )
            for i, t in enumerate(tokens, start=1)
        ],
        requesters=list(requesters),
        signer=SignerConfig(metrics_port=free_port()),
        policy=PolicyConfig(
            metrics_port=free_port(), rules_file=str(policy_file), authority=policy_authority
        ),
        audit=AuditConfig(metrics_port=free_port()),
        backup=BackupConfig(
            metrics_port=free_port(), authority=AuthorityConfig(seed_file=str(backup_seed))
        ),
    )
    if tweak is not None:
        cfg = tweak(cfg)
    config_path = run_dir / "lantau.toml"
    config_path.write_text(config_mod.dump(cfg))
    # The SO ceremony, automated for dev: make policy's key, pin both authorities.
    policy_key = await asyncio.to_thread(_lantau, config_path, "authority", "create")
    cfg = msgspec.structs.replace(
        cfg,
        evidence=msgspec.structs.replace(
            cfg.evidence,
            policy_keys=[*cfg.evidence.policy_keys, policy_key],
            backup_keys=[*cfg.evidence.backup_keys, backup_key.verify_key.encode().hex()],
        ),
    )
    config_path.write_text(config_mod.dump(cfg))
    stack = DevStack(run_dir, cfg, config_path, nats, tokens)
    try:
        await asyncio.to_thread(_form_key_domain, stack)
        if backup_sets:
            cfg, stack.backup_sets = await asyncio.to_thread(
                make_backup_sets,
                run_dir,
                config_path,
                cfg,
                list(backup_sets),
                cfg.hsm_nodes[0].id,
                tokens[0].so_pin_file,
            )
            stack.config = cfg
        for node in cfg.hsm_nodes:
            stack.start_service(
                node.id,
                ["serve", "hsm-node", "--node", node.id],
                node.metrics_port,
                env={"SOFTHSM2_CONF": node.softhsm_conf or ""},
            )
        await stack.wait_ready([n.id for n in cfg.hsm_nodes])
        for i in range(1, signers + 1):
            name = "signer" if i == 1 else f"signer-{i}"
            port = cfg.signer.metrics_port if i == 1 else free_port()
            env = (
                {}
                if i == 1
                else {"LANTAU__SIGNER__ID": name, "LANTAU__SIGNER__METRICS_PORT": str(port)}
            )
            stack.start_service(name, ["serve", "signer"], port, env=env)
        stack.start_service("policy", ["serve", "policy"], cfg.policy.metrics_port)
        stack.start_service("audit", ["serve", "audit"], cfg.audit.metrics_port)
        stack.start_service("backup", ["serve", "backup"], cfg.backup.metrics_port)
        await stack.wait_ready()
    except BaseException:
        await stack.stop()
        raise
    return stack


def _lantau(config_path: Path, *args: str) -> str:
    """One ``lantau`` command in its own process (a ceremony binds one token); its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args, "--config", str(config_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"lantau {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _form_key_domain(stack: DevStack) -> None:
    """Domain key on the first HSM, then admit the others (the SO ceremony, automated for dev)."""
    first, *others = stack.tokens
    path, nodes = str(stack.config_path), stack.config.hsm_nodes
    hsm_admin.domain_init(path, nodes[0].id, str(first.so_pin_file))
    for node, token in zip(nodes[1:], others, strict=True):
        hsm_admin.admit(path, node.id, nodes[0].id, str(token.so_pin_file), str(first.so_pin_file))


async def dev_up(
    run_dir: Path,
    *,
    nodes: int = 3,
    requesters: Sequence[RequesterConfig] = (),
    on_ready: Callable[[DevStack], Awaitable[None]] | None = None,
    keep_running: bool = True,
    prometheus: bool = False,
) -> int:
    print(f"starting the Lantau dev stack in {run_dir} ({nodes} SoftHSM nodes) ...", flush=True)
    stack = await start_platform(run_dir, nodes=nodes, requesters=requesters)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    code = 0
    try:
        print("\n" + stack.summary(), flush=True)
        if prometheus:
            url = stack.start_prometheus()
            print(
                f"prometheus      {url} (scrapes every process every 2 s, with the alert rules)"
                if url
                else "prometheus      not installed (apt-get install prometheus); skipped",
                flush=True,
            )
        if on_ready is not None:
            await on_ready(stack)
        if keep_running:
            print(
                "\nplatform running; try `lantau hsm status`, `lantau keys list`. Ctrl-C stops it.",
                flush=True,
            )
            while not stopping.is_set():
                dead = stack.procs.dead()
                if dead:
                    for p in dead:
                        print(
                            f"\n{p.name} exited ({p.returncode}); log tail:\n{p.log_tail()}",
                            flush=True,
                        )
                    code = 1
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=0.5)
    finally:
        print("\nstopping ...", flush=True)
        codes = await stack.stop()
        unclean = {n: c for n, c in codes.items() if c not in (0, None)}
        print("stopped" + (f"; non-zero exits: {unclean}" if unclean else " cleanly"), flush=True)
    return code
