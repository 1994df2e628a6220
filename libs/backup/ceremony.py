"""The offline backup ceremonies: M custodians open a backup set, and keys move between
it and the online HSMs, wrapped under the domain key, each move authorized by the set's
own key and checked by the guard at both ends.

The backup token is used in this process only (it is never on the bus), behind a
``Guard`` of its own like any hsm-node's; online nodes are reached over the bus, where
their guards check the same authorizations. Every operation of the backup token's guard
becomes a receipt, and every ceremony a manifest signed with the set's key, both
published for the audit trail. The quorum's secrets live for the ceremony only.

SoftHSM reads its configuration once per process: a ceremony process binds the backup
set's module (and its scratch token, a slot of the same module) before anything else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import msgspec
from nats.aio.client import Client

from libs import curves
from libs.backup.derive import BackupSecrets
from libs.backup.envelope import DecryptedShare, open_share
from libs.backup.files import read_custodian_key, read_share
from libs.backup.manifest import sign_manifest
from libs.backup.plan import copy_plan, restore_plan
from libs.backup.quorum import combine
from libs.bus.publish import publish
from libs.clock import now_ms
from libs.config import BackupSetConfig, Config, ConfigError
from libs.evidence import Pins, pins_from
from libs.hsm import ceremony as so_ceremony
from libs.hsm.guard import Guard, clone_check_bytes
from libs.hsm.remote import RemoteHsm
from libs.hsm.replay import ReplayLog
from libs.hsm.token import Pkcs11Token
from libs.keys.directory import KeyDirectory
from proto.authorization import CloneAuthorization, signing_bytes
from proto.common import Curve
from proto.errors import ErrorCode, LantauError, TransientError
from proto.events import BackupManifest, BackupManifestEntry
from proto.hsm import HsmCloneCheck, HsmKey, HsmReceipt, HsmReceipts, HsmUnwrap, HsmWrap
from proto.keys import KeyRecord
from proto.subjects import backup_event_subject, receipt_subject

log = logging.getLogger("lantau.backup.ceremony")

# A ceremony's authorizations are used at once; they must not stay good for long.
AUTHORIZATION_MS = 120_000
RECEIPTS_PER_MESSAGE = 256

Presented = Sequence[tuple[str, str]]
Status = Literal["held", "copied", "verified", "restored", "not_backed_up", "not_restored"]
Ceremony = Literal["run", "verify", "restore"]


# -- the quorum ----------------------------------------------------------------


def pinned_key(cfg: Config, set_cfg: BackupSetConfig) -> str:
    key = cfg.evidence.backup_set_keys.get(set_cfg.id)
    if not key:
        raise ConfigError(
            f"backup set {set_cfg.id}: pin its key in [evidence] backup_set_keys "
            "(`lantau backup init` printed it)"
        )
    return key.lower()


def open_shares(presented: Presented) -> list[DecryptedShare]:
    """Each custodian's share, opened with their key file; the caller wipes them."""
    shares: list[DecryptedShare] = []
    try:
        for share_file, key_file in presented:
            envelope = read_share(share_file)
            shares.append(open_share(envelope, read_custodian_key(key_file)))
    except BaseException:
        for share in shares:
            share.wipe()
        raise
    return shares


def current_fingerprint(set_cfg: BackupSetConfig) -> str:
    if set_cfg.fingerprint is None:
        raise LantauError(
            ErrorCode.BACKUP_SET_NOT_INITIALISED,
            f"backup set {set_cfg.id} has no fingerprint in the config: run `lantau backup "
            "init` and record what it prints",
        )
    return set_cfg.fingerprint


def open_secrets(cfg: Config, set_cfg: BackupSetConfig, presented: Presented) -> BackupSecrets:
    """The set's credentials from custodians' (share file, key file) pairs; the opened
    shares are wiped whatever happens. Refusals: QUORUM_NOT_MET, BAD_SHARE,
    WRONG_BACKUP_SET, WRONG_CUSTODIAN_KEY, DUPLICATE_SHARE, file errors."""
    fingerprint = current_fingerprint(set_cfg)
    shares = open_shares(presented)
    try:
        secrets = combine(shares, set_cfg.id, current_fingerprint=fingerprint)
    finally:
        for share in shares:
            share.wipe()
    if secrets.signing_public_key != pinned_key(cfg, set_cfg):
        secrets.wipe()
        raise LantauError(
            ErrorCode.WRONG_BACKUP_SET,
            f"the shares rebuild a key other than the one pinned for backup set {set_cfg.id}",
        )
    return secrets


