"""Offline backups under a custodian quorum, from a fresh stack: keys backed up into
backup sets of their region by M of N custodians, every refusal tried, every token read
with pkcs11-tool, then the drill: every online token destroyed, the key domain and the
keys rebuilt from the backup sets, every backed-up key signing again with its original
public key, each step on the audit chain and nothing else changed.

The tests of this module run in order on one platform (the drill comes last).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import subprocess
import time
import urllib.request

import msgspec
import nats.js.errors
import pytest

from devkit.backup import BackupSetSpec, DevBackupSet
from devkit.drill import lantau, records, restore_drill
from devkit.softhsm import find_module
from libs import config as config_mod
from libs.audit import logread
from libs.backup.ceremony import open_secrets
from libs.backup.manifest import manifest_verifies
from libs.bus.permissions import backup_set_identity
from libs.hsm.remote import RemoteHsm
from proto import codec
from proto.audit import AuditRecord
from proto.authorization import CloneAuthorization, signing_bytes
from proto.errors import ErrorCode, LantauError
from proto.events import AdminAction, BackupManifest
from proto.hsm import HsmWrap
from proto.subjects import AUDIT_CHECKPOINT_KEY, EVENTS, RECEIPTS, receipt_subject
from tests.backup.p11inspect import PROVENANCE_ACCESS, comparable, dump_token, pkcs11_tool_objects
from tests.conftest import fast_redelivery
from tests.e2e.helpers import lantau as bare_lantau
from tests.e2e.helpers import verify_independently

# Keys of each kind the drill restores (hk-tagged and untagged secp256k1); CI keeps it small.
KEYS_PER_KIND = int(os.environ.get("LANTAU_DRILL_KEYS", "4"))
HK_KEYS = [f"desk-a-hk-{i}" for i in range(KEYS_PER_KIND)]
FREE_KEYS = [f"desk-a-free-{i}" for i in range(KEYS_PER_KIND)]
SG_KEY, ED_KEY = "desk-a-sg", "desk-a-ed"


def regions(cfg):
    """hsm-1 and hsm-2 in Hong Kong, hsm-3 in Singapore; a key may wait 1 s for its
    offline copy before it counts in lantau_keys_without_offline_copy."""
    nodes = list(cfg.hsm_nodes)
    nodes[2] = msgspec.structs.replace(nodes[2], region="sg")
    backup = msgspec.structs.replace(cfg.backup, offline_copy_within_s=1)
    return fast_redelivery(msgspec.structs.replace(cfg, hsm_nodes=nodes, backup=backup))


async def without_offline_copy(platform, want: dict[str, int], timeout_s: float = 20) -> None:
    """The backup service's gauge, by reason, as Prometheus scrapes it."""
    pattern = re.compile(r'^lantau_keys_without_offline_copy\{reason="(\w+)"\} (\S+)$', re.M)
    deadline = time.monotonic() + timeout_s
    while True:
        text = await asyncio.to_thread(_get, platform.url("backup"))
        found = {reason: int(float(n)) for reason, n in pattern.findall(text)}
        if found == want:
            return
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.5)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def platform_options() -> dict[str, object]:
    return {
        "nodes": 3,
        "tweak": regions,
        "backup_sets": [BackupSetSpec("hk-vault", "hk"), BackupSetSpec("sg-vault", "sg")],
    }


@pytest.fixture(scope="module")
def hk(platform) -> DevBackupSet:
    return platform.backup_sets["hk-vault"]


@pytest.fixture(scope="module")
def sg(platform) -> DevBackupSet:
    return platform.backup_sets["sg-vault"]


def cli(platform, *args: str) -> subprocess.CompletedProcess[str]:
    return lantau(platform, *args, check=False)


async def stream_messages(js, stream: str, subject: str) -> list[tuple[int, bytes]]:
    """(stream sequence, raw message) of every message of ``stream`` on ``subject`` (a
    trailing ``>`` allowed), read by sequence with direct gets, as the operator may."""
    info = await js.stream_info(stream)
    prefix = subject[:-1] if subject.endswith(">") else None
    out: list[tuple[int, bytes]] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq, direct=True)
        except nats.js.errors.NotFoundError:
            continue
        if msg.subject == subject or (prefix is not None and msg.subject.startswith(prefix)):
            out.append((seq, msg.data or b""))
    return out


