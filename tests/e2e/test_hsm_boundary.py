"""The hsm-node signs only what was authorized: a compromised signer (anything that can
reach the node's RPC) and a compromised policy key try their luck; every attempt is
refused with a typed error and a receipt on the record, and real traffic goes on."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import msgspec
import nacl.signing
import pytest
from nats.aio.client import Client

from devkit import forge
from devkit.chaos import wait_replicated
from libs.bus.permissions import POLICY, PROVISIONER, SIGNER
from libs.config import ApprovalFloor
from libs.hsm.remote import RemoteHsm
from proto import codec
from proto.errors import ErrorCode, LantauError
from proto.hsm import HsmSign
from proto.subjects import RECEIPTS, SIGN_ORDER, sign_order_subject
from tests.conftest import fast_redelivery
from tests.e2e.test_audit import metric
from tests.e2e.test_poison import dead_letter_for

# What an attacker holding policy's key would sign with: pinned by this test's stack
# alongside the real policy key, so its statements are "policy's".
STOLEN_POLICY = nacl.signing.SigningKey.generate()
# What a signer that forges authorizations would sign with: never pinned.
ROGUE = nacl.signing.SigningKey.generate()
KEY = "desk-a-boundary"
FLOORED = "desk-a-vault"


def tweak(cfg):
    cfg = fast_redelivery(cfg)
    evidence = msgspec.structs.replace(
        cfg.evidence,
        policy_keys=[STOLEN_POLICY.verify_key.encode().hex()],
        # The nodes' own floor for one key: two treasury approvals, whatever policy says.
        approval_floors=[ApprovalFloor(keys=[FLOORED], group="treasury", quorum=2)],
    )
    # Short-lived authorizations, so that one can expire within the test.
    policy = msgspec.structs.replace(cfg.policy, order_deadline_ms=3000)
    return msgspec.structs.replace(cfg, evidence=evidence, policy=policy)


@pytest.fixture(scope="module")
def platform_options() -> dict[str, object]:
    return {"nodes": 2, "tweak": tweak}


@pytest.fixture(scope="module")
async def nc(platform) -> AsyncIterator[Client]:
    """The compromised signer: its own credentials, which may call the hsm-nodes."""
    conn = await platform.connect_as(SIGNER)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def admin(platform) -> AsyncIterator[Client]:
    """Streams inspected as the provisioner (the one identity that may open consumers)."""
    conn = await platform.connect_as(PROVISIONER)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def key_public(platform, client) -> bytes:
    created = await client.create_key(KEY, "secp256k1")
    assert created.status == "created", created.error
    # Every node holds it: each refusal below is about the evidence, not a missing key.
    await wait_replicated(client, platform, KEY)
    return created.public_key


async def last_order(js, request_id: str):
    """The real order policy issued for a request (what a compromised signer can read)."""
    sub = await js.subscribe(f"{SIGN_ORDER}.>", ordered_consumer=True)
    found = None
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except TimeoutError:
                return found
            order = codec.ORDER.decode(msg.data)
            if order.request_id == request_id:
                found = order
    finally:
        await sub.unsubscribe()


async def refused(nc, command: HsmSign, code: ErrorCode, node: str = "hsm-1") -> None:
    with pytest.raises(LantauError) as e:
        await RemoteHsm(nc, node, timeout_s=5).sign(command)
    assert e.value.code == code, e.value


async def refused_receipts(js) -> list:
    info = await js.stream_info(RECEIPTS.name)
    sub = await js.subscribe(f"{RECEIPTS.subjects[0]}", ordered_consumer=True)
    out = []
    try:
        for _ in range(info.state.messages):
            batch = codec.HSM_RECEIPTS.decode((await sub.next_msg(timeout=5)).data)
            out += [(batch.node, r) for r in batch.receipts if r.outcome == "refused"]
    finally:
        await sub.unsubscribe()
    return out


def command(request, auth, votes=()) -> HsmSign:
    return HsmSign(
        key_id=request.key_id,
        curve="secp256k1",
        request=codec.encode(request),
        authorization=auth,
        approvals=list(votes),
    )


async def test_a_compromised_signer_gets_nothing_it_was_not_given(
    platform, client, nc, admin, trader_key, key_public
):
    js = admin.jetstream()
    digest = hashlib.sha256(b"legit").digest()
    legit = await client.sign(KEY, digest)
    assert legit.status == "signed"
    order = await last_order(js, legit.request_id)
    assert order is not None
    real_request = codec.REQUEST.decode(order.request)

    # 1. Its own authorization (a key no node pins).
    mine = forge.signed_request(trader_key, "desk-a", KEY, hashlib.sha256(b"mine").digest())
    await refused(
        nc, command(mine, forge.authorization(ROGUE, mine, key_public)), ErrorCode.EVIDENCE_REFUSED
    )
    # 2. The real authorization, paired with other bytes the requester did sign.
    other = forge.signed_request(trader_key, "desk-a", KEY, hashlib.sha256(b"other").digest())
    await refused(nc, command(other, order.authorization), ErrorCode.AUTHORIZATION_MISMATCH)
    # 3. The real evidence replayed: the same node answers with the same signature, the
    # HSM is not asked again.
    raw = await RemoteHsm(nc, legit.node, timeout_s=5).sign(
        command(real_request, order.authorization)
    )
    first = legit.signature
    from libs.curves import finalize

    assert finalize("secp256k1", key_public, digest, raw[0]).signature == first
    # 4. The real evidence after its deadline (policy's authorizations last 3 s here).
    await asyncio.sleep(3.5)
    await refused(nc, command(real_request, order.authorization), ErrorCode.AUTHORIZATION_EXPIRED)
    # 5. A forged order published on the bus: the signer drops it, no result, dead letter.
    # (Only policy's identity may publish orders: the forger holds policy's bus
    # credentials, not its authority key.)
    fake = forge.signed_request(trader_key, "desk-a", KEY, hashlib.sha256(b"fake").digest())
    as_policy = await platform.connect_as(POLICY)
    try:
        ack = await as_policy.jetstream().publish(
            sign_order_subject("desk-a", fake.request_id),
            codec.encode(forge.order(fake, forge.authorization(ROGUE, fake, key_public))),
        )
    finally:
        await as_policy.close()
    record = await dead_letter_for(js, "LANTAU_ORDERS", ack.seq)
    assert record.code == ErrorCode.EVIDENCE_REFUSED
    assert await client.get_result(fake.request_id) is None

    codes = {
        ErrorCode.EVIDENCE_REFUSED,
        ErrorCode.AUTHORIZATION_MISMATCH,
        ErrorCode.AUTHORIZATION_EXPIRED,
    }
    receipts = await _wait_receipts(js, codes)
    assert {r.code for _, r in receipts} >= codes
    after = await client.sign(KEY, hashlib.sha256(b"after").digest())
    assert after.status == "signed"


async def test_a_stolen_policy_key_alone_cannot_sign(
    platform, client, nc, admin, trader_key, key_public
):
    js = admin.jetstream()
    # Without the requester: a request nobody registered signed.
    made_up = forge.signed_request(ROGUE, "desk-a", KEY, hashlib.sha256(b"made up").digest())
    auth = forge.authorization(STOLEN_POLICY, made_up, key_public)
    await refused(nc, command(made_up, auth), ErrorCode.EVIDENCE_REFUSED)
    # With a real request whose rule needs approvals, but no approvers' votes.
    real = forge.signed_request(trader_key, "desk-a", KEY, hashlib.sha256(b"big").digest())
    needs = forge.authorization(STOLEN_POLICY, real, key_public, group="treasury", quorum=2)
    await refused(nc, command(real, needs), ErrorCode.APPROVALS_MISSING)
    # Votes forged by someone who is not a pinned approver do not count either.
    votes = [forge.vote(ROGUE, name, real) for name in ("alice", "bob")]
    forged = forge.authorization(
        STOLEN_POLICY, real, key_public, group="treasury", quorum=2, votes=votes
    )
    await refused(nc, command(real, forged, votes), ErrorCode.APPROVALS_MISSING)
    receipts = await _wait_receipts(js, {ErrorCode.APPROVALS_MISSING})
    assert any(r.code == ErrorCode.APPROVALS_MISSING for _, r in receipts)
    assert (await client.sign(KEY, hashlib.sha256(b"still").digest())).status == "signed"


def unmatched(platform, op: str) -> float:
    return metric(platform, "audit", "lantau_audit_unmatched_receipts_total", op=op) or 0.0


async def test_a_stolen_policy_key_with_a_genuine_request_is_caught_afterwards(
    platform, client, nc, trader_key, key_public
):
    """What the boundary cannot stop: policy's key plus a request the requester really
    signed, under a rule that needs no approvals, is a valid authorization; the node
    signs. The audit matches every receipt against the orders on the bus, finds none
    for this one, and counts it (LantauSignatureWithoutOrder fires on that counter)."""
    before = unmatched(platform, "sign")
    # Genuine traffic is answered for by its order: the counter does not move for it.
    assert (await client.sign(KEY, hashlib.sha256(b"ordered").digest())).status == "signed"
    real = forge.signed_request(trader_key, "desk-a", KEY, hashlib.sha256(b"side door").digest())
    auth = forge.authorization(STOLEN_POLICY, real, key_public)
    raw = await RemoteHsm(nc, "hsm-1", timeout_s=5).sign(command(real, auth))
    assert raw and raw[0]
    for _ in range(100):
        if unmatched(platform, "sign") > before:
            break
        await asyncio.sleep(0.1)
    assert unmatched(platform, "sign") == before + 1


async def test_a_nodes_approval_floor_holds_against_a_stolen_policy_key(
    platform, client, nc, trader_key
):
    """The same side door, shut: for a key the nodes set a floor for, policy's key cannot
    waive the approvals. The platform's own path is unchanged for keys without a floor."""
    created = await client.create_key(FLOORED, "secp256k1")
    assert created.status == "created", created.error
    await wait_replicated(client, platform, FLOORED)
    real = forge.signed_request(trader_key, "desk-a", FLOORED, hashlib.sha256(b"vault").digest())
    auth = forge.authorization(STOLEN_POLICY, real, created.public_key)
    for node in ("hsm-1", "hsm-2"):
        await refused(nc, command(real, auth), ErrorCode.APPROVALS_MISSING, node)


