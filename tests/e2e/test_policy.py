"""Rules and M-of-N approvals through the real bus, the real policy service and the CLI."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from devkit import demo_policy
from libs.client import CustodyClient
from proto.requests import Transfer
from tests.e2e.helpers import lantau, verify_independently

KEY = "desk-a-policy"


def vote(
    platform,
    verb: str,
    request_id: str,
    approver: str,
    key_of: str | None = None,
    *extra: str,
    seed: str | None = None,
):
    """``lantau approve|reject`` as ``approver`` (its bus identity: the seed the dev stack
    keeps beside the config, unless ``seed``), signing with ``key_of``'s vote key."""
    key_file = platform.run_dir / "approvers" / f"{key_of or approver}.key"
    identity = ["--seed-file", seed] if seed else []
    return lantau(
        verb,
        request_id,
        "--approver",
        approver,
        "--key-file",
        str(key_file),
        *identity,
        "--config",
        str(platform.config_path),
        *extra,
    )


@pytest.fixture(scope="module")
async def key(client: CustodyClient) -> str:
    created = await client.create_key(KEY, "secp256k1")
    assert created.status == "created", created.error
    return KEY


async def held_request(client: CustodyClient, amount: int = demo_policy.LARGE + 1, tag: str = ""):
    payload = hashlib.sha256(f"large {amount} {tag}".encode()).digest()
    request = client.sign_request(
        KEY, payload, transfer=Transfer(asset="ETH", amount=amount, destination="0xfeed")
    )
    await client.submit(request)
    return request, payload


async def wait_result(client: CustodyClient, request_id: str, timeout_s: float = 30.0):
    for _ in range(int(timeout_s / 0.2)):
        result = await client.get_result(request_id)
        if result is not None:
            return result
        await asyncio.sleep(0.2)
    return None


async def wait_held(platform, request_id: str) -> str:
    for _ in range(50):
        listing = lantau("approvals", "list", "--config", str(platform.config_path))
        if request_id in listing.stdout:
            return listing.stdout
        await asyncio.sleep(0.2)
    raise AssertionError(f"{request_id} was never held for approval")


async def test_a_rule_rejects_a_sanctioned_destination(client, key):
    result = await client.sign(
        key,
        hashlib.sha256(b"to the sanctioned").digest(),
        transfer=Transfer(asset="ETH", amount=5, destination=demo_policy.SANCTIONED),
    )
    assert result.status == "rejected" and result.signature is None
    assert result.error.code == "POLICY_DENIED"
    assert "no-sanctioned-destinations" in result.error.message
    assert "sanctions list" in result.error.message


async def test_small_transfers_are_signed_without_approval(client, key):
    payload = hashlib.sha256(b"small").digest()
    result = await client.sign(
        key, payload, transfer=Transfer(asset="ETH", amount=10, destination="0xfeed")
    )
    assert result.status == "signed", result.error
    verify_independently(result, payload)


async def test_two_of_three_approvals_release_a_held_request(platform, client, key):
    request, payload = await held_request(client, tag="quorum")
    listing = await wait_held(platform, request.request_id)
    assert "large-transfers" in listing and "needs 2 of group 'treasury'" in listing
    assert hashlib.sha256(payload).hexdigest() in listing
    await asyncio.sleep(1)
    assert await client.get_result(request.request_id) is None, "signed before any approval"

    first = vote(platform, "approve", request.request_id, "alice")
    assert first.returncode == 0, first.stderr
    assert "1 of 2" in first.stdout
    again = vote(platform, "approve", request.request_id, "alice")
    assert again.returncode == 1 and "DUPLICATE_APPROVAL" in again.stderr
    assert await client.get_result(request.request_id) is None, "signed on one approval"

    second = vote(platform, "approve", request.request_id, "bob")
    assert second.returncode == 0, second.stderr
    assert "quorum met" in second.stdout
    result = await wait_result(client, request.request_id)
    assert result is not None and result.status == "signed", result
    verify_independently(result, payload)

    late = vote(platform, "approve", request.request_id, "carol")
    assert late.returncode == 1 and "NOT_PENDING" in late.stderr

    # A replay of the very same signed request is the same request: same signature.
    replay = await client.send(request)
    assert replay.signature == result.signature


async def test_one_rejection_rejects(platform, client, key):
    request, _ = await held_request(client, tag="reject")
    await wait_held(platform, request.request_id)
    assert vote(platform, "approve", request.request_id, "alice").returncode == 0
    no = vote(platform, "reject", request.request_id, "carol")
    assert no.returncode == 0, no.stderr
    result = await wait_result(client, request.request_id)
    assert result is not None and result.status == "rejected"
    assert result.error.code == "APPROVAL_REJECTED" and "carol" in result.error.message