async def bus_events(js, subject: str) -> list[tuple[int, bytes]]:
    return await stream_messages(js, EVENTS.name, subject)


async def admin_actions(js, command: str, node: str) -> list[tuple[int, bytes, AdminAction]]:
    found = []
    for seq, data in await bus_events(js, "lantau.event.admin"):
        action = codec.EVENT.decode(data)
        assert isinstance(action, AdminAction)
        if action.command == command and action.node == node:
            found.append((seq, data, action))
    return found


async def manifests(js, set_id: str) -> list[tuple[int, bytes, BackupManifest]]:
    out = []
    for seq, data in await bus_events(js, f"lantau.event.backup.{set_id}"):
        manifest = codec.EVENT.decode(data)
        assert isinstance(manifest, BackupManifest)
        out.append((seq, data, manifest))
    return out


async def on_the_chain(js, facts: list[tuple[int, bytes]], timeout_s: float = 20) -> None:
    """Each event is in the audit log: a signed record lists it (stream, sequence, hash)."""
    want = {seq: hashlib.sha256(data).hexdigest() for seq, data in facts}
    deadline = time.monotonic() + timeout_s
    while True:
        chained = {
            f.seq: f.sha256
            for item in await logread.read_all(js)
            if isinstance(item.entry, AuditRecord)
            for f in item.entry.facts
            if f.stream == EVENTS.name
        }
        missing = {s for s, h in want.items() if chained.get(s) != h}
        if not missing:
            return
        assert time.monotonic() < deadline, f"not in the audit log: events {sorted(missing)}"
        await asyncio.sleep(0.5)


def refused(proc: subprocess.CompletedProcess[str], code: ErrorCode) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("lantau: ")][-1]
    assert line.startswith(f"lantau: {code}: "), proc.stderr
    return line


def secrets_of(platform, dev_set: DevBackupSet):
    """The set's credentials, as the custodians' ceremony rebuilds them (M shares)."""
    cfg = config_mod.load(platform.config_path)
    pairs = [(str(c.share_file), str(c.key_file)) for c in dev_set.custodians[: dev_set.threshold]]
    return open_secrets(cfg, cfg.backup_set(dev_set.id), pairs)


def listed(conf, label: str, pin: str):
    return pkcs11_tool_objects(find_module(), conf, label, pin)


def objects_of(token) -> list[tuple[str, str]]:
    found = listed(token.conf_path, token.label, token.pin_file.read_text().strip())
    return sorted((o.object_class, o.label) for o in found)


REFUSALS: list[str] = []  # what each refusal printed, for the closing report


# -- the ceremony that made the sets ------------------------------------------------------


async def test_init_recorded_the_sets_and_left_their_pins_only_in_the_shares(platform, nc, hk, sg):
    cfg = platform.config
    js = nc.jetstream()
    for dev_set in (hk, sg):
        entry = cfg.backup_set(dev_set.id)
        assert entry.fingerprint and dev_set.id in cfg.evidence.backup_set_keys
        # No PIN file of the backup token survives init: only M shares open it.
        assert not dev_set.token.pin_file.exists() and not dev_set.token.so_pin_file.exists()
        assert all(c.share_file.stat().st_mode & 0o777 == 0o600 for c in dev_set.custodians)
        phases = [a.phase for _, _, a in await admin_actions(js, "backup init", dev_set.id)]
        assert phases == ["started", "completed"]
        with secrets_of(platform, dev_set) as secrets:
            assert secrets.signing_public_key == cfg.evidence.backup_set_keys[dev_set.id]
            objects = listed(dev_set.token.conf_path, dev_set.token.label, secrets.pin)
        # Admitted to the key domain, holding nothing else yet.
        assert [(o.object_class, o.label) for o in objects] == [
            ("Secret Key Object", cfg.backup.kek_label)
        ]


# -- keys, and where their copies are before any backup -----------------------------------


