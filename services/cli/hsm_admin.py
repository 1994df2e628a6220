"""``lantau hsm domain-init`` and ``lantau hsm admit``: key-domain ceremonies.

SoftHSM (like one HSM per host) reads its configuration once per process, so each
step runs in a child process bound to one token; only the transport public key
and the wrapped domain key pass between them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import subprocess
import sys
from collections.abc import Iterator

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs import config as config_mod
from libs.backup.plan import OfflineStatus, offline_status
from libs.bus.permissions import OPERATOR
from libs.bus.publish import publish
from libs.bus.violations import subscribe_checked
from libs.clock import now_ms
from libs.config import Config
from libs.hsm import ceremony
from libs.hsm.remote import RemoteHsm
from libs.hsm.sealed_store import KvIndexLedger
from libs.keys.directory import KeyDirectory
from libs.keys.residency import fully_replicated
from libs.keytypes.lms_state import IndexState, leased_outstanding, signatures_left
from proto import codec
from proto.admin import PoolStatus
from proto.errors import LantauError, TransientError
from proto.events import AdminAction
from proto.keys import KeyRecord
from proto.subjects import ADMIN_POOL_STATUS, EVENT_ADMIN
from services.cli import second_factor
from services.cli.identity import connect_cli


def ceremony_step(
    config_path: str, node_id: str, step: str, so_pin_file: str, data: bytes = b""
) -> bytes:
    """One SO ceremony step on an online node's token, in a child process bound to it."""
    argv = [
        sys.executable,
        "-m",
        "services.cli.ceremony_step",
        step,
        "--config",
        config_path,
        "--node",
        node_id,
        "--so-pin-file",
        so_pin_file,
    ]
    proc = subprocess.run(argv, input=data, capture_output=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise ceremony.CeremonyError(
            f"{step} on {node_id} failed: {proc.stderr.decode(errors='replace').strip()}"
        )
    return proc.stdout


async def _record(
    cfg: Config, command: str, node: str, phase: str, detail: str = "", config_path: str = ""
) -> None:
    # As the operator: ceremony records are the one thing it publishes besides questions.
    nc = await connect_cli(cfg, OPERATOR, config_path=config_path or None, name="lantau-admin")
    try:
        js = nc.jetstream()
        action = AdminAction(
            actor=getpass.getuser(),
            command=command,
            node=node,
            phase=phase,
            detail=detail,
            at_ms=now_ms(),
        )
        await publish(js, EVENT_ADMIN, action)
    finally:
        await nc.close()


@contextlib.contextmanager
def audited(config_path: str, command: str, node: str) -> Iterator[list[str]]:
    """Fail closed, like the signer: an admin command that cannot be recorded does not run.

    The body may add lines to the list it is given: they are the "completed" record's
    detail. A failure is recorded with its error code and sentence (never a secret)."""
    cfg = config_mod.load(config_path)
    try:
        asyncio.run(_record(cfg, command, node, "started", config_path=config_path))
    except Exception as e:
        raise ceremony.CeremonyError(
            f"refusing to run {command}: the audit trail cannot record it ({type(e).__name__})"
        ) from None
    details: list[str] = []
    try:
        yield details
    except BaseException as e:
        detail = f"{e.code}: {e.message}" if isinstance(e, LantauError) else type(e).__name__
        with contextlib.suppress(Exception):
            asyncio.run(_record(cfg, command, node, "failed", detail, config_path))
        raise
    asyncio.run(_record(cfg, command, node, "completed", "; ".join(details), config_path))


def domain_init(
    config_path: str,
    node_id: str,
    so_pin_file: str,
    *,
    officer: str | None = None,
    totp_code: str | None = None,
) -> str:
    """The domain KEK, then the domain sealing key, on the first HSM (each kept if there)."""
    second_factor.require(config_path, officer, f"hsm domain-init {node_id}", code=totp_code)
    with audited(config_path, "hsm domain-init", node_id):
        kek = ceremony_step(config_path, node_id, "init", so_pin_file).decode()
        sealing = ceremony_step(config_path, node_id, "seal-init", so_pin_file).decode()
        return f"{kek}; sealing key: {sealing}"


def admit(
    config_path: str,
    new: str,
    member: str,
    new_so_pin: str,
    member_so_pin: str,
    *,
    officer: str | None = None,
    totp_code: str | None = None,
) -> None:
    """Give HSM ``new`` the domain key held by ``member``, then the domain sealing key
    wrapped under it: neither ever in plaintext outside an HSM."""
    purpose = f"hsm admit {new} --member {member}"
    second_factor.require(config_path, officer, purpose, code=totp_code)
    with audited(config_path, f"hsm admit --member {member}", new):
        if ceremony_step(config_path, new, "has", new_so_pin) != b"yes":
            transport = ceremony_step(config_path, new, "transport", new_so_pin)
            wrapped = ceremony_step(config_path, member, "export", member_so_pin, transport)
            ceremony_step(config_path, new, "import", new_so_pin, wrapped)
        if ceremony_step(config_path, new, "seal-has", new_so_pin) != b"yes":
            sealing = ceremony_step(config_path, member, "seal-export", member_so_pin)
            ceremony_step(config_path, new, "seal-import", new_so_pin, sealing)


def cmd_domain_init(args: argparse.Namespace) -> int:
    outcome = domain_init(
        args.config, args.node, args.so_pin_file, officer=args.officer, totp_code=args.totp_code
    )
    print(f"domain key on {args.node}: {outcome}")
    return 0


def cmd_admit(args: argparse.Namespace) -> int:
    admit(
        args.config,
        args.node,
        args.member,
        args.so_pin_file,
        args.member_so_pin_file,
        officer=args.officer,
        totp_code=args.totp_code,
    )
    print(
        f"{args.node} admitted to the key domain (domain key and sealing key received "
        f"from {args.member})"
    )
    return 0


def add_parsers(hsm: argparse._SubParsersAction) -> None:
    p = hsm.add_parser("domain-init", help="create the domain key on the first HSM (SO PIN)")
    p.add_argument("--config", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--so-pin-file", required=True)
    second_factor.add_arguments(p)
    p.set_defaults(fn=cmd_domain_init)

    p = hsm.add_parser("admit", help="admit an HSM to the key domain (both SO PINs)")
    p.add_argument("node", help="the new HSM node id")
    p.add_argument("--member", required=True, help="an HSM node already in the domain")
    p.add_argument("--config", required=True)
    p.add_argument("--so-pin-file", required=True, help="the new HSM's SO PIN file")
    p.add_argument("--member-so-pin-file", required=True)
    second_factor.add_arguments(p)
    p.set_defaults(fn=cmd_admit)


# -- operator views ------------------------------------------------------------


async def pool_status(
    cfg: Config, wait_s: float = 0.7, *, config_path: str | None = None
) -> list[PoolStatus]:
    """Ask every signer replica for its view of the pool (scatter-gather), as operator."""
    nc = await connect_cli(cfg, OPERATOR, config_path=config_path)
    replies: list[PoolStatus] = []
    try:
        inbox = nc.new_inbox()

        async def collect(msg: Msg) -> None:
            with contextlib.suppress(LantauError):
                replies.append(codec.POOL_STATUS.decode(msg.data))

        sub = await subscribe_checked(nc, inbox, cb=collect)
        await nc.publish(ADMIN_POOL_STATUS, b"", reply=inbox)
        await asyncio.sleep(wait_s)
        await sub.unsubscribe()
    finally:
        await nc.close()
    return sorted(replies, key=lambda r: r.signer)


def render_pool(statuses: list[PoolStatus]) -> str:
    if not statuses:
        return "no signer answered: is the platform running?"
    lines = []
    for status in statuses:
        lines.append(f"signer {status.signer}")
        lines.append(
            f"  {'node':<12} {'state':<11} {'circuit':<10} {'in-flight':>9} {'ok':>8} "
            f"{'errors':>7} {'timeouts':>8} {'last beat':>10}"
        )
        for n in status.nodes:
            beat = (
                "never" if n.last_beat_age_ms is None else f"{n.last_beat_age_ms / 1000:.1f}s ago"
            )
            lines.append(
                f"  {n.node_id:<12} {n.state:<11} {n.circuit:<10} {n.in_flight:>9} "
                f"{n.successes:>8} {n.errors:>7} {n.timeouts:>8} {beat:>10}"
            )
    return "\n".join(lines)


class KeyRow(msgspec.Struct, frozen=True, kw_only=True):
    """One key as `lantau keys list` shows it: where its online and offline copies are."""

    record: KeyRecord
    replicated: bool
    offline: OfflineStatus
    # lms-hss: the key's one-time index ledger (None: missing, or another key type).
    ledger: IndexState | None = None


async def key_list(cfg: Config, *, config_path: str | None = None) -> list[KeyRow]:
    nc = await connect_cli(cfg, OPERATOR, config_path=config_path)
    try:
        js = nc.jetstream()
        directory = await KeyDirectory.open(js)
        records = await directory.all()
        wrappable = await _wrappable(cfg, nc)
        ledger = KvIndexLedger(js)
        rows = []
        for r in sorted(records, key=lambda r: r.key_id):
            state = (await ledger.read(r.key_id))[0] if r.curve == "lms-hss" else None
            rows.append(
                KeyRow(
                    record=r,
                    replicated=fully_replicated(r, cfg.hsm_nodes),
                    offline=offline_status(r, cfg.backup_sets, wrappable),
                    ledger=state,
                )
            )
    finally:
        await nc.close()
    return rows


async def _wrappable(cfg: Config, nc: Client) -> dict[str, frozenset[str] | None]:
    """What each online node says it can wrap (None: it did not answer)."""

    async def ask(node_id: str) -> frozenset[str] | None:
        try:
            caps = await RemoteHsm(nc, node_id, timeout_s=1.0).capabilities()
        except (LantauError, TransientError):
            return None
        return frozenset(caps.wrappable)

    answers = await asyncio.gather(*(ask(n.id) for n in cfg.hsm_nodes))
    return {n.id: a for n, a in zip(cfg.hsm_nodes, answers, strict=True)}


def render_keys(rows: list[KeyRow]) -> str:
    if not rows:
        return "no keys"
    lines = [
        f"{'key':<20} {'type':<16} {'protection':<12} {'status':<8} {'region':<7} "
        f"{'replicated':<10} online nodes / offline copies / public key"
    ]
    missing = 0
    for row in rows:
        r = row.record
        lines.append(
            f"{r.key_id:<20} {r.curve:<16} {r.protection:<12} {r.status:<8} "
            f"{r.region or '-':<7} {'yes' if row.replicated else 'NO':<10} {','.join(r.nodes)}"
        )
        if row.offline.copies:
            lines.append(f"{'':<20} offline: {', '.join(row.offline.copies)}")
        else:
            missing += r.status == "active"
            lines.append(f"{'':<20} offline: not backed up: {row.offline.reason}")
        public = r.public_key.hex()
        if len(r.public_key) > 64:
            public = f"{public[:64]}... ({len(r.public_key)} bytes)"
        lines.append(f"{'':<20} {public}")
        if r.curve == "lms-hss":
            ledger = row.ledger
            if ledger is None:
                lines.append(f"{'':<20} signatures left: UNKNOWN (no index ledger: fence it)")
            else:
                lines.append(
                    f"{'':<20} signatures left: {signatures_left(ledger)} of {ledger.total} "
                    f"(+ up to {leased_outstanding(ledger)} in live leases)"
                )
        for x in r.xpubs:
            exported = x.xpub or f"public key {x.public_key.hex()} chain code {x.chain_code.hex()}"
            lines.append(f"{'':<20} {x.path}: {exported}")
    lines.append(f"{len(rows)} key(s); {missing} without an offline copy")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = config_mod.load_for_cli(args.config)
    statuses = asyncio.run(pool_status(cfg, config_path=args.config))
    print(render_pool(statuses))
    return 0 if statuses else 1


def cmd_keys_list(args: argparse.Namespace) -> int:
    rows = asyncio.run(key_list(config_mod.load_for_cli(args.config), config_path=args.config))
    print(render_keys(rows))
    return 0


def add_view_parsers(hsm: argparse._SubParsersAction, keys: argparse._SubParsersAction) -> None:
    p = hsm.add_parser("status", help="each signer's view of the HSM pool")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_status)
    p = keys.add_parser(
        "list",
        help="keys, types, protection, where every copy lives (online, offline), "
        "HSS signatures left",
    )
    p.add_argument("--config")
    p.set_defaults(fn=cmd_keys_list)
