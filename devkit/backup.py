"""Offline backup sets in the dev stack: a SoftHSM token of their own (and a scratch slot
for `lantau backup verify`), custodians with key files, and `lantau backup init` run as
the ceremony it is, its results written into the config like an operator would.

Dev shortcuts, said plainly: softhsm2-util must be given a user PIN when it initialises a
token, so the backup token is made with a random throwaway one that is never written
down, then replaced through PKCS#11 by `lantau backup init` (C_InitPIN); the initial SO
PIN lives in a 0600 file until init replaces it, and is deleted after. Every custodian's
key file and share file sit side by side in the run directory, which no real custodian
would allow.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from devkit.softhsm import SoftHsmToken, find_module, init_slots
from libs import config as config_mod
from libs.backup.custodian import custodian_keygen
from libs.backup.files import write_custodian_key
from libs.bus.identity import ensure_seed
from libs.bus.permissions import backup_set_identity
from libs.config import BackupSetConfig, Config, CustodianConfig

NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace")


@dataclass(frozen=True)
class BackupSetSpec:
    id: str
    region: str | None
    custodians: int = 3
    threshold: int = 2


@dataclass(frozen=True)
class Custodian:
    name: str
    share_file: Path
    key_file: Path


@dataclass(frozen=True)
class DevBackupSet:
    id: str
    region: str | None
    threshold: int
    token: SoftHsmToken
    scratch: SoftHsmToken
    custodians: list[Custodian]

    def share_args(self, count: int | None = None, *, skip: int = 0) -> list[str]:
        """``--share SHARE KEY`` for ``count`` custodians (default: the threshold)."""
        chosen = self.custodians[skip : skip + (self.threshold if count is None else count)]
        args: list[str] = []
        for c in chosen:
            args += ["--share", str(c.share_file), str(c.key_file)]
        return args


def _lantau(config_path: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args, "--config", str(config_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"lantau {' '.join(args[:2])} failed: {proc.stderr.strip()}")
    return proc.stdout


def prepare(
    run_dir: Path, seeds: Path, spec: BackupSetSpec
) -> tuple[BackupSetConfig, DevBackupSet]:
    """The set's tokens, custodians and NATS identity (its seed in ``seeds``), and its
    [[backup_sets]] entry (before init)."""
    home = run_dir / "backup" / spec.id
    # Neither label may start with the other: pkcs11-tool --token-label matches a prefix.
    token, scratch = init_slots(home, [f"lantau-{spec.id}", f"scratch-{spec.id}"])
    token.pin_file.unlink()  # the throwaway user PIN: init replaces it through PKCS#11
    people = run_dir / "custodians" / spec.id
    people.mkdir(parents=True, exist_ok=True)
    custodians, entries = [], []
    for name in NAMES[: spec.custodians]:
        public, private = custodian_keygen()
        key_file = people / f"{name}.key"
        write_custodian_key(key_file, private)
        custodians.append(Custodian(name, people / f"{spec.id}.{name}.share", key_file))
        entries.append(CustodianConfig(name=name, public_key=public))
    entry = BackupSetConfig(
        id=spec.id,
        nkey=ensure_seed(seeds / f"{backup_set_identity(spec.id)}.seed"),
        region=spec.region,
        module=find_module(),
        token_label=token.label,
        softhsm_conf=str(token.conf_path),
        custodians=entries,
        threshold=spec.threshold,
        scratch_token_label=scratch.label,
        scratch_pin_file=str(scratch.pin_file),
        scratch_so_pin_file=str(scratch.so_pin_file),
    )
    made = DevBackupSet(spec.id, spec.region, spec.threshold, token, scratch, custodians)
    return entry, made


_FINGERPRINT = re.compile(r"^fingerprint ([0-9a-f]{32})$", re.M)
_PUBLIC_KEY = re.compile(r"^public key ([0-9a-f]{64})$", re.M)


def initialise(
    config_path: Path, cfg: Config, made: DevBackupSet, member: str, member_so_pin: Path
) -> Config:
    """`lantau backup init` for one set, then its fingerprint and key written into the
    config (what the operator does by hand); returns the new config."""
    out = _lantau(
        config_path,
        "backup", "init",
        "--set", made.id,
        "--initial-so-pin-file", str(made.token.so_pin_file),
        "--member", member,
        "--member-so-pin-file", str(member_so_pin),
        "--out-dir", str(made.custodians[0].share_file.parent),
    )  # fmt: skip
    fingerprint = _FINGERPRINT.search(out)
    public = _PUBLIC_KEY.search(out)
    if fingerprint is None or public is None:
        raise RuntimeError(f"lantau backup init printed no fingerprint or key:\n{out}")
    made.token.so_pin_file.unlink()  # replaced by the derived SO PIN: only shares open it now
    sets = [
        msgspec.structs.replace(b, fingerprint=fingerprint.group(1)) if b.id == made.id else b
        for b in cfg.backup_sets
    ]
    keys = {**cfg.evidence.backup_set_keys, made.id: public.group(1)}
    cfg = msgspec.structs.replace(
        cfg,
        backup_sets=sets,
        evidence=msgspec.structs.replace(cfg.evidence, backup_set_keys=keys),
    )
    config_path.write_text(config_mod.dump(cfg))
    return cfg


def prepare_sets(
    run_dir: Path, seeds: Path, cfg: Config, specs: list[BackupSetSpec]
) -> tuple[Config, dict[str, DevBackupSet]]:
    """Every set of ``specs`` in the config (identities included, so the NATS users
    written next know them), not yet initialised."""
    made: dict[str, DevBackupSet] = {}
    for spec in specs:
        entry, made[spec.id] = prepare(run_dir, seeds, spec)
        cfg = msgspec.structs.replace(cfg, backup_sets=[*cfg.backup_sets, entry])
    return cfg, made


def initialise_sets(
    config_path: Path,
    cfg: Config,
    made: dict[str, DevBackupSet],
    member: str,
    member_so_pin: Path,
) -> Config:
    """`lantau backup init` for every prepared set, against a running NATS (init is
    recorded), before the hsm-nodes start (they pin the sets' keys at start)."""
    config_path.write_text(config_mod.dump(cfg))
    for dev_set in made.values():
        cfg = initialise(config_path, cfg, dev_set, member, member_so_pin)
    return cfg