# -- the backup token ------------------------------------------------------------


def bind(set_cfg: BackupSetConfig) -> None:
    """Point SoftHSM at the set's configuration: before the module is first loaded."""
    if set_cfg.softhsm_conf:
        os.environ["SOFTHSM2_CONF"] = set_cfg.softhsm_conf


class Vault:
    """A backup set's token, opened with the quorum's PIN, behind its own guard; the
    set's key signs what moves in or out."""

    def __init__(
        self,
        cfg: Config,
        set_cfg: BackupSetConfig,
        secrets: BackupSecrets,
        pins: Pins,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.cfg = cfg
        self.set = set_cfg
        self.secrets = secrets
        self.receipts: list[HsmReceipt] = []
        self._key = secrets.signing_key()
        self.public_hex = self._key.verify_key.encode().hex()
        self.token = Pkcs11Token(
            set_cfg.module, set_cfg.token_label, secrets.pin, executor=executor
        )
        self.guard = Guard(
            self.token,
            node_id=set_cfg.id,
            pins=lambda: pins,
            replays=ReplayLog(None),
            on_receipt=self.receipts.append,
        )

    @classmethod
    async def open(
        cls,
        cfg: Config,
        set_cfg: BackupSetConfig,
        secrets: BackupSecrets,
        pins: Pins,
        executor: ThreadPoolExecutor | None = None,
    ) -> Vault:
        """``executor``: the one worker thread shared with another token of the same
        module (SoftHSM, initialised without locking, must never see two threads)."""
        bind(set_cfg)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            executor, lambda: cls(cfg, set_cfg, secrets, pins, executor)
        )

    def authorize(
        self, key_id: str, curve: Curve, public_key: bytes, source: str, target: str
    ) -> CloneAuthorization:
        now = now_ms()
        unsigned = CloneAuthorization(
            key_id=key_id,
            curve=curve,
            public_key=public_key,
            source=source,
            target=target,
            issued_at_ms=now,
            not_after_ms=now + AUTHORIZATION_MS,
            signed_by=self.public_hex,
        )
        signature = self._key.sign(signing_bytes(unsigned)).signature
        return msgspec.structs.replace(unsigned, signature=signature)

    async def held(self) -> dict[str, HsmKey]:
        """Every key the set holds, with its public key as the token has it."""
        return {k: await self.guard.public_key(k) for k in await self.token.key_ids()}

    async def wrap_for(self, record: KeyRecord, target: str) -> tuple[bytes, CloneAuthorization]:
        clone = self.authorize(record.key_id, record.curve, record.public_key, self.set.id, target)
        command = HsmWrap(
            key_id=record.key_id,
            kek_label=self.cfg.backup.kek_label,
            clone=clone,
            created=record.authorization,
        )
        return await self.guard.wrap(command), clone

    async def close(self) -> None:
        await self.token.close()


async def checked_clone(backend: Guard | RemoteHsm, name: str, record: KeyRecord) -> None:
    """The copy on ``backend`` signs the clone-check statement under the original public
    key, verified here in software; raises BACKUP_VERIFY_FAILED otherwise."""
    raw = await backend.clone_check(HsmCloneCheck(key_id=record.key_id, curve=record.curve))
    data = clone_check_bytes(record.curve, record.key_id, name)
    try:
        curves.finalize(record.curve, record.public_key, data, raw)
    except LantauError:
        raise LantauError(
            ErrorCode.BACKUP_VERIFY_FAILED,
            f"the copy of key {record.key_id} on {name} does not sign under its public key",
        ) from None


def _unwrap(cfg: Config, record: KeyRecord, wrapped: bytes, clone: CloneAuthorization) -> HsmUnwrap:
    return HsmUnwrap(
        key_id=record.key_id,
        curve=record.curve,
        kek_label=cfg.backup.kek_label,
        wrapped=wrapped,
        public_key=record.public_key,
        clone=clone,
        created=record.authorization,
    )


def _entry(
    record: KeyRecord | None,
    key: HsmKey | None,
    status: Status,
    *,
    reason: str = "",
    nodes: Sequence[str] = (),
) -> BackupManifestEntry:
    """A manifest line from the directory's record, else from what the token holds."""
    if record is not None:
        key_id, curve, public_key, region = (
            record.key_id,
            record.curve,
            record.public_key,
            record.region,
        )
    elif key is not None:
        key_id, curve, public_key, region = key.key_id, key.curve, key.public_key, None
    else:
        raise LantauError(ErrorCode.INTERNAL, "a manifest entry needs a record or a key")
    return BackupManifestEntry(
        key_id=key_id,
        curve=curve,
        public_key=public_key,
        region=region,
        status=status,
        nodes=list(nodes),
        reason=reason,
    )


