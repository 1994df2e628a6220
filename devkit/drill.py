"""The restore drill: every online token destroyed, the key domain and the keys rebuilt
from an offline backup set by M custodians, every key shown signing again.

``lantau backup drill`` runs it on a dev stack of its own; tests/e2e/test_backup_drill.py
runs the same steps on the test platform and checks each one. The destroying is the dev
harness's part (it stops the hsm-node processes and wipes their SoftHSM tokens); every
other step is the operator's ceremony, run as the real ``lantau`` command.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devkit.backup import BackupSetSpec, DevBackupSet
from devkit.softhsm import init_token
from devkit.stack import DevStack
from libs.bus.permissions import OPERATOR
from libs.client import CustodyClient
from libs.keys.directory import KeyDirectory
from proto.common import PayloadKind
from proto.keys import KeyRecord


def lantau(stack: DevStack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One operator command against the stack's config, in its own process."""
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args, "--config", str(stack.config_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"lantau {' '.join(args[:2])} failed:\n{proc.stderr.strip()}")
    return proc


async def destroy_online_tokens(stack: DevStack) -> None:
    """Every hsm-node stopped, its token wiped and initialised again, empty, with new PINs
    (written where the node reads them): the state after losing every online HSM."""
    nodes = stack.config.hsm_nodes
    await asyncio.gather(*(stack.procs[n.id].terminate_async() for n in nodes))
    for node, token in zip(nodes, stack.tokens, strict=True):
        shutil.rmtree(token.token_dir)
        fresh = await asyncio.to_thread(init_token, token.conf_path.parent.parent, token.label)
        assert fresh.conf_path == token.conf_path and fresh.pin_file == token.pin_file, node.id


async def start_online_nodes(stack: DevStack) -> None:
    for node in stack.config.hsm_nodes:
        stack.procs[node.id].start()
    await stack.wait_ready([n.id for n in stack.config.hsm_nodes])


async def records(stack: DevStack) -> dict[str, KeyRecord]:
    """The key directory, read as the operator."""
    nc = await stack.connect_as(OPERATOR)
    try:
        directory = await KeyDirectory.open(nc.jetstream())
        return {r.key_id: r for r in await directory.all()}
    finally:
        await nc.close()


@dataclass
class DrillReport:
    backup_set: str
    keys: int = 0
    backed_up: list[str] = field(default_factory=list)
    not_backed_up: dict[str, str] = field(default_factory=dict)
    restored: list[str] = field(default_factory=list)
    signing_again: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    audit: str = ""

    def lines(self) -> list[str]:
        out = [
            f"backup set {self.backup_set}: {self.keys} keys; {len(self.backed_up)} backed up, "
            f"{len(self.restored)} restored, {len(self.signing_again)} signing again with their "
            "original public key",
        ]
        out += [f"  not backed up: {k}: {why}" for k, why in sorted(self.not_backed_up.items())]
        out += [f"  lost with the online tokens: {k}" for k in self.lost]
        out += [f"  {step:<28} {s:6.2f} s" for step, s in self.seconds.items()]
        out.append(f"  audit: {self.audit}")
        return out