async def test_keys_in_every_region_sign_and_are_listed_as_not_backed_up(platform, client, nc):
    wanted = [(k, "secp256k1", "hk") for k in HK_KEYS] + [(k, "secp256k1", None) for k in FREE_KEYS]
    wanted += [(SG_KEY, "secp256k1", "sg"), (ED_KEY, "ed25519", None)]
    for key_id, curve, region in wanted:
        created = await client.create_key(key_id, curve, region=region)
        assert created.status == "created", created.error
        payload = hashlib.sha256(key_id.encode()).digest()
        kind = "digest" if curve == "secp256k1" else "message"
        result = await client.sign(key_id, payload, payload_kind=kind)
        assert result.status == "signed", result.error
        verify_independently(result, payload)
    # The audit's checkpoint key is a key like any other: it must exist to be backed up.
    deadline = time.monotonic() + 30
    while AUDIT_CHECKPOINT_KEY not in await records(platform):
        assert time.monotonic() < deadline, "the audit service made no checkpoint key"
        await asyncio.sleep(0.5)
    # Wait for the online clones (untagged keys on every node, hk keys on hsm-1 and 2).
    deadline = time.monotonic() + 60
    while True:
        rs = await records(platform)
        if all(set(rs[k].nodes) == {"hsm-1", "hsm-2", "hsm-3"} for k in FREE_KEYS) and all(
            set(rs[k].nodes) == {"hsm-1", "hsm-2"} for k in HK_KEYS
        ):
            break
        assert time.monotonic() < deadline, {k: r.nodes for k, r in rs.items()}
        await asyncio.sleep(0.5)
    out = cli(platform, "keys", "list")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert _offline_line(text, ED_KEY) == "offline: not backed up: KEY_NOT_WRAPPABLE"
    assert _offline_line(text, HK_KEYS[0]) == "offline: not backed up: AWAITING_BACKUP_RUN"
    assert f"{len(wanted) + 1} key(s); {len(wanted) + 1} without an offline copy" in text
    # The metric behind LantauKeysWithoutOfflineCopy says the same, by reason.
    awaiting = len(wanted)  # every secp256k1 key, the audit key, less the Ed25519 key
    await without_offline_copy(
        platform, {"awaiting_backup_run": awaiting, "key_not_wrappable": 1, "no_backup_set": 0}
    )


def _offline_line(text: str, key_id: str) -> str:
    lines = text.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith(f"{key_id} "))
    return lines[at + 1].strip()


# -- refusals: nothing changes, each is on the record -------------------------------------