async def _publish_evidence(nc: Client, vault: Vault, manifest: BackupManifest) -> BackupManifest:
    """The backup token's receipts, then the signed manifest, durably on the bus."""
    js = nc.jetstream()
    receipts = vault.receipts
    for i in range(0, len(receipts), RECEIPTS_PER_MESSAGE):
        batch = HsmReceipts(node=vault.set.id, receipts=receipts[i : i + RECEIPTS_PER_MESSAGE])
        await publish(js, receipt_subject(vault.set.id), batch)
    receipts.clear()
    signed = sign_manifest(manifest, vault.secrets.signing_key())
    await publish(js, backup_event_subject(vault.set.id), signed)
    return signed


def _manifest(
    vault: Vault, ceremony: Ceremony, actor: str, entries: list[BackupManifestEntry]
) -> BackupManifest:
    return BackupManifest(
        backup_set=vault.set.id,
        region=vault.set.region,
        set_fingerprint=vault.secrets.set_fingerprint,
        ceremony=ceremony,
        actor=actor,
        entries=sorted(entries, key=lambda e: e.key_id),
        at_ms=now_ms(),
        signed_by=vault.public_hex,
    )


async def _records(nc: Client) -> dict[str, KeyRecord]:
    directory = await KeyDirectory.open(nc.jetstream())
    return {r.key_id: r for r in await directory.all()}


async def _wrappable(cfg: Config, nc: Client) -> dict[str, frozenset[str] | None]:
    """What each online node that answers can wrap (absent: it did not answer)."""
    timeout = cfg.hsm.clone_timeout_ms / 1000
    out: dict[str, frozenset[str] | None] = {}
    for node in cfg.hsm_nodes:
        try:
            caps = await RemoteHsm(nc, node.id, timeout_s=timeout).capabilities()
        except (LantauError, TransientError):
            continue
        out[node.id] = frozenset(caps.wrappable)
    return out


# -- lantau backup run ---------------------------------------------------------------


async def run(
    cfg: Config,
    set_cfg: BackupSetConfig,
    secrets: BackupSecrets,
    nc: Client,
    *,
    actor: str,
    keys: Sequence[str] | None = None,
) -> BackupManifest:
    """Copy every key the set may hold and does not: wrapped on an online node that
    holds it, unwrapped in the backup token, checked, then recorded in the directory."""
    records = await _records(nc)
    pins = pins_from(cfg, None)
    vault = await Vault.open(cfg, set_cfg, secrets, pins)
    try:
        held = await vault.held()
        plan = copy_plan(records, set_cfg, held, await _wrappable(cfg, nc), keys=keys)
        directory = await KeyDirectory.open(nc.jetstream())
        timeout = cfg.hsm.clone_timeout_ms / 1000
        entries: list[BackupManifestEntry] = []
        for record, sources in plan.copy:
            outcome = await _copy_in(cfg, vault, nc, record, sources, timeout)
            if outcome is None:
                await directory.add_backup_set(record.key_id, set_cfg.id)
                entries.append(_entry(record, None, "copied"))
                log.info("key %s copied into backup set %s and verified", record.key_id, set_cfg.id)
            else:
                entries.append(_entry(record, None, "not_backed_up", reason=outcome))
        for record in plan.held:
            if held[record.key_id].public_key != record.public_key:
                raise LantauError(
                    ErrorCode.BACKUP_VERIFY_FAILED,
                    f"backup set {set_cfg.id} holds a different key {record.key_id}",
                )
            # A copy made before the record could be updated (a crash): record it now.
            if set_cfg.id not in record.backup_sets:
                await directory.add_backup_set(record.key_id, set_cfg.id)
            entries.append(_entry(record, None, "held"))
        for record, reason in plan.skipped:
            entries.append(_entry(record, None, "not_backed_up", reason=reason))
        listed = {e.key_id for e in entries}
        entries += [
            _entry(records.get(k), key, "held") for k, key in held.items() if k not in listed
        ]
        return await _publish_evidence(nc, vault, _manifest(vault, "run", actor, entries))
    finally:
        await vault.close()