async def test_the_checkpoint_key_signs_checkpoints_only(platform, client, nc, trader_key):
    req = forge.signed_request(trader_key, "desk-a", "lantau-audit-checkpoint", b"\x01" * 32)
    auth = forge.authorization(STOLEN_POLICY, req, b"")
    cmd = HsmSign(
        key_id="lantau-audit-checkpoint",
        curve="secp256k1",
        request=codec.encode(req),
        authorization=auth,
    )
    await refused(nc, cmd, ErrorCode.AUTHORIZATION_MISMATCH)


async def _wait_receipts(js, codes: set[ErrorCode]) -> list:
    """The refused receipts on the record, once every code in ``codes`` is among them."""
    found: list = []
    for _ in range(50):
        found = await refused_receipts(js)
        if codes <= {r.code for _, r in found}:
            break
        await asyncio.sleep(0.1)
    return found


async def test_a_real_order_replayed_on_another_subject_changes_nothing(
    platform, client, admin, key_public
):
    """Someone with policy's bus credentials (not its key) copies a real order to
    another request's subject: the signer dead-letters it and no result moves."""
    js = admin.jetstream()
    done = await client.sign(KEY, hashlib.sha256(b"copied").digest())
    order = await last_order(js, done.request_id)
    assert order is not None
    as_policy = await platform.connect_as(POLICY)
    try:
        ack = await as_policy.jetstream().publish(
            sign_order_subject("desk-a", "somewhere-else"), codec.encode(order)
        )
    finally:
        await as_policy.close()
    record = await dead_letter_for(js, "LANTAU_ORDERS", ack.seq)
    assert record.code == ErrorCode.SUBJECT_MISMATCH
    assert (await client.get_result(done.request_id)).signature == done.signature
    assert await client.get_result("somewhere-else") is None
