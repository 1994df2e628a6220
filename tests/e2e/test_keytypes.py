"""HD (BIP32, SLIP-10), ML-DSA-65 and HSS keys end to end: client, policy, signer,
hsm-nodes on SoftHSM tokens (sealed under the domain's key), each signature checked by an
implementation the platform does not use; residency, replication, protection and path
rules, and the operator's views."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import coincurve
import eth_keys
import hsslms
import msgspec
import nacl.signing
import pytest
from bip32 import BIP32
from cryptography.hazmat.primitives.asymmetric import ed25519
from dilithium_py.ml_dsa import ML_DSA_65
from eth_account import Account

from devkit.chaos import wait_replicated
from libs.bus.permissions import BACKUP, PROVISIONER
from libs.client import CustodyClient
from libs.config import Config, RequesterConfig
from libs.hsm.remote import RemoteHsm
from libs.hsm.sealed_store import KvIndexLedger
from libs.keys.directory import KeyDirectory
from libs.keytypes import lms
from proto.common import HssShape
from proto.errors import ErrorCode, LantauError
from proto.requests import Transfer
from proto.subjects import HSS_LEDGER_BUCKET
from tests.chains.test_evm import tx1559, unsigned
from tests.conftest import connect_client
from tests.e2e.helpers import lantau, verify_independently

DESK_B = "desk-b"
DESK_B_KEY = nacl.signing.SigningKey.generate()
SMALL = HssShape(levels=2, height=5, winternitz=4)  # 1024 signatures, leases of 32
ACCOUNT = "m/44'/60'/0'"

RULES = """
[[rules]]
name = "wrapped-keys-small-only"
protection = ["hsm-wrapped"]
amount_above = 5000
action = "deny"
reason = "above 5000 minor units only keys the HSM holds natively"

[[rules]]
name = "closed-account"
paths = ["m/44'/60'/9'/*"]
action = "deny"
reason = "account 9 is closed"