async def _copy_in(
    cfg: Config, vault: Vault, nc: Client, record: KeyRecord, sources: list[str], timeout: float
) -> str | None:
    """One key into the set; None when copied and checked, else the reason it was not."""
    reason = ErrorCode.HSM_UNAVAILABLE.value
    for source in sources:
        clone = vault.authorize(
            record.key_id, record.curve, record.public_key, source, vault.set.id
        )
        command = HsmWrap(
            key_id=record.key_id,
            kek_label=cfg.backup.kek_label,
            clone=clone,
            created=record.authorization,
        )
        try:
            wrapped = await RemoteHsm(nc, source, timeout_s=timeout).wrap(command)
        except TransientError as e:
            reason = e.code.value
            continue
        except LantauError as e:
            if e.code != ErrorCode.KEY_NOT_WRAPPABLE:
                raise
            reason = e.code.value
            continue
        made = await vault.guard.unwrap(_unwrap(cfg, record, wrapped, clone))
        if made.public_key != record.public_key:
            raise LantauError(
                ErrorCode.BACKUP_VERIFY_FAILED,
                f"backup set {vault.set.id} holds a different key {record.key_id}",
            )
        await checked_clone(vault.guard, vault.set.id, record)
        return None
    return reason


# -- lantau backup restore -------------------------------------------------------------


async def restore(
    cfg: Config,
    set_cfg: BackupSetConfig,
    secrets: BackupSecrets,
    nc: Client,
    *,
    actor: str,
    targets: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
) -> BackupManifest:
    """Give each key of the set back to online nodes (admitted to the domain, serving):
    wrapped in the backup token, unwrapped by each node's guard, checked there."""
    records = await _records(nc)
    pins = pins_from(cfg, None)
    vault = await Vault.open(cfg, set_cfg, secrets, pins)
    try:
        held = await vault.held()
        plan = restore_plan(records, set_cfg, held, cfg.hsm_nodes, targets=targets, keys=keys)
        directory = await KeyDirectory.open(nc.jetstream())
        timeout = cfg.hsm.clone_timeout_ms / 1000
        entries = [
            _entry(records.get(k), held.get(k), "not_restored", reason=why)
            for k, why in plan.missing
        ]
        for record, nodes in plan.restore:
            if held[record.key_id].public_key != record.public_key:
                raise LantauError(
                    ErrorCode.BACKUP_VERIFY_FAILED,
                    f"backup set {set_cfg.id} holds a different key {record.key_id}",
                )
            done: list[str] = []
            wrapped: bytes | None = None
            for node in nodes:
                remote = RemoteHsm(nc, node, timeout_s=timeout)
                if not await _holds(remote, record):
                    if wrapped is None:
                        wrapped, _ = await vault.wrap_for(record, node)
                    clone = vault.authorize(
                        record.key_id, record.curve, record.public_key, set_cfg.id, node
                    )
                    await remote.unwrap(_unwrap(cfg, record, wrapped, clone))
                await checked_clone(remote, node, record)
                if node not in record.nodes:
                    await directory.add_node(record.key_id, node)
                done.append(node)
            entries.append(_entry(record, None, "restored", nodes=done))
            log.info("key %s restored from %s to %s", record.key_id, set_cfg.id, ", ".join(done))
        return await _publish_evidence(nc, vault, _manifest(vault, "restore", actor, entries))
    finally:
        await vault.close()


async def _holds(remote: RemoteHsm, record: KeyRecord) -> bool:
    try:
        found = await remote.public_key(record.key_id)
    except LantauError as e:
        if e.code == ErrorCode.UNKNOWN_KEY:
            return False
        raise
    if found.public_key != record.public_key:
        raise LantauError(
            ErrorCode.KEY_EXISTS,
            f"node {remote.name} holds a different key {record.key_id}: not restored over it",
        )
    return True


# -- lantau backup verify ----------------------------------------------------------


def scratch_id(set_cfg: BackupSetConfig) -> str:
    # "/" is in no node or set id: the scratch token can never be taken for one.
    return f"{set_cfg.id}/scratch"


def _read_secret(path: str | None, what: str) -> str:
    if not path:
        raise ConfigError(what)
    try:
        value = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    if not value:
        raise ConfigError(f"{path} is empty")
    return value


def _scratch_pins(cfg: Config, set_cfg: BackupSetConfig) -> Pins:
    pins = pins_from(cfg, None)
    return dataclasses.replace(pins, regions={**pins.regions, scratch_id(set_cfg): set_cfg.region})


