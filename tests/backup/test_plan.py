"""The backup ceremonies' pure decisions: what a set takes, where keys go back, why a key
has no offline copy, and the signed manifest."""

from __future__ import annotations

import msgspec
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.backup.manifest import manifest_bytes, manifest_verifies, sign_manifest
from libs.backup.plan import (
    AWAITING_BACKUP_RUN,
    KEY_NOT_WRAPPABLE,
    NO_BACKUP_SET,
    NO_HOLDER_UP,
    NOT_IN_BACKUP_SET,
    copy_plan,
    may_hold,
    offline_status,
    restore_plan,
)
from libs.config import BackupSetConfig, HsmNodeConfig
from proto.errors import ErrorCode, LantauError
from proto.events import BackupManifest, BackupManifestEntry
from proto.keys import KeyRecord

HK_SET = BackupSetConfig(id="hk-vault", region="hk", token_label="v")
PLAIN_SET = BackupSetConfig(id="plain-vault", region=None, token_label="p")
NODES = [
    HsmNodeConfig(id="hk-1", token_label="1", region="hk"),
    HsmNodeConfig(id="hk-2", token_label="2", region="hk"),
    HsmNodeConfig(id="sg-1", token_label="3", region="sg"),
]
ALL_WRAP = {"hk-1": frozenset({"secp256k1"}), "hk-2": frozenset({"secp256k1"})}


def record(key_id: str, region: str | None = None, curve="secp256k1", **kw) -> KeyRecord:
    return KeyRecord(
        key_id=key_id,
        curve=curve,
        public_key=b"\x02" + bytes(32),
        region=region,
        owner="desk",
        nodes=kw.pop("nodes", ["hk-1", "hk-2"]),
        created_at_ms=1,
        created_by_request="r",
        **kw,
    )


def records(*rs: KeyRecord) -> dict[str, KeyRecord]:
    return {r.key_id: r for r in rs}


def refused(code: ErrorCode, fn, *args, **kw) -> str:
    with pytest.raises(LantauError) as e:
        fn(*args, **kw)
    assert e.value.code == code, e.value
    return e.value.message


def test_a_set_takes_its_regions_keys_and_untagged_ones_only():
    rs = records(
        record("hk-key", "hk"),
        record("free-key"),
        record("sg-key", "sg", nodes=["sg-1"]),
        record("held", "hk"),
        record("pending", "hk", status="pending"),
    )
    plan = copy_plan(rs, HK_SET, held=["held"], wrappable=ALL_WRAP)
    assert [(r.key_id, nodes) for r, nodes in plan.copy] == [
        ("free-key", ["hk-1", "hk-2"]),
        ("hk-key", ["hk-1", "hk-2"]),
    ]
    assert [r.key_id for r in plan.held] == ["held"]
    assert plan.skipped == []
    # A set without a region: untagged keys only.
    plain = copy_plan(rs, PLAIN_SET, held=[], wrappable=ALL_WRAP)
    assert [r.key_id for r, _ in plain.copy] == ["free-key"]


def test_asking_for_a_key_of_another_region_refuses_the_whole_ceremony():
    rs = records(record("hk-key", "hk"), record("sg-key", "sg", nodes=["sg-1"]))
    message = refused(
        ErrorCode.RESIDENCY_VIOLATION,
        copy_plan,
        rs,
        HK_SET,
        held=[],
        wrappable=ALL_WRAP,
        keys=["hk-key", "sg-key"],
    )
    assert "sg-key" in message and "hk-vault" in message and "nothing was changed" in message
    refused(ErrorCode.UNKNOWN_KEY, copy_plan, rs, HK_SET, [], ALL_WRAP, keys=["nope"])


def test_keys_no_holder_can_wrap_are_reported_not_pretended():
    rs = records(record("ed", curve="ed25519"), record("k1"), record("away", nodes=["sg-1"]))
    plan = copy_plan(rs, HK_SET, held=[], wrappable=ALL_WRAP)
    assert [r.key_id for r, _ in plan.copy] == ["k1"]
    assert [(r.key_id, why) for r, why in plan.skipped] == [
        ("away", NO_HOLDER_UP),
        ("ed", KEY_NOT_WRAPPABLE),
    ]
    # A node that did not say what it can wrap is asked (the HSM has the last word).
    unknown = copy_plan(rs, HK_SET, held=[], wrappable={"hk-1": None})
    assert [r.key_id for r, _ in unknown.copy] == ["ed", "k1"]