async def test_refusals_are_typed_recorded_and_change_nothing(platform, nc, hk, sg):
    js = nc.jetstream()
    before_records = await records(platform)
    before_manifests = len(await manifests(js, hk.id))
    failed_before = len(
        [a for _, _, a in await admin_actions(js, "backup run", hk.id) if a.phase == "failed"]
    )
    run = ("backup", "run", "--set", hk.id)

    # M-1 shares.
    REFUSALS.append(refused(cli(platform, *run, *hk.share_args(1)), ErrorCode.QUORUM_NOT_MET))
    # A wrong share: one custodian's share file altered on their media...
    altered = hk.custodians[1].share_file.with_suffix(".altered")
    data = msgspec.json.decode(hk.custodians[1].share_file.read_bytes())
    sealed = bytearray(base64.b64decode(data["ciphertext"]))
    sealed[40] ^= 1
    data["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    altered.write_bytes(msgspec.json.encode(data))
    altered.chmod(0o600)
    args = [*hk.share_args(1), "--share", str(altered), str(hk.custodians[1].key_file)]
    REFUSALS.append(refused(cli(platform, *run, *args), ErrorCode.BAD_SHARE))
    # ... and a share opened with another custodian's key file.
    swapped = ["--share", str(hk.custodians[1].share_file), str(hk.custodians[2].key_file)]
    REFUSALS.append(
        refused(cli(platform, *run, *hk.share_args(1), *swapped), ErrorCode.WRONG_CUSTODIAN_KEY)
    )
    # A share from another backup set.
    mixed = [*hk.share_args(1), *sg.share_args(1, skip=1)]
    REFUSALS.append(refused(cli(platform, *run, *mixed), ErrorCode.WRONG_BACKUP_SET))
    # A key outside the set's region, asked for by name.
    outside = refused(
        cli(platform, *run, *hk.share_args(), "--key", SG_KEY), ErrorCode.RESIDENCY_VIOLATION
    )
    assert SG_KEY in outside
    REFUSALS.append(outside)
    # Nothing changed: the directory, the manifests, the backup token (still only its KEK).
    assert await records(platform) == before_records
    assert len(await manifests(js, hk.id)) == before_manifests
    with secrets_of(platform, hk) as secrets:
        objects = listed(hk.token.conf_path, hk.token.label, secrets.pin)
    assert [o.object_class for o in objects] == ["Secret Key Object"]
    # Each refusal is on the record: started, then failed with its code; on the chain.
    runs = [(s, d, a) for s, d, a in await admin_actions(js, "backup run", hk.id)]
    failed = [a for _, _, a in runs if a.phase == "failed"]
    assert [a.detail.split(":")[0] for a in failed[failed_before:]] == [
        "QUORUM_NOT_MET",
        "BAD_SHARE",
        "WRONG_CUSTODIAN_KEY",
        "WRONG_BACKUP_SET",
        "RESIDENCY_VIOLATION",
    ]
    await on_the_chain(js, [(s, d) for s, d, _ in runs])


async def test_the_online_nodes_guard_refuses_a_copy_out_of_its_region(platform, nc, hk):
    """Even with the set's own key (a quorum's), the node holding a Singapore key will not
    wrap it for the Hong Kong set; the refusal is a receipt on the record."""
    record = (await records(platform))[SG_KEY]
    with secrets_of(platform, hk) as secrets:
        key = secrets.signing_key()
    now = int(time.time() * 1000)
    unsigned = CloneAuthorization(
        key_id=SG_KEY,
        curve="secp256k1",
        public_key=record.public_key,
        source="hsm-3",
        target=hk.id,
        issued_at_ms=now,
        not_after_ms=now + 60_000,
        signed_by=key.verify_key.encode().hex(),
    )
    clone = msgspec.structs.replace(unsigned, signature=key.sign(signing_bytes(unsigned)).signature)
    command = HsmWrap(
        key_id=SG_KEY, kek_label="lantau-domain-kek", clone=clone, created=record.authorization
    )
    # Asked as the set's own ceremony identity, the one allowed to ask for such copies.
    ceremony = await platform.connect_as(backup_set_identity(hk.id))
    try:
        with pytest.raises(LantauError) as e:
            await RemoteHsm(ceremony, "hsm-3", timeout_s=5).wrap(command)
    finally:
        await ceremony.close()
    assert e.value.code == ErrorCode.RESIDENCY_VIOLATION, e.value
    REFUSALS.append(f"hsm-3 guard: {e.value.code}: {e.value.message}")
    js = nc.jetstream()
    deadline = time.monotonic() + 10
    while True:
        found = [
            r
            for _, data in await stream_messages(js, RECEIPTS.name, receipt_subject("hsm-3"))
            for r in codec.HSM_RECEIPTS.decode(data).receipts
        ]
        hits = [r for r in found if (r.op, r.key_id, r.outcome) == ("wrap", SG_KEY, "refused")]
        if hits:
            assert hits[-1].code == "RESIDENCY_VIOLATION"
            return
        assert time.monotonic() < deadline, "no refused receipt from hsm-3"
        await asyncio.sleep(0.5)


# -- backup run, verify ------------------------------------------------------------------


async def test_backup_run_copies_every_eligible_key_with_any_two_of_three(platform, nc, hk, sg):
    js = nc.jetstream()
    out = cli(platform, "backup", "run", "--set", hk.id, *hk.share_args(skip=1))  # bob, carol
    assert out.returncode == 0, out.stderr
    lines = {
        ln.split()[0]: ln for ln in out.stdout.splitlines() if ln.startswith(("desk", "lantau"))
    }
    for key_id in [*HK_KEYS, *FREE_KEYS, AUDIT_CHECKPOINT_KEY]:
        assert lines[key_id].endswith(" copied"), lines[key_id]
    assert lines[ED_KEY].endswith("not backed up: KEY_NOT_WRAPPABLE")
    assert SG_KEY not in lines  # not this set's region: not even considered
    # The sg set takes the Singapore key and the untagged ones.
    out = cli(platform, "backup", "run", "--set", sg.id, *sg.share_args())
    assert out.returncode == 0, out.stderr
    assert f"{SG_KEY} " in out.stdout and all(f"{k} " in out.stdout for k in FREE_KEYS)
    assert not any(f"{k} " in out.stdout for k in HK_KEYS)

    rs = await records(platform)
    for key_id in HK_KEYS:
        assert rs[key_id].backup_sets == [hk.id]
    for key_id in FREE_KEYS:
        assert rs[key_id].backup_sets == [hk.id, sg.id]
    assert rs[SG_KEY].backup_sets == [sg.id] and rs[ED_KEY].backup_sets == []

    # Each run's manifest is signed by the set's pinned key and on the audit chain.
    pinned = platform.config.evidence.backup_set_keys[hk.id]
    ((seq, data, manifest),) = await manifests(js, hk.id)
    assert manifest_verifies(manifest, pinned) and manifest.ceremony == "run"
    entries = {e.key_id: e for e in manifest.entries}
    assert entries[HK_KEYS[0]].public_key == rs[HK_KEYS[0]].public_key
    assert entries[HK_KEYS[0]].region == "hk" and entries[ED_KEY].reason == "KEY_NOT_WRAPPABLE"
    runs = [(s, d) for s, d, _ in await admin_actions(js, "backup run", hk.id)]
    await on_the_chain(js, [(seq, data), *runs[-2:]])

    # Again: nothing new to copy, every key already held.
    again = cli(platform, "backup", "run", "--set", hk.id, *hk.share_args())
    assert again.returncode == 0 and " copied" not in again.stdout, again.stdout
    listing = cli(platform, "keys", "list").stdout
    assert _offline_line(listing, FREE_KEYS[0]) == f"offline: {hk.id}, {sg.id}"
    assert _offline_line(listing, ED_KEY) == "offline: not backed up: KEY_NOT_WRAPPABLE"
    # Only the key that cannot be exported is left for the alert.
    await without_offline_copy(
        platform, {"awaiting_backup_run": 0, "key_not_wrappable": 1, "no_backup_set": 0}
    )


async def test_restoring_a_sets_keys_outside_their_region_is_refused(platform, nc, hk):
    js = nc.jetstream()
    before, before_manifests = await records(platform), len(await manifests(js, hk.id))
    restore = ("backup", "restore", "--set", hk.id, "--node", "hsm-3")
    onto_sg = refused(cli(platform, *restore, *hk.share_args()), ErrorCode.RESIDENCY_VIOLATION)
    assert HK_KEYS[0] in onto_sg and "node hsm-3" in onto_sg
    REFUSALS.append(onto_sg)
    assert await records(platform) == before
    assert len(await manifests(js, hk.id)) == before_manifests
    restores = await admin_actions(js, "backup restore", hk.id)
    assert [a.phase for _, _, a in restores] == ["started", "failed"]
    assert restores[-1][2].detail.startswith("RESIDENCY_VIOLATION: ")
    await on_the_chain(js, [(s, d) for s, d, _ in restores])


async def test_verify_restores_into_the_scratch_token_only(platform, nc, hk):
    before = await records(platform)
    node_objects = {
        t.label: sorted(
            (o.object_class, o.label)
            for o in listed(t.conf_path, t.label, t.pin_file.read_text().strip())
        )
        for t in platform.tokens
    }
    out = cli(platform, "backup", "verify", "--set", hk.id, *hk.share_args())
    assert out.returncode == 0, out.stderr
    verified = [ln.split()[0] for ln in out.stdout.splitlines() if ln.endswith(" verified")]
    assert sorted(verified) == sorted([*HK_KEYS, *FREE_KEYS, AUDIT_CHECKPOINT_KEY])
    # The pool untouched, the scratch token emptied again.
    assert await records(platform) == before
    for t in platform.tokens:
        now = sorted(
            (o.object_class, o.label)
            for o in listed(t.conf_path, t.label, t.pin_file.read_text().strip())
        )
        assert now == node_objects[t.label]
    scratch = hk.scratch
    assert listed(scratch.conf_path, scratch.label, scratch.pin_file.read_text().strip()) == []
    (_, _, manifest) = (await manifests(nc.jetstream(), hk.id))[-1]
    assert manifest.ceremony == "verify" and {e.status for e in manifest.entries} == {"verified"}


# -- every object of every token, read with pkcs11-tool -----------------------------------


def all_tokens(platform) -> list[tuple[str, object, str, str, object]]:
    """(name, conf, label, pin, token dir) of every online and backup token."""
    out = [
        (n.id, t.conf_path, t.label, t.pin_file.read_text().strip(), t.token_dir)
        for n, t in zip(platform.config.hsm_nodes, platform.tokens, strict=True)
    ]
    for dev_set in platform.backup_sets.values():
        with secrets_of(platform, dev_set) as secrets:
            pin = secrets.pin
        t = dev_set.token
        out.append((dev_set.id, t.conf_path, t.label, pin, t.token_dir))
    return out


def rights(platform) -> dict[str, dict[str, tuple[frozenset[str], frozenset[str]]]]:
    """Per token, per private key: (usage, access) as pkcs11-tool prints them; checks the
    store's attributes of every private key with softhsm2-dump-file on the way."""
    seen: dict[str, dict[str, tuple[frozenset[str], frozenset[str]]]] = {}
    ec_attributes: set[str] = set()
    for name, conf, label, pin, token_dir in all_tokens(platform):
        objects = listed(conf, label, pin)
        keys = {o.label: o for o in objects if o.object_class == "Private Key Object"}
        for key_label, o in keys.items():
            assert o.usage == {"sign"}, (name, key_label, o.usage)
            assert {"sensitive", "extractable"} <= o.access, (name, key_label, o.access)
        for o in objects:
            if o.object_class == "Public Key Object":
                assert o.usage == {"verify"}, (name, o.label, o.usage)
        seen[name] = {k: (o.usage, o.access - PROVENANCE_ACCESS) for k, o in keys.items()}
        for attrs in dump_token(token_dir, label):
            if attrs.get("CKA_CLASS") == "CKO_PRIVATE_KEY":
                assert attrs["CKA_WRAP_WITH_TRUSTED"] == attrs["CKA_SENSITIVE"] == "TRUE", name
                assert attrs["CKA_DERIVE"] == attrs["CKA_DECRYPT"] == attrs["CKA_UNWRAP"] == "FALSE"
                assert attrs["CKA_MODIFIABLE"] == attrs["CKA_COPYABLE"] == "FALSE", name
                if attrs["CKA_KEY_TYPE"] == "CKK_EC":
                    ec_attributes.add(repr(sorted(comparable(attrs).items())))
    # Originals, online clones and backup copies: one set of attributes for all of them.
    assert len(ec_attributes) == 1, ec_attributes
    return seen


async def test_every_copy_has_the_originals_rights_and_no_more(platform, hk, sg):
    seen = rights(platform)
    rs = await records(platform)
    for key_id, record in rs.items():
        holders = [*record.nodes, *record.backup_sets]
        found = {seen[h][key_id] for h in holders}
        assert len(found) == 1, (key_id, found)  # every copy equal to the original
    # What each backup token holds is exactly what the directory says it holds.
    for dev_set in (hk, sg):
        assert set(seen[dev_set.id]) == {k for k, r in rs.items() if dev_set.id in r.backup_sets}
    RIGHTS.update(seen)


RIGHTS: dict[str, dict[str, tuple[frozenset[str], frozenset[str]]]] = {}


# -- the drill ---------------------------------------------------------------------------


async def test_the_drill_destroys_every_online_token_and_restores_every_backed_up_key(
    platform, client, nc, hk, sg
):
    js = nc.jetstream()
    before = await records(platform)
    log_before = len(await logread.read_all(js))
    report = await restore_drill(platform, [hk, sg], client)
    print("\n" + "\n".join(report.lines()))

    backed_up = {k for k, r in before.items() if r.backup_sets}
    assert set(report.backed_up) == backed_up
    assert set(report.restored) == backed_up
    # Every backed-up key signs again through the platform with its original public key;
    # the Ed25519 key (not wrappable on SoftHSM) is lost with the tokens, as reported.
    assert set(report.signing_again) == backed_up - {AUDIT_CHECKPOINT_KEY}
    assert report.lost == [ED_KEY] and report.not_backed_up[ED_KEY] == "KEY_NOT_WRAPPABLE"
    for key_id in sorted(backed_up - {AUDIT_CHECKPOINT_KEY}):
        payload = hashlib.sha256(b"after the drill " + key_id.encode()).digest()
        result = await client.sign(key_id, payload)
        assert result.status == "signed" and result.public_key == before[key_id].public_key
        verify_independently(result, payload)

    # Nothing else changed: the key directory is as it was.
    assert await records(platform) == before
    # The restored copies have the originals' rights, key by key (pkcs11-tool).
    after = rights(platform)
    for node in ("hsm-1", "hsm-2", "hsm-3"):
        for key_id, found in after[node].items():
            assert found == RIGHTS[node][key_id], (node, key_id)
        assert set(after[node]) == set(RIGHTS[node]) - {ED_KEY}

    # Each step is on the audit chain, and the chain verifies.
    steps = []
    for node in ("hsm-1", "hsm-2", "hsm-3"):
        admitted = await admin_actions(js, f"backup admit --set {hk.id}", node)
        assert [a.phase for _, _, a in admitted] == ["started", "completed"]
        steps += [(s, d) for s, d, _ in admitted]
    for dev_set in (hk, sg):
        restores = await admin_actions(js, "backup restore", dev_set.id)
        assert restores[-1][2].phase == "completed"
        steps += [(s, d) for s, d, _ in restores[-2:]]
        seq, data, manifest = (await manifests(js, dev_set.id))[-1]
        assert manifest.ceremony == "restore"
        assert manifest_verifies(manifest, platform.config.evidence.backup_set_keys[dev_set.id])
        steps.append((seq, data))
    await on_the_chain(js, steps)
    assert report.audit.startswith("OK"), report.audit
    assert len(await logread.read_all(js)) > log_before


# -- a custodian leaves ------------------------------------------------------------------


async def test_a_custodian_leaves_the_set_is_reshared_and_old_shares_stop_counting(
    platform, nc, hk, tmp_path
):
    """carol leaves, dave joins: alice and bob reshare; the token and its keys stay as they
    are, the new shares open the set and the old ones are refused even together."""
    js = nc.jetstream()
    dave_key = tmp_path / "dave.key"
    made = bare_lantau("backup", "custodian-keygen", "--out", str(dave_key))  # no config
    assert made.returncode == 0 and dave_key.stat().st_mode & 0o777 == 0o600, made.stderr
    cfg = config_mod.load(platform.config_path)
    entry = cfg.backup_set(hk.id)
    custodians = [c for c in entry.custodians if c.name != "carol"]
    custodians.append(config_mod.CustodianConfig(name="dave", public_key=made.stdout.strip()))
    renewed = msgspec.structs.replace(entry, custodians=custodians)
    cfg = msgspec.structs.replace(
        cfg, backup_sets=[renewed if b.id == hk.id else b for b in cfg.backup_sets]
    )
    platform.config_path.write_text(config_mod.dump(cfg))

    out_dir = tmp_path / "new-shares"
    done = cli(
        platform, "backup", "reshare", "--set", hk.id, "--out-dir", str(out_dir), *hk.share_args()
    )
    assert done.returncode == 0, done.stderr
    fingerprint = re.search(r"^fingerprint ([0-9a-f]{32})$", done.stdout, re.M).group(1)
    assert fingerprint != entry.fingerprint
    cfg = msgspec.structs.replace(
        cfg,
        backup_sets=[
            msgspec.structs.replace(b, fingerprint=fingerprint) if b.id == hk.id else b
            for b in cfg.backup_sets
        ],
    )
    platform.config_path.write_text(config_mod.dump(cfg))
    phases = [a.phase for _, _, a in await admin_actions(js, "backup reshare", hk.id)]
    assert phases == ["started", "completed"]

    # The old shares, even two of them, no longer open the set ...
    verify = ("backup", "verify", "--set", hk.id)
    old = refused(cli(platform, *verify, *hk.share_args()), ErrorCode.WRONG_BACKUP_SET)
    REFUSALS.append(old)
    print("\nrefusals tried:\n  " + "\n  ".join(REFUSALS))
    # ... the new ones do (bob and dave), with the same keys inside.
    bob = hk.custodians[1]
    new = [
        "--share", str(out_dir / f"{hk.id}.bob.share"), str(bob.key_file),
        "--share", str(out_dir / f"{hk.id}.dave.share"), str(dave_key),
    ]  # fmt: skip
    verified = cli(platform, *verify, *new)
    assert verified.returncode == 0, verified.stderr
    assert " verified" in verified.stdout and "not restored" not in verified.stdout
