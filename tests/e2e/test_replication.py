"""Key cloning across the key domain: wrapped only, residency kept, down nodes catch up."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client

from devkit.chaos import wait_replicated
from libs.bus.permissions import BACKUP
from libs.config import Config
from libs.hsm.remote import RemoteHsm
from libs.keys.directory import KeyDirectory
from proto.errors import ErrorCode, LantauError


def regions_and_backup(cfg: Config) -> Config:
    """hsm-1, hsm-2: pool in hk; hsm-3: an offline backup HSM in hk; hsm-4: pool in sg."""
    from tests.conftest import fast_redelivery

    nodes = list(cfg.hsm_nodes)
    nodes[2] = msgspec.structs.replace(nodes[2], role="backup")
    nodes[3] = msgspec.structs.replace(nodes[3], region="sg")
    return fast_redelivery(msgspec.structs.replace(cfg, hsm_nodes=nodes))


@pytest.fixture(scope="module")
def platform_options() -> dict[str, object]:
    return {"nodes": 4, "tweak": regions_and_backup}


@pytest.fixture(scope="module")
async def hsm_nc(platform) -> AsyncIterator[Client]:
    """Asking hsm-nodes for public keys and clone checks is the backup service's right:
    the test looks as the backup service."""
    conn = await platform.connect_as(BACKUP)
    yield conn
    await conn.close()


async def holds(nc, node: str, key_id: str) -> bool:
    try:
        await RemoteHsm(nc, node, timeout_s=5).public_key(key_id)
    except LantauError as e:
        assert e.code == ErrorCode.UNKNOWN_KEY
        return False
    return True


async def test_untagged_key_is_cloned_to_every_node_and_each_clone_signs(platform, client, hsm_nc):
    created = await client.create_key("desk-a-everywhere", "secp256k1")
    assert created.status == "created"
    await wait_replicated(client, platform, "desk-a-everywhere")
    from libs.curves import finalize
    from libs.hsm.guard import clone_check_bytes
    from proto.hsm import HsmCloneCheck

    check = HsmCloneCheck(key_id="desk-a-everywhere", curve="secp256k1")
    for node in ("hsm-1", "hsm-2", "hsm-3", "hsm-4"):
        key = await RemoteHsm(hsm_nc, node, timeout_s=5).public_key("desk-a-everywhere")
        assert key.public_key == created.public_key
        raw = await RemoteHsm(hsm_nc, node, timeout_s=5).clone_check(check)
        data = clone_check_bytes("secp256k1", "desk-a-everywhere", node)
        finalize("secp256k1", created.public_key, data, raw)  # raises if the clone is wrong


async def test_region_tagged_key_never_leaves_its_region(platform, client, nc, hsm_nc):
    created = await client.create_key("desk-a-hk-only", "secp256k1", region="hk")
    assert created.status == "created" and created.node in ("hsm-1", "hsm-2")
    directory = await KeyDirectory.open(nc.jetstream())  # as the operator
    for _ in range(100):
        record, _ = await directory.get("desk-a-hk-only", fresh=True)
        if {"hsm-1", "hsm-2", "hsm-3"} <= set(record.nodes):
            break
        await asyncio.sleep(0.2)
    assert set(record.nodes) == {"hsm-1", "hsm-2", "hsm-3"}
    await asyncio.sleep(2.5)  # more than one replication sweep
    assert not await holds(hsm_nc, "hsm-4", "desk-a-hk-only"), "a hk key reached the sg HSM"


async def test_offline_backup_hsm_holds_clones_but_never_signs(platform, client):
    await client.create_key("desk-a-bk", "secp256k1")
    await wait_replicated(client, platform, "desk-a-bk")
    results = await asyncio.gather(
        *(client.sign("desk-a-bk", hashlib.sha256(bytes([i])).digest()) for i in range(60))
    )
    assert all(r.status == "signed" for r in results)
    assert "hsm-3" not in {r.node for r in results}


async def test_ed25519_cannot_be_cloned_on_softhsm_and_is_reported(platform, client):
    created = await client.create_key("desk-a-ed", "ed25519")
    assert created.status == "created"
    await asyncio.sleep(3)
    out = (
        await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "services.cli.main",
                "keys",
                "list",
                "--config",
                str(platform.config_path),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    ).stdout
    line = next(row for row in out.splitlines() if row.startswith("desk-a-ed "))
    assert " NO " in line, line
    assert "cannot be cloned" in platform.service("backup").log_tail(200)


async def test_a_node_that_was_down_catches_up(fresh_platform, trader_key):
    from tests.conftest import connect_client

    client = await connect_client(fresh_platform, trader_key)
    try:
        fresh_platform.service("hsm-2").kill()
        created = await client.create_key("desk-a-late", "secp256k1")
        assert created.status == "created"
        await fresh_platform.restart("hsm-2")
        await wait_replicated(client, fresh_platform, "desk-a-late", timeout_s=30)
    finally:
        await client.close()


async def test_key_creation_right_after_a_node_dies_reserves_a_live_node(
    fresh_platform, trader_key
):
    """The pool still counts the dead node as up until it misses beats: a key reserved on
    it (nothing was delivered) moves to a live node instead of waiting for the dead one."""
    from services.cli.hsm_admin import pool_status
    from tests.conftest import connect_client

    client = await connect_client(fresh_platform, trader_key)
    try:
        for _ in range(100):  # the signer must see hsm-2 up (probed) before it dies
            views = await pool_status(
                fresh_platform.config, wait_s=0.2, config_path=str(fresh_platform.config_path)
            )
            if views and all(n.state == "up" for n in views[0].nodes):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the pool never saw every node up")
        fresh_platform.service("hsm-2").kill()
        results = await asyncio.gather(
            *(client.create_key(f"desk-a-rush-{i}", "secp256k1") for i in range(8))
        )
        failed = [(r.status, r.error) for r in results if r.status != "created"]
        assert not failed, failed
        assert all(r.node != "hsm-2" for r in results)
    finally:
        await client.close()


def test_private_keys_only_leave_wrapped_under_a_trusted_key(tmp_path):
    """Invariant 4, straight at the token: no plaintext read, no wrap under an untrusted key."""
    script = tmp_path / "probe.py"
    script.write_text(
        """
import sys, pkcs11
from pkcs11 import KeyType, Attribute as A, Mechanism as M, ObjectClass as OC
from libs.hsm.token import Pkcs11Token
from devkit.softhsm import find_module
import asyncio
b = Pkcs11Token(find_module(), sys.argv[1], open(sys.argv[2]).read().strip())
asyncio.run(b.generate("k", "secp256k1"))
s = pkcs11.lib(find_module()).get_token(token_label=sys.argv[1]).open(rw=True)
priv = s.get_key(object_class=OC.PRIVATE_KEY, label="k")
try:
    priv[A.VALUE]; print("READ")
except pkcs11.AttributeSensitive:
    print("sensitive")
rogue = s.generate_key(KeyType.AES, 256, template={A.WRAP: True, A.TOKEN: False})
try:
    rogue.wrap_key(priv, mechanism=M.AES_KEY_WRAP_PAD); print("WRAPPED")
except pkcs11.KeyNotWrappable:
    print("refused")
"""
    )
    from devkit.softhsm import init_token

    token = init_token(tmp_path, "probe")
    out = subprocess.run(
        [sys.executable, str(script), token.label, str(token.pin_file)],
        capture_output=True,
        text=True,
        env={"SOFTHSM2_CONF": str(token.conf_path), "PYTHONPATH": "."},
        check=True,
    ).stdout.split()
    assert out == ["sensitive", "refused"]