def test_restore_goes_to_every_node_of_the_keys_region_by_default():
    rs = records(
        record("hk-key", "hk", backup_sets=["hk-vault"]),
        record("free-key", backup_sets=["hk-vault"]),
        record("lost", "hk", backup_sets=["hk-vault"]),
    )
    plan = restore_plan(rs, HK_SET, held=["hk-key", "free-key", "stray"], nodes=NODES)
    assert [(r.key_id, t) for r, t in plan.restore] == [
        ("free-key", ["hk-1", "hk-2", "sg-1"]),
        ("hk-key", ["hk-1", "hk-2"]),
    ]
    assert plan.missing == [("lost", NOT_IN_BACKUP_SET), ("stray", "UNKNOWN_KEY")]


def test_restoring_a_key_to_a_node_outside_its_region_is_refused():
    rs = records(record("hk-key", "hk"), record("free-key"))
    message = refused(
        ErrorCode.RESIDENCY_VIOLATION,
        restore_plan,
        rs,
        HK_SET,
        ["hk-key", "free-key"],
        NODES,
        targets=["sg-1"],
    )
    assert "hk-key" in message and "node sg-1" in message
    ok = restore_plan(
        rs, HK_SET, ["hk-key", "free-key"], NODES, targets=["sg-1"], keys=["free-key"]
    )
    assert [(r.key_id, t) for r, t in ok.restore] == [("free-key", ["sg-1"])]
    refused(ErrorCode.INVALID_FIELD, restore_plan, rs, HK_SET, [], NODES, targets=["nowhere"])


def test_why_a_key_has_no_offline_copy():
    sets = [HK_SET]
    wrap = {"hk-1": frozenset({"secp256k1"}), "hk-2": None}
    assert offline_status(record("a", backup_sets=["hk-vault"]), sets, wrap).copies == ["hk-vault"]
    assert offline_status(record("b"), sets, wrap).reason == AWAITING_BACKUP_RUN
    assert offline_status(record("c", curve="ed25519"), sets, wrap).reason == KEY_NOT_WRAPPABLE
    assert offline_status(record("d", "sg", nodes=["sg-1"]), sets, wrap).reason == NO_BACKUP_SET
    assert offline_status(record("e"), [], wrap).reason == NO_BACKUP_SET
    # A set that left the config holds no copy any more.
    gone = record("f", backup_sets=["retired-vault"])
    assert offline_status(gone, sets, wrap).reason == AWAITING_BACKUP_RUN


@settings(max_examples=200, deadline=None)
@given(
    key_region=st.sampled_from([None, "hk", "sg"]),
    set_region=st.sampled_from([None, "hk", "sg"]),
    node_regions=st.lists(st.sampled_from([None, "hk", "sg"]), min_size=1, max_size=4),
)
def test_residency_holds_for_every_plan(key_region, set_region, node_regions):
    """Whatever the regions: nothing is planned into a set or a node the key may not be in."""
    nodes = [
        HsmNodeConfig(id=f"n{i}", token_label=f"t{i}", region=r) for i, r in enumerate(node_regions)
    ]
    vault = BackupSetConfig(id="vault", region=set_region, token_label="v")
    rs = records(record("k", key_region, nodes=[nodes[0].id], backup_sets=["vault"]))
    plan = copy_plan(rs, vault, held=[], wrappable={nodes[0].id: None})
    assert bool(plan.copy) == may_hold(key_region, set_region)
    back = restore_plan(rs, vault, held=["k"], nodes=nodes)
    for r, targets in back.restore:
        assert all(may_hold(r.region, n.region) for n in nodes if n.id in targets)
        assert {n.id for n in nodes if may_hold(r.region, n.region)} == set(targets)


def manifest() -> BackupManifest:
    return BackupManifest(
        backup_set="hk-vault",
        region="hk",
        set_fingerprint="ab" * 16,
        ceremony="run",
        actor="ops",
        entries=[
            BackupManifestEntry(
                key_id="k", curve="secp256k1", public_key=b"\x02" * 33, status="copied"
            )
        ],
        at_ms=1,
        signed_by="",
    )


def test_a_manifest_verifies_only_under_the_sets_key_and_unchanged():
    key, other = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    pinned = key.verify_key.encode().hex()
    signed = sign_manifest(manifest(), key)
    assert signed.signed_by == pinned
    assert manifest_verifies(signed, pinned)
    assert manifest_verifies(signed, pinned.upper())
    assert not manifest_verifies(signed, other.verify_key.encode().hex())
    assert not manifest_verifies(sign_manifest(manifest(), other), pinned)
    edited = msgspec.structs.replace(signed, entries=[])
    assert not manifest_verifies(edited, pinned)
    # The signed statement is domain-separated from every authorization Lantau signs.
    assert manifest_bytes(signed).startswith(b"lantau/backup-manifest/v1\n")