"""


def regions_and_rules(cfg: Config) -> Config:
    """hsm-1, hsm-2 in hk; hsm-3 in sg; two rules of this test first in the policy file."""
    from tests.conftest import fast_redelivery

    nodes = list(cfg.hsm_nodes)
    nodes[2] = msgspec.structs.replace(nodes[2], region="sg")
    assert cfg.policy.rules_file is not None
    path = Path(cfg.policy.rules_file)
    text = path.read_text()
    first = text.index("[[rules]]")
    path.write_text(text[:first] + RULES + text[first:])
    return fast_redelivery(msgspec.structs.replace(cfg, hsm_nodes=nodes))


@pytest.fixture(scope="module")
def platform_options() -> dict[str, object]:
    return {"nodes": 3, "tweak": regions_and_rules}


@pytest.fixture(scope="module")
def requesters(trader_key: nacl.signing.SigningKey) -> list[RequesterConfig]:
    return [
        RequesterConfig(
            name="desk-a",
            public_key=trader_key.verify_key.encode().hex(),
            keys=["desk-a-*"],
            may_create_keys=True,
            blind_keys=["desk-a-*"],
        ),
        # Need-to-know below a root: desk-b signs with desk-a's wallet, account 7 only.
        RequesterConfig(
            name=DESK_B,
            public_key=DESK_B_KEY.verify_key.encode().hex(),
            keys=["desk-a-hd"],
            blind_keys=["desk-a-hd"],
            paths=["m/44'/60'/7'/*"],
        ),
    ]


def cli(platform, *args: str) -> str:
    out = lantau(*args, "--config", str(platform.config_path))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
async def hd_key(client: CustodyClient) -> tuple[str, str]:
    created = await client.create_key("desk-a-hd", "bip32-secp256k1", region="hk")
    assert created.status == "created", created.error
    assert created.protection == "hsm-wrapped" and created.xpub is not None
    assert created.node in ("hsm-1", "hsm-2")
    # The root xpub is the record's public key, as an independent decoder reads it.
    assert BIP32.from_xpub(created.xpub).get_pubkey_from_path("m") == created.public_key
    return "desk-a-hd", created.xpub


async def test_bip32_children_sign_under_keys_derived_independently_from_the_xpub(
    platform, client, hd_key
):
    key_id, root_xpub = hd_key
    account_xpub = cli(platform, "keys", "xpub", key_id, "--path", ACCOUNT)
    assert account_xpub.startswith("xpub")
    digest = hashlib.sha256(b"derived").digest()
    # A hardened path below the exported account xpub, and a non-hardened child of the root.
    for path, xpub, rest in (
        (f"{ACCOUNT}/0/5", account_xpub, "m/0/5"),
        ("m/0/7", root_xpub, "m/0/7"),
    ):
        expected = BIP32.from_xpub(xpub).get_pubkey_from_path(rest)
        result = await client.sign(key_id, digest, path=path)
        assert result.status == "signed", result.error
        assert result.path == path and result.public_key == expected
        verify_independently(result, digest)  # OpenSSL, under the child bip32 derived
    # Hardened beyond every export: the node says which child signed, and it verifies;
    # the xpub exported afterwards derives the same key.
    result = await client.sign(key_id, digest, path="m/44'/60'/5'/0/0")
    assert result.status == "signed", result.error
    verify_independently(result, digest)
    later = cli(platform, "keys", "xpub", key_id, "--path", "m/44'/60'/5'")
    assert BIP32.from_xpub(later).get_pubkey_from_path("m/0/0") == result.public_key
    listing = cli(platform, "keys", "list")
    assert account_xpub in listing and later in listing


async def test_an_evm_transaction_under_a_derived_key_recovers_to_the_derived_address(
    platform, client, hd_key
):
    key_id, _ = hd_key
    account_xpub = cli(platform, "keys", "xpub", key_id, "--path", ACCOUNT)
    child = BIP32.from_xpub(account_xpub).get_pubkey_from_path("m/0/5")
    address = eth_keys.keys.PublicKey(
        coincurve.PublicKey(child).format(compressed=False)[1:]
    ).to_checksum_address()
    payload = unsigned(tx1559(value=1000))
    result = await client.sign(key_id, payload, payload_kind="evm_tx", path=f"{ACCOUNT}/0/5")
    assert result.status == "signed", result.error
    assert result.signed_payload is not None
    assert Account.recover_transaction(result.signed_payload) == address


async def test_slip10_children_sign_and_verify_under_the_exported_public_key(platform, client):
    created = await client.create_key("desk-a-sol", "slip10-ed25519", region="hk")
    assert created.status == "created" and created.protection == "hsm-wrapped"
    path = "m/44'/501'/0'/0'"
    exported = msgspec.json.decode(cli(platform, "keys", "xpub", "desk-a-sol", "--path", path))
    message = b"slip-10 child says hello"
    result = await client.sign("desk-a-sol", message, payload_kind="message", path=path)
    assert result.status == "signed", result.error
    assert result.public_key == bytes.fromhex(exported["public_key"])
    ed25519.Ed25519PublicKey.from_public_bytes(result.public_key).verify(result.signature, message)


async def test_ml_dsa_65_signatures_verify_with_a_second_implementation(platform, client):
    created = await client.create_key("desk-a-pq", "ml-dsa-65")
    assert created.status == "created" and created.protection == "hsm-wrapped"
    assert len(created.public_key) == 1952
    message = b"post-quantum transfer instruction"
    result = await client.sign("desk-a-pq", message, payload_kind="message")
    assert result.status == "signed", result.error
    assert result.public_key == created.public_key
    assert ML_DSA_65.verify(created.public_key, message, result.signature)
    assert not ML_DSA_65.verify(created.public_key, message + b".", result.signature)
    # An untagged key goes to every node of the domain, and each copy signs.
    await wait_replicated(client, platform, "desk-a-pq")
    await asyncio.sleep(1.2)  # the signer's directory cache
    results = await asyncio.gather(
        *(client.sign("desk-a-pq", b"m%d" % i, payload_kind="message") for i in range(24))
    )
    assert all(
        ML_DSA_65.verify(created.public_key, b"m%d" % i, r.signature) for i, r in enumerate(results)
    )
    assert len({r.node for r in results}) >= 2


async def test_hss_signatures_verify_elsewhere_use_each_index_once_and_are_counted(
    platform, client, nc
):
    created = await client.create_key("desk-a-hss", "lms-hss", region="hk", hss=SMALL)
    assert created.status == "created" and created.protection == "hsm-wrapped"
    messages = [b"hss message %d" % i for i in range(40)]
    results = await asyncio.gather(
        *(client.sign("desk-a-hss", m, payload_kind="message") for m in messages)
    )
    assert [r.status for r in results] == ["signed"] * len(messages)
    indices = []
    for message, result in zip(messages, results, strict=True):
        hsslms.HSS_Pub(created.public_key).verify(message, result.signature)  # raises if bad
        leaves = lms.signature_leaves(result.signature)
        indices.append((leaves[0] << 5) | leaves[1])
    assert len(set(indices)) == len(indices)
    state, _ = await KvIndexLedger(nc.jetstream()).read("desk-a-hss")  # as the operator
    assert state is not None and max(indices) < state.next_unleased
    listing = cli(platform, "keys", "list")
    assert f"signatures left: {1024 - state.next_unleased} of 1024" in listing
    # The copy on hsm-2 (hk) was taken without a test signature: no index spent for it.
    directory = await KeyDirectory.open(nc.jetstream())
    for _ in range(450):  # up to 90 s on a loaded machine
        record, _ = await directory.get("desk-a-hss", fresh=True)
        if {"hsm-1", "hsm-2"} <= set(record.nodes):
            break
        await asyncio.sleep(0.2)
    assert set(record.nodes) == {"hsm-1", "hsm-2"}
    after, _ = await KvIndexLedger(nc.jetstream()).read("desk-a-hss")
    assert after is not None and after.next_unleased == state.next_unleased


async def test_a_sealed_key_of_one_region_never_opens_in_another(platform, client, nc, hd_key):
    key_id, _ = hd_key
    await asyncio.sleep(2.5)  # more than one replication sweep
    record, _ = await (await KeyDirectory.open(nc.jetstream())).get(key_id)  # as operator
    assert "hsm-3" not in record.nodes
    # Its blob is readable by every node of the domain; the sg node refuses to open it
    # (asked as the backup service, one of the identities that may call the nodes).
    caller = await platform.connect_as(BACKUP)
    try:
        with pytest.raises(LantauError) as e:
            await RemoteHsm(caller, "hsm-3", timeout_s=5).public_key(key_id, "m/0")
    finally:
        await caller.close()
    assert e.value.code == ErrorCode.RESIDENCY_VIOLATION


async def test_policy_rules_on_protection_and_paths(platform, client, hd_key, trader_key):
    await client.create_key("desk-a-native", "secp256k1")
    digest = hashlib.sha256(b"a payment").digest()
    large = Transfer(asset="ETH", amount=6000, destination="0xfeed")
    small = Transfer(asset="ETH", amount=100, destination="0xfeed")
    wrapped = await client.sign("desk-a-pq", b"pay 6000", payload_kind="message", transfer=large)
    assert wrapped.status == "rejected" and wrapped.error.code == ErrorCode.POLICY_DENIED
    assert "wrapped-keys-small-only" in wrapped.error.message
    ok = await client.sign("desk-a-pq", b"pay 100", payload_kind="message", transfer=small)
    assert ok.status == "signed", ok.error
    native = await client.sign("desk-a-native", digest, transfer=large)
    assert native.status == "signed", native.error
    key_id, _ = hd_key
    closed = await client.sign(key_id, digest, path="m/44'/60'/9'/0/1")
    assert closed.status == "rejected" and "closed-account" in closed.error.message
    desk_b = await connect_client(platform, DESK_B_KEY, DESK_B)
    try:
        inside = await desk_b.sign(key_id, digest, path="m/44'/60'/7'/0/3")
        assert inside.status == "signed", inside.error
        verify_independently(inside, digest)
        outside = await desk_b.sign(key_id, digest, path="m/44'/60'/0'/0/3")
        assert outside.status == "rejected" and outside.error.code == ErrorCode.ACCESS_DENIED
    finally:
        await desk_b.close()


async def test_paths_are_for_hd_keys_only_and_required_there(platform, client, hd_key):
    key_id, _ = hd_key
    digest = hashlib.sha256(b"no path").digest()
    missing = await client.sign(key_id, digest)
    assert missing.status == "rejected"
    assert missing.error.code == ErrorCode.INVALID_DERIVATION_PATH
    stray = await client.sign("desk-a-pq", b"x", payload_kind="message", path="m/0")
    assert stray.status == "rejected" and stray.error.code == ErrorCode.INVALID_DERIVATION_PATH
    with pytest.raises(LantauError) as e:  # not canonical: refused before it leaves
        client.sign_request(key_id, digest, path="m/44h/0")
    assert e.value.code == ErrorCode.INVALID_FIELD
    listing = cli(platform, "keys", "list")
    line = next(row for row in listing.splitlines() if row.startswith("desk-a-pq "))
    assert "ml-dsa-65" in line and "hsm-wrapped" in line


async def test_an_hss_key_whose_ledger_is_lost_signs_again_only_once_fenced(platform, client):
    created = await client.create_key("desk-a-hss-lost", "lms-hss", region="hk", hss=SMALL)
    assert created.status == "created"
    # Lose the ledger (as the provisioner, which could delete the whole bucket).
    provisioner = await platform.connect_as(PROVISIONER)
    try:
        bucket = await provisioner.jetstream().key_value(HSS_LEDGER_BUCKET)
        await bucket.delete("desk-a-hss-lost")
    finally:
        await provisioner.close()
    lost = await client.sign("desk-a-hss-lost", b"while lost", payload_kind="message")
    assert lost.status == "failed" and lost.error.code == ErrorCode.INDEX_LEDGER_MISSING
    assert "signatures left: UNKNOWN" in cli(platform, "keys", "list")
    # The audit log's last lease ended at 100 (say): nothing below it is leased again.
    out = cli(platform, "keys", "hss-fence", "desk-a-hss-lost", "--at", "100")
    assert "nothing below 128 will be leased again" in out  # whole subtrees of 32
    message = b"after the fence"
    result = await client.sign("desk-a-hss-lost", message, payload_kind="message")
    assert result.status == "signed", result.error
    hsslms.HSS_Pub(created.public_key).verify(message, result.signature)
    assert (
        lms.signature_index(lms.HssParameters(levels=2, height=5, winternitz=4), result.signature)
        >= 128
    )