async def test_forged_votes_are_refused(platform, client, key):
    request, _ = await held_request(client, tag="forged")
    await wait_held(platform, request.request_id)
    forged = vote(platform, "approve", request.request_id, "alice", key_of="bob")
    assert forged.returncode == 1 and "BAD_SIGNATURE" in forged.stderr, forged.stderr
    # Someone who is no approver, even holding bob's bus identity: bob's identity is bob's,
    # it does not speak for anyone else.
    bob_seed = str(platform.seed_file("approver-bob"))
    stranger = vote(platform, "approve", request.request_id, "mallory", key_of="bob", seed=bob_seed)
    assert stranger.returncode == 2 and "PERMISSION_DENIED" in stranger.stderr, stranger.stderr
    # Neither counted: two genuine approvals are still needed.
    assert "approved by nobody" in await wait_held(platform, request.request_id)


async def test_reload_then_self_approval_wrong_group_and_expiry(platform, client, key, trader_key):
    """Reload a policy that adds the requester as an approver, a groupless approver and
    a rule with a short approval window; a broken file is refused and changes nothing."""
    path = platform.run_dir / "policy.toml"
    original = path.read_text()
    try:
        path.write_text(original.replace('version = "dev-1"', 'version = "dev-1"\n[oops'))
        await asyncio.sleep(2.5)
        log = (platform.run_dir / "logs" / "policy.log").read_text()
        assert "policy file" in log and "refused" in log and "line 3" in log

        extra = f"""
[approvers.desk-a]
public_key = "{trader_key.verify_key.encode().hex()}"

[approvers.dave]
public_key = "{trader_key.verify_key.encode().hex()}"

[groups.quick]
approvers = ["alice", "desk-a"]
approves_for = ["desk-a"]
"""
        quick_rule = """
[[rules]]
name = "quick-window"
amount_above = 5000000000
action = "approve"
group = "quick"
quorum = 2
approval_window_s = 5
"""
        text = original.replace("[groups.treasury]", extra + "\n[groups.treasury]")
        text = text.replace('version = "dev-1"', 'version = "dev-2"')
        text = text.replace("[[rules]]", quick_rule + "\n[[rules]]", 1)
        path.write_text(text)
        # New approvers need bus identities; their readable requesters follow the groups.
        await asyncio.to_thread(platform.add_approver, "desk-a")
        await asyncio.to_thread(platform.add_approver, "dave")
        await asyncio.sleep(2.5)

        request, _ = await held_request(client, amount=5_000_000_001, tag="quick")
        listing = await wait_held(platform, request.request_id)
        assert "quick-window" in listing and "dev-2#" in listing
        # The trading system's own key, presented as an approver, cannot approve its request.
        (platform.run_dir / "approvers" / "desk-a.key").write_text(trader_key.encode().hex() + "\n")
        own = vote(platform, "approve", request.request_id, "desk-a")
        assert own.returncode == 1 and "SELF_APPROVAL" in own.stderr, own.stderr
        (platform.run_dir / "approvers" / "dave.key").write_text(trader_key.encode().hex() + "\n")
        # An approver of no group that approves for desk-a cannot even see the request.
        outsider = vote(platform, "approve", request.request_id, "dave")
        assert outsider.returncode == 1 and "no request" in outsider.stderr, outsider.stderr

        result = await wait_result(client, request.request_id, timeout_s=15)
        assert result is not None and result.status == "expired"
        assert result.error.code == "APPROVAL_EXPIRED"
        late = vote(platform, "approve", request.request_id, "alice")
        assert late.returncode == 1 and "NOT_PENDING" in late.stderr
    finally:
        path.write_text(original)
        for name in ("desk-a", "dave"):
            await asyncio.to_thread(platform.remove_approver, name)


async def test_a_huge_held_request_never_blocks_the_requesters_small_transfers(
    platform, client, key
):
    """Only what is signed counts in a velocity window: a request held for approvers (here
    just under the hourly limit) used to stay charged and hold every later transfer."""
    huge, _ = await held_request(client, amount=49_999_999, tag="huge")
    await wait_held(platform, huge.request_id)
    payload = hashlib.sha256(b"small after huge").digest()
    small = await client.sign(
        key, payload, transfer=Transfer(asset="ETH", amount=10, destination="0xfeed"), timeout=15
    )
    assert small.status == "signed", small.error


@pytest.mark.parametrize(
    ("asset", "amount", "code"),
    [("BTC", 21_000_000 * 10**8 + 1, "AMOUNT_OUT_OF_RANGE"), ("DOGE", 1, "UNKNOWN_ASSET")],
)
async def test_a_transfer_beyond_what_an_asset_can_hold_is_refused(
    client, key, asset, amount, code
):
    payload = hashlib.sha256(f"{asset} {amount}".encode()).digest()
    result = await client.sign(
        key, payload, transfer=Transfer(asset=asset, amount=amount, destination="0xfeed")
    )
    assert result.status == "rejected" and result.error.code == code, result.error
    assert result.error.message
