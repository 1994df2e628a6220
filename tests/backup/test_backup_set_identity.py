"""A backup set's ceremonies have a NATS identity of their own: the hsm-node calls a copy
needs, the key directory, its own receipts and manifests; nothing else. Pure: the grants
as data (the same lists a real server enforces in the drill)."""

from __future__ import annotations

from libs.bus import permissions as P
from libs.bus.identity import new_seed, public_key
from libs.config import BackupSetConfig, Config, HsmNodeConfig, NatsConfig, ServiceNkeys
from proto.subjects import inbox_prefix


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def allows(patterns: tuple[str, ...], subject: str) -> bool:
    return any(matches(p, subject) for p in patterns)


def nkey() -> str:
    return public_key(new_seed())


CONFIG = Config(
    nats=NatsConfig(nkeys=ServiceNkeys(backup=nkey(), operator=nkey(), signer=nkey())),
    hsm_nodes=[HsmNodeConfig(id="hsm-1", token_label="t1", nkey=nkey())],
    backup_sets=[
        BackupSetConfig(id="hk-vault", region="hk", token_label="v1", nkey=nkey()),
        BackupSetConfig(id="sg-vault", region="sg", token_label="v2", nkey=nkey()),
        BackupSetConfig(id="no-nkey", token_label="v3"),
    ],
)
FOUND = {i.name: i for i in P.identities(CONFIG, {})}
VAULT = FOUND["backup-set-hk-vault"].permissions


def test_each_set_with_an_nkey_is_a_user():
    assert {n for n, i in FOUND.items() if i.kind == "backup-set"} == {
        "backup-set-hk-vault",
        "backup-set-sg-vault",
    }


def test_a_set_makes_copies_and_records_them_and_nothing_more():
    for op in P.BACKUP_SET_CALLS:
        assert allows(VAULT.publish, f"lantau.hsm.rpc.hsm-1.{op}")
    for op in ("sign", "generate", "sign_checkpoint"):
        assert not allows(VAULT.publish, f"lantau.hsm.rpc.hsm-1.{op}"), op
    assert allows(VAULT.publish, "$KV.lantau_keys.desk-a-1")
    assert allows(VAULT.publish, "lantau.receipt.hk-vault")
    assert allows(VAULT.publish, "lantau.event.backup.hk-vault")
    # Not another set's (or a node's) receipts or manifests, not a key's creation.
    for subject in (
        "lantau.receipt.sg-vault",
        "lantau.receipt.hsm-1",
        "lantau.event.backup.sg-vault",
        "lantau.event.key.created",
        "lantau.event.admin",
        "lantau.result.desk-a.r1",
        "$JS.API.STREAM.DELETE.LANTAU_EVENTS",
    ):
        assert not allows(VAULT.publish, subject), subject
    assert set(VAULT.subscribe) == {f"{inbox_prefix('backup-set-hk-vault')}.>"}


def test_nodes_answer_the_sets_ceremonies_and_the_operator_may_ask_capabilities():
    node = FOUND["node-hsm-1"].permissions.publish
    assert allows(node, f"{inbox_prefix('backup-set-hk-vault')}.x")
    assert allows(node, f"{inbox_prefix('backup-set-sg-vault')}.x")
    operator = FOUND["operator"].permissions.publish
    assert allows(operator, "lantau.hsm.rpc.hsm-1.capabilities")
    for op in ("wrap", "unwrap", "sign", "clone_check"):
        assert not allows(operator, f"lantau.hsm.rpc.hsm-1.{op}"), op
