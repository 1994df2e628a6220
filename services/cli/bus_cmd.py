"""``lantau bus authorize | nkey`` and ``lantau provision``: identities on the bus.

``bus authorize`` turns the platform config (and the policy file's approver groups) into
the nats-server authorization file and can tell the server to reload it; ``bus nkey``
makes one identity's seed; ``provision`` creates or updates streams, consumers and
buckets as the provisioning identity, the only one allowed to.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

import msgspec

from libs import config as config_mod
from libs.bus import permissions
from libs.bus.connect import connect
from libs.bus.identity import ensure_seed, write_seed
from libs.bus.provision import provision
from libs.config import Config, ConfigError
from services.cli.usage import UsageError


def approver_scopes(cfg: Config) -> dict[str, list[str]]:
    # Imported here: the policy service is heavy and only this command needs it.
    from services.policy.service import approver_scopes as scopes

    return scopes(cfg)


def with_platform_seeds(cfg: Config, seeds_dir: Path) -> Config:
    """``cfg`` with the nkeys of the service roles, the operator, the provisioner and the
    hsm-nodes that it leaves out taken from ``seeds_dir/<identity>.seed`` (made there,
    0600, when missing). Requesters and approvers bring their own nkeys."""

    def nkey(current: str | None, identity: str) -> str:
        return current or ensure_seed(seeds_dir / f"{identity}.seed")

    roles = cfg.nats.nkeys
    filled = msgspec.structs.replace(
        roles,
        **{
            role: nkey(getattr(roles, role), role)
            for role in (*permissions.SERVICE_ROLES, permissions.OPERATOR, permissions.PROVISIONER)
        },
    )
    nodes = [
        msgspec.structs.replace(n, nkey=nkey(n.nkey, permissions.node_identity(n.id)))
        for n in cfg.hsm_nodes
    ]
    nats_cfg = msgspec.structs.replace(cfg.nats, nkeys=filled)
    return msgspec.structs.replace(cfg, nats=nats_cfg, hsm_nodes=nodes)


def authorization(cfg: Config) -> str:
    """The authorization file's text for ``cfg``; refuses a config that names nobody."""
    found = permissions.identities(cfg, approver_scopes(cfg))
    if not found:
        raise ConfigError(
            "no identity has an nkey: set [nats.nkeys], hsm node, requester and approver "
            "nkeys first (docs/security.md)"
        )
    return permissions.render_authorization(found)


def write_authorization(cfg: Config, out: Path) -> None:
    """Write atomically: a server reloading meanwhile reads the old file or the new."""
    text = authorization(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)


def reload_server(pid_file: Path) -> int:
    """SIGHUP the nats-server whose pid is in ``pid_file`` (as `nats-server --signal
    reload=PIDFILE` does); returns the pid."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        raise UsageError(f"cannot read a pid from {pid_file}") from None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise UsageError(f"no process {pid} (from {pid_file})") from None
    return pid


def cmd_authorize(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    if args.seeds_dir:
        cfg = with_platform_seeds(cfg, Path(args.seeds_dir))
    write_authorization(cfg, Path(args.out))
    count = len(permissions.identities(cfg, approver_scopes(cfg)))
    print(f"{args.out}: {count} identities")
    if args.reload_pid_file:
        pid = reload_server(Path(args.reload_pid_file))
        print(f"nats-server {pid} told to reload")
    return 0


def cmd_nkey(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        raise UsageError(f"{out} exists; refusing to overwrite an identity")
    print(write_seed(out))
    return 0


async def provision_once(cfg: Config, seed_file: str | None = None) -> None:
    """Create or update every stream, consumer and bucket as ``provisioner``."""
    nc = await connect(
        cfg.nats,
        "lantau-provision",
        identity=permissions.PROVISIONER,
        seed_file=seed_file,
        patient=False,
    )
    try:
        await provision(nc.jetstream(), cfg.nats)
    finally:
        await nc.close()


def cmd_provision(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    asyncio.run(provision_once(cfg, args.seed_file))
    print("streams, consumers and buckets provisioned")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    bus = sub.add_parser("bus", help="NATS identities and permissions").add_subparsers(
        dest="bus", required=True
    )
    p = bus.add_parser("authorize", help="write the nats-server users and allow-lists")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="authorization file the server includes")
    p.add_argument(
        "--reload-pid-file", help="then SIGHUP this nats-server (its pid file) to apply it"
    )
    p.add_argument(
        "--seeds-dir",
        help="platform identities (roles, operator, provisioner, hsm-nodes) without an nkey "
        "in the config: their seeds here (<identity>.seed, made 0600 when missing)",
    )
    p.set_defaults(fn=cmd_authorize)
    p = bus.add_parser("nkey", help="make an identity: its seed file (0600); prints the nkey")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_nkey)
    p = sub.add_parser("provision", help="create or update streams, consumers and buckets")
    p.add_argument("--config", required=True)
    p.add_argument("--seed-file", help="the provisioner's seed (default [nats] seed_file)")
    p.set_defaults(fn=cmd_provision)
