"""``lantau backup``: the offline backup ceremonies (docs/operations.md, "Offline backups").

Every ceremony is recorded before it runs and again when it ends (``hsm_admin.audited``:
fail closed), refusals included, with their error code. Custodians present their share
file and key file (``--share SHARE_FILE KEY_FILE``, once per custodian); the set's
secret is rebuilt in this process for the ceremony and wiped. The backup token is bound
in this process (SoftHSM reads one configuration per process); online tokens are reached
over the bus, or for SO steps in child processes bound to them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import msgspec
from nats.aio.client import Client

from libs import config as config_mod
from libs.backup import ceremony as backup
from libs.backup.custodian import Custodian, custodian_keygen
from libs.backup.derive import BackupSecrets
from libs.backup.envelope import ShareEnvelope
from libs.backup.files import write_custodian_key, write_share
from libs.backup.quorum import create_backup_set, reshare
from libs.bus.permissions import backup_set_identity
from libs.config import BackupSetConfig, Config
from libs.hsm import ceremony as so_ceremony
from proto.events import BackupManifest
from services.cli import second_factor
from services.cli.ceremony_step import read_secret
from services.cli.hsm_admin import audited, ceremony_step
from services.cli.identity import connect_cli

T = TypeVar("T")


def _set(cfg: Config, set_id: str) -> BackupSetConfig:
    return cfg.backup_set(set_id)


def _actor() -> str:
    return getpass.getuser()


async def _on_bus(
    cfg: Config, set_id: str, config_path: str, fn: Callable[[Client], Awaitable[T]]
) -> T:
    """The ceremony's connection, as the set's own NATS identity (backup-set-<id>): its
    seed beside the config (nkeys/), or --seed-file... as `lantau` finds seeds."""
    nc = await connect_cli(
        cfg, backup_set_identity(set_id), config_path=config_path, name="lantau-backup-ceremony"
    )
    try:
        return await fn(nc)
    finally:
        await nc.close()


def _share_files(out_dir: str, set_id: str, envelopes: list[ShareEnvelope]) -> list[Path]:
    """Write each custodian's share (0600, never over an existing file); on failure the
    files written so far are removed (nothing was changed yet)."""
    home = Path(out_dir)
    home.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for envelope in envelopes:
            path = home / f"{set_id}.{envelope.custodian}.share"
            write_share(path, envelope)
            written.append(path)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return written


# -- init ----------------------------------------------------------------------------


class Made(msgspec.Struct, frozen=True, kw_only=True):
    """What `lantau backup init` made public: the operator records both in the config."""

    set_fingerprint: str
    signing_public_key: str
    share_files: list[str]


def init(
    config_path: str,
    set_id: str,
    initial_so_pin_file: str,
    member: str,
    member_so_pin_file: str,
    out_dir: str,
) -> Made:
    """Make a backup set: a master secret from the token's RNG, shares for the config's
    custodians, the token admitted to the key domain, then its PINs set from the secret."""
    cfg = config_mod.load(config_path)
    set_cfg = _set(cfg, set_id)
    custodians = [Custodian(name=c.name, public_key=c.public_key) for c in set_cfg.custodians]
    with audited(config_path, "backup init", set_id) as details:
        backup.bind(set_cfg)
        initial = read_secret(initial_so_pin_file, "initial SO PIN file")
        module, label = set_cfg.module, set_cfg.token_label

        def token_rng(n: int) -> bytes:
            return so_ceremony.draw_random(module, label, initial, n)

        envelopes, secrets = create_backup_set(set_id, custodians, set_cfg.threshold, rng=token_rng)
        with secrets:
            kek = cfg.backup.kek_label
            # Admitted first, with the initial SO PIN: until the PINs change nothing is
            # irreversible, and a failed init can simply be run again.
            if not so_ceremony.has_domain_key(module, label, initial, kek):
                transport = so_ceremony.make_transport_key(module, label, initial)
                wrapped = ceremony_step(
                    config_path,
                    member,
                    "export",
                    member_so_pin_file,
                    msgspec.msgpack.encode(transport),
                )
                so_ceremony.import_domain_key(module, label, initial, kek, wrapped)
            files = _share_files(out_dir, set_id, envelopes)
            try:
                so_ceremony.set_credentials(module, label, initial, secrets.so_pin, secrets.pin)
            except BaseException:
                for path in files:
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise
            made = Made(
                set_fingerprint=secrets.set_fingerprint,
                signing_public_key=secrets.signing_public_key,
                share_files=[str(p) for p in files],
            )
            details.append(
                f"fingerprint {made.set_fingerprint}; key {made.signing_public_key}; "
                f"{set_cfg.threshold} of {len(custodians)} custodians; admitted from {member}"
            )
    return made


def cmd_init(args: argparse.Namespace) -> int:
    made = init(
        args.config,
        args.set,
        args.initial_so_pin_file,
        args.member,
        args.member_so_pin_file,
        args.out_dir,
    )
    print(f"backup set {args.set} initialised; its PINs now exist only as the shares:")
    for path in made.share_files:
        print(f"  {path}")
    print('record in the config (docs/operations.md, "Create a backup set"):')
    print(f'  [[backup_sets]] id = "{args.set}": fingerprint = "{made.set_fingerprint}"')
    print(f'  [evidence] backup_set_keys: {args.set} = "{made.signing_public_key}"')
    print(f"fingerprint {made.set_fingerprint}")
    print(f"public key {made.signing_public_key}")
    return 0


# -- run / verify / restore ---------------------------------------------------------


def _ceremony(
    args: argparse.Namespace,
    command: str,
    body: Callable[[Config, BackupSetConfig, BackupSecrets, Client], Awaitable[BackupManifest]],
) -> BackupManifest:
    cfg = config_mod.load(args.config)
    set_cfg = _set(cfg, args.set)
    with audited(args.config, command, args.set) as details:
        with backup.open_secrets(cfg, set_cfg, args.share or []) as secrets:
            run_it = lambda nc: body(cfg, set_cfg, secrets, nc)  # noqa: E731
            manifest = asyncio.run(_on_bus(cfg, args.set, args.config, run_it))
        counts: dict[str, int] = {}
        for entry in manifest.entries:
            counts[entry.status] = counts.get(entry.status, 0) + 1
        details.append(
            ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no keys"
        )
    return manifest


def _print_manifest(manifest: BackupManifest) -> None:
    for e in manifest.entries:
        where = f" -> {', '.join(e.nodes)}" if e.nodes else ""
        why = f": {e.reason}" if e.reason else ""
        status = e.status.replace("_", " ")
        print(f"{e.key_id:<24} {e.curve:<10} {e.region or '-':<6} {status}{why}{where}")
    print(
        f"manifest of backup set {manifest.backup_set} ({manifest.ceremony}) signed by "
        f"{manifest.signed_by[:16]}... and published for the audit trail"
    )


def cmd_run(args: argparse.Namespace) -> int:
    manifest = _ceremony(
        args,
        "backup run",
        lambda cfg, s, secrets, nc: backup.run(cfg, s, secrets, nc, actor=_actor(), keys=args.key),
    )
    _print_manifest(manifest)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    manifest = _ceremony(
        args,
        "backup verify",
        lambda cfg, s, secrets, nc: backup.verify(cfg, s, secrets, nc, actor=_actor()),
    )
    _print_manifest(manifest)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    manifest = _ceremony(
        args,
        "backup restore",
        lambda cfg, s, secrets, nc: backup.restore(
            cfg, s, secrets, nc, actor=_actor(), targets=args.node, keys=args.key
        ),
    )
    _print_manifest(manifest)
    return 0


# -- admit, reshare, custodian keys ----------------------------------------------------


def admit(
    config_path: str, set_id: str, node: str, so_pin_file: str, presented: backup.Presented
) -> bool:
    """Give online HSM ``node`` the domain key from the backup set's token (when no online
    token is left to give it); False if it already had one."""
    cfg = config_mod.load(config_path)
    set_cfg = _set(cfg, set_id)
    with audited(config_path, f"backup admit --set {set_id}", node) as details:
        with backup.open_secrets(cfg, set_cfg, presented) as secrets:
            if ceremony_step(config_path, node, "has", so_pin_file) == b"yes":
                details.append("already a member")
                return False
            raw = ceremony_step(config_path, node, "transport", so_pin_file)
            transport = msgspec.msgpack.decode(raw, type=so_ceremony.TransportKey)
            backup.bind(set_cfg)
            wrapped = so_ceremony.export_domain_key(
                set_cfg.module, set_cfg.token_label, secrets.so_pin, cfg.backup.kek_label, transport
            )
            ceremony_step(config_path, node, "import", so_pin_file, wrapped)
            details.append(f"domain key received from backup set {set_id}")
    return True


def cmd_admit(args: argparse.Namespace) -> int:
    if admit(args.config, args.set, args.node, args.so_pin_file, args.share or []):
        print(f"{args.node} admitted to the key domain (domain key from backup set {args.set})")
    else:
        print(f"{args.node} already holds the domain key")
    return 0


def cmd_reshare(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    set_cfg = _set(cfg, args.set)
    custodians = [Custodian(name=c.name, public_key=c.public_key) for c in set_cfg.custodians]
    with audited(args.config, "backup reshare", args.set) as details:
        fingerprint = backup.current_fingerprint(set_cfg)
        shares = backup.open_shares(args.share or [])
        try:
            envelopes = reshare(
                shares,
                custodians,
                set_cfg.threshold,
                backup_set=args.set,
                current_fingerprint=fingerprint,
            )
        finally:
            for share in shares:
                share.wipe()
        files = _share_files(args.out_dir, args.set, envelopes)
        new = envelopes[0].set_fingerprint
        details.append(
            f"new fingerprint {new}; {set_cfg.threshold} of {len(custodians)} custodians"
        )
    print(f"backup set {args.set} reshared; new share files:")
    for path in files:
        print(f"  {path}")
    print(f'record the new fingerprint in [[backup_sets]] id = "{args.set}": {new}')
    print("then every custodian destroys their old share file (docs/operations.md).")
    print(f"fingerprint {new}")
    return 0


def cmd_custodian_keygen(args: argparse.Namespace) -> int:
    public, private = custodian_keygen()
    write_custodian_key(args.out, private)
    print(public)
    return 0


# -- parser ---------------------------------------------------------------------------


def _shares(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--share",
        nargs=2,
        action="append",
        metavar=("SHARE_FILE", "KEY_FILE"),
        help="a custodian's share file and key file (once per custodian present)",
    )


def _officer_checked(
    name: str, fn: Callable[[argparse.Namespace], int]
) -> Callable[[argparse.Namespace], int]:
    """``fn`` once the ceremony's officer has given their second factor (when the policy
    asks for one): the custodians' shares are one control, the officer's code another."""

    def run(args: argparse.Namespace) -> int:
        purpose = f"backup {name} --set {args.set}"
        second_factor.require(args.config, args.officer, purpose, code=args.totp_code)
        return fn(args)

    return run


def add_parsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """``lantau backup ...``; returns its subcommands (devkit adds ``drill``)."""
    bk = sub.add_parser("backup", help="offline backup sets (custodian ceremonies)")
    cmds = bk.add_subparsers(dest="backup", required=True)

    p = cmds.add_parser("init", help="make a backup set: shares, token PINs, domain key")
    p.add_argument("--set", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--initial-so-pin-file", required=True, help="the new token's SO PIN")
    p.add_argument("--member", required=True, help="an online HSM node of the key domain")
    p.add_argument("--member-so-pin-file", required=True)
    p.add_argument("--out-dir", required=True, help="where the share files are written")
    second_factor.add_arguments(p)
    p.set_defaults(fn=_officer_checked("init", cmd_init))

    for name, fn, text in (
        ("run", cmd_run, "copy every eligible key into the backup set"),
        ("verify", cmd_verify, "restore the set into its scratch token, sign, compare"),
        ("restore", cmd_restore, "give the set's keys back to online HSMs"),
    ):
        p = cmds.add_parser(name, help=text)
        p.add_argument("--set", required=True)
        p.add_argument("--config", required=True)
        _shares(p)
        if name != "verify":
            p.add_argument("--key", action="append", help="only this key (repeatable)")
        if name == "restore":
            p.add_argument("--node", action="append", help="only to this node (repeatable)")
        second_factor.add_arguments(p)
        p.set_defaults(fn=_officer_checked(name, fn))

    p = cmds.add_parser("admit", help="admit an online HSM to the key domain from the set")
    p.add_argument("node")
    p.add_argument("--set", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--so-pin-file", required=True, help="the online HSM's SO PIN file")
    _shares(p)
    second_factor.add_arguments(p)
    p.set_defaults(fn=_officer_checked("admit", cmd_admit))

    p = cmds.add_parser("reshare", help="new shares of the same secret (a custodian left)")
    p.add_argument("--set", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--out-dir", required=True)
    _shares(p)
    second_factor.add_arguments(p)
    p.set_defaults(fn=_officer_checked("reshare", cmd_reshare))

    p = cmds.add_parser("custodian-keygen", help="a custodian's X25519 key file (0600)")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_custodian_keygen)
    return cmds