def admit_scratch(cfg: Config, set_cfg: BackupSetConfig, secrets: BackupSecrets) -> tuple[str, str]:
    """Empty the scratch token and give it the domain key from the backup token (both SO
    ceremonies, in this process); returns its (user PIN, SO PIN)."""
    label = set_cfg.scratch_token_label
    if not label:
        raise ConfigError(f"backup set {set_cfg.id}: set scratch_token_label to verify it")
    pin = _read_secret(set_cfg.scratch_pin_file, f"backup set {set_cfg.id}: set scratch_pin_file")
    so_pin = _read_secret(
        set_cfg.scratch_so_pin_file, f"backup set {set_cfg.id}: set scratch_so_pin_file"
    )
    bind(set_cfg)
    module, kek = set_cfg.module, cfg.backup.kek_label
    so_ceremony.empty_token(module, label, pin, so_pin)
    transport = so_ceremony.make_transport_key(module, label, so_pin)
    wrapped = so_ceremony.export_domain_key(
        module, set_cfg.token_label, secrets.so_pin, kek, transport
    )
    so_ceremony.import_domain_key(module, label, so_pin, kek, wrapped)
    return pin, so_pin


async def verify(
    cfg: Config,
    set_cfg: BackupSetConfig,
    secrets: BackupSecrets,
    nc: Client,
    *,
    actor: str,
) -> BackupManifest:
    """Restore every key of the set into the scratch token, sign with each there and
    compare with the directory; the online pool is not touched. The scratch token is
    emptied again whatever happens. Raises BACKUP_VERIFY_FAILED after publishing the
    manifest when any key fails."""
    records = await _records(nc)
    # The backup token, the scratch token and their SO steps: one module, one thread.
    p11 = ThreadPoolExecutor(max_workers=1, thread_name_prefix="p11-ceremony")
    loop = asyncio.get_running_loop()
    pin, so_pin = await loop.run_in_executor(p11, admit_scratch, cfg, set_cfg, secrets)
    pins = _scratch_pins(cfg, set_cfg)
    scratch_name = scratch_id(set_cfg)
    label = str(set_cfg.scratch_token_label)
    vault: Vault | None = None
    scratch: Pkcs11Token | None = None
    try:
        vault = await Vault.open(cfg, set_cfg, secrets, pins, executor=p11)
        scratch = await loop.run_in_executor(
            p11, lambda: Pkcs11Token(set_cfg.module, label, pin, executor=p11)
        )
        guard = Guard(
            scratch,
            node_id=scratch_name,
            pins=lambda: pins,
            replays=ReplayLog(None),
            on_receipt=vault.receipts.append,
        )
        held = await vault.held()
        entries: list[BackupManifestEntry] = []
        failed: list[str] = []
        expected = {k for k, r in records.items() if set_cfg.id in r.backup_sets}
        for key_id in sorted(held.keys() | expected):
            record = records.get(key_id)
            problem = await _verify_one(cfg, vault, guard, scratch_name, record, held.get(key_id))
            if problem is None:
                entries.append(_entry(record, None, "verified"))
            else:
                failed.append(f"{key_id} ({problem})")
                entries.append(_entry(record, held.get(key_id), "not_restored", reason=problem))
        manifest = await _publish_evidence(nc, vault, _manifest(vault, "verify", actor, entries))
    finally:
        if scratch is not None:
            await scratch.close()
        if vault is not None:
            await vault.close()
        await loop.run_in_executor(p11, so_ceremony.empty_token, set_cfg.module, label, pin, so_pin)
        p11.shutdown(wait=True)
    if failed:
        raise LantauError(
            ErrorCode.BACKUP_VERIFY_FAILED,
            f"backup set {set_cfg.id}: {len(failed)} key(s) did not verify: {', '.join(failed)}",
        )
    return manifest


async def _verify_one(
    cfg: Config,
    vault: Vault,
    scratch: Guard,
    scratch_name: str,
    record: KeyRecord | None,
    held: HsmKey | None,
) -> str | None:
    """None when the key restores into the scratch token and signs as the original."""
    if held is None:
        return "NOT_IN_BACKUP_SET"
    if record is None:
        return "UNKNOWN_KEY: not in the key directory"
    if held.public_key != record.public_key:
        return "the backup set holds a different public key"
    try:
        wrapped, clone = await vault.wrap_for(record, scratch_name)
        made = await scratch.unwrap(_unwrap(cfg, record, wrapped, clone))
        if made.public_key != record.public_key:
            return "the restored copy has another public key"
        await checked_clone(scratch, scratch_name, record)
    except (LantauError, TransientError) as e:
        return f"{e.code}: {e.message}"
    return None