async def restore_drill(
    stack: DevStack, sets: Sequence[DevBackupSet], client: CustodyClient
) -> DrillReport:
    """Destroy every online token, admit the empty tokens to the key domain from the first
    backup set, restart them, restore from each set with M custodians, and sign with
    every key again."""
    from services.cli.hsm_admin import key_list

    report = DrillReport(", ".join(s.id for s in sets))
    # What `lantau keys list` shows before the disaster.
    rows = await key_list(stack.config, config_path=str(stack.config_path))
    before = {row.record.key_id: row.record for row in rows}
    report.keys = len(before)
    report.backed_up = sorted(k for k, r in before.items() if r.backup_sets)
    report.not_backed_up = {
        row.record.key_id: str(row.offline.reason) for row in rows if not row.offline.copies
    }
    member = sets[0]

    started = time.perf_counter()
    await destroy_online_tokens(stack)
    report.seconds["destroy online tokens"] = time.perf_counter() - started

    t = time.perf_counter()
    for node, token in zip(stack.config.hsm_nodes, stack.tokens, strict=True):
        await asyncio.to_thread(
            lantau,
            stack,
            "backup", "admit", node.id,
            "--set", member.id,
            "--so-pin-file", str(token.so_pin_file),
            *member.share_args(),
        )  # fmt: skip
    report.seconds[f"admit {len(stack.tokens)} tokens from {member.id}"] = time.perf_counter() - t

    t = time.perf_counter()
    await start_online_nodes(stack)
    report.seconds["restart hsm-nodes"] = time.perf_counter() - t

    restored: set[str] = set()
    for backup_set in sets:
        t = time.perf_counter()
        restore = ("backup", "restore", "--set", backup_set.id, *backup_set.share_args())
        out = await asyncio.to_thread(lantau, stack, *restore)
        mine = [line.split()[0] for line in out.stdout.splitlines() if " restored" in line]
        restored |= set(mine)
        report.seconds[f"restore {len(mine)} keys from {backup_set.id}"] = time.perf_counter() - t
    report.restored = sorted(restored)

    t = time.perf_counter()
    for key_id, record in sorted(before.items()):
        if key_id.startswith("lantau-"):
            continue  # platform keys sign only their own statements (the audit's checkpoints)
        payload = hashlib.sha256(f"drill {key_id}".encode()).digest()
        kind: PayloadKind = "digest" if record.curve == "secp256k1" else "message"
        result = await client.sign(key_id, payload, payload_kind=kind, timeout=20)
        if result.status == "signed" and result.public_key == record.public_key:
            report.signing_again.append(key_id)
        else:
            report.lost.append(key_id)
    report.seconds["sign with every key"] = time.perf_counter() - t
    report.seconds["total"] = time.perf_counter() - started
    audit = await asyncio.to_thread(lantau, stack, "audit", "verify", check=False)
    report.audit = (audit.stdout + audit.stderr).strip()
    return report


# -- lantau backup drill (a dev stack of its own) ----------------------------------------


async def drill_demo(run_dir: Path, keys: int) -> int:
    """``lantau backup drill``: a dev stack with a backup set in hk, ``keys`` keys in hk and
    untagged plus one Ed25519 key, backed up by 2 of 3 custodians, then the drill."""
    import nacl.signing

    from devkit.stack import start_platform
    from libs.config import RequesterConfig

    key = nacl.signing.SigningKey.generate()
    requester = RequesterConfig(
        name="drill",
        public_key=key.verify_key.encode().hex(),
        keys=["drill-*"],
        may_create_keys=True,
        blind_keys=["drill-*"],
    )
    print(f"starting a 2-node dev stack with backup set hk-vault in {run_dir} ...", flush=True)
    stack = await start_platform(
        run_dir,
        nodes=2,
        requesters=[requester],
        backup_sets=[BackupSetSpec("hk-vault", "hk")],
    )
    client = await CustodyClient.connect(
        stack.config.nats.servers, "drill", key, **stack.requester_options("drill")
    )
    try:
        for i in range(keys):
            region = "hk" if i % 2 == 0 else None
            created = await client.create_key(f"drill-k{i}", "secp256k1", region=region)
            assert created.status == "created", created.error
        await client.create_key("drill-ed", "ed25519")
        vault = stack.backup_sets["hk-vault"]
        t = time.perf_counter()
        backup_run = ("backup", "run", "--set", vault.id, *vault.share_args())
        run = await asyncio.to_thread(lantau, stack, *backup_run)
        print(run.stdout, flush=True)
        print(f"backup run: {time.perf_counter() - t:.2f} s", flush=True)
        report = await restore_drill(stack, [vault], client)
        print("\n".join(report.lines()), flush=True)
        unrestored = set(report.backed_up) - set(report.signing_again) - {"lantau-audit-checkpoint"}
        return 1 if unrestored else 0
    finally:
        await client.close()
        await stack.stop()
