"""The approvers' console in a real browser (Debian's chromium, headless) against the
real platform: security keys enrolled by a quorum, a held Bitcoin transfer read decoded
and approved with the key until it is signed, and every refusal shown to the person in
words and recorded on the events stream (which the audit trail chains).

Screenshots of each page land under the test's tmp dir and $LANTAU_TEST_ARTIFACTS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from devkit import demo_policy as demo
from devkit import txcheck, txs
from devkit.authenticator import SoftAuthenticator, b64url
from libs.approvals_view import held_requests, review, send_vote
from libs.bus.permissions import OPERATOR, PROVISIONER, approver_identity
from libs.client import CustodyClient
from libs.clock import now_ms
from libs.webauthn_check import assertion_from_json
from proto import codec
from proto.approvals import ApprovalOutcome, vote_challenge
from proto.events import ConsoleEvent
from proto.results import SignResult
from proto.subjects import EVENT_CONSOLE, EVENTS, approval_event_subject
from services.console import views
from tests.console.browser import CHROMIUM, CHROMIUM_ARGS, Person, Screenshots, person
from tests.e2e.helpers import lantau

playwright_api = pytest.importorskip("playwright.async_api")

KEY = "desk-a-btc"
QUICK = 30_000_000  # sat: above this, the test policy's 5-second window applies
DAVE = "dave"


@pytest.fixture(scope="module")
def platform_options() -> dict[str, object]:
    return {"nodes": 2}


@pytest.fixture(scope="module")
async def policy_with_outsider(platform, trader_key) -> None:
    """The dev policy plus dave (in group ops, which approves desk-b only) and a rule
    holding very large BTC transfers for a 5-second window."""
    path = platform.run_dir / "policy.toml"
    text = path.read_text()
    extra = f"""
[approvers.{DAVE}]
public_key = "{trader_key.verify_key.encode().hex()}"

[groups.ops]
approvers = ["{DAVE}"]
approves_for = ["desk-b"]
"""
    quick = f"""
[[rules]]
name = "quick-window"
assets = ["BTC"]
amount_above = {QUICK}
action = "approve"
group = "treasury"
quorum = 2
approval_window_s = 5
"""
    text = text.replace("[groups.treasury]", extra + "\n[groups.treasury]")
    text = text.replace('version = "dev-1"', 'version = "dev-console"')
    text = text.replace("[[rules]]", quick + "\n[[rules]]", 1)
    path.write_text(text)
    await asyncio.sleep(2.5)  # policy, the console and the hsm-nodes reload it


@pytest.fixture(scope="module")
async def btc_key(client: CustodyClient) -> bytes:
    created = await client.create_key(KEY, "secp256k1")
    assert created.status == "created" and created.public_key, created.error
    return created.public_key


@pytest.fixture(scope="module")
async def browser() -> Any:
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Screenshots:
    return Screenshots(tmp_path_factory.mktemp("console"))


async def outcome(page: Any) -> str:
    """The sentence the page shows after a security-key prompt."""
    box = page.locator("#outcome")
    await box.filter(has_not_text="Waiting for your security key").wait_for(timeout=30_000)
    text = await box.text_content()
    return (text or "").strip()


async def enrol(platform, p: Person, shots: Screenshots | None = None) -> str:
    """Register ``p``'s key in the console; two treasury members endorse it (CLI)."""
    await p.page.goto(f"{platform.console_url}/enrol")
    await p.page.fill("#person", p.name)
    await p.page.fill("#label", f"{p.name}'s virtual key")
    await p.page.click("#enrol")
    said = await outcome(p.page)
    found = re.search(r"security key ([0-9a-f]{32}) proposed", said)
    assert found, said
    if shots:
        await shots.take(p.page, "01-enrol-proposed")
    key = found.group(1)
    endorsers = [n for n in ("alice", "bob", "carol") if n != p.name][:2]
    for endorser in endorsers:
        done = lantau(
            "credentials",
            "endorse",
            f"{p.name}/{key}",
            "--approver",
            endorser,
            "--key-file",
            str(platform.run_dir / "approvers" / f"{endorser}.key"),
            "--config",
            str(platform.config_path),
        )
        assert done.returncode == 0, done.stderr
    assert "enrolled: endorsed by" in done.stdout, done.stdout
    return key


async def sign_in(platform, p: Person) -> None:
    await p.page.goto(f"{platform.console_url}/signin")
    await p.page.fill("#person", p.name)
    await p.page.click("#signin")
    await p.page.wait_for_url(f"{platform.console_url}/", timeout=30_000)


async def held(platform, client: CustodyClient, public_key: bytes, amount: int, salt: int):
    spend = txs.btc_spend(public_key, demo.COLD_BTC, amount, fee=2_000, salt=salt)
    request = client.sign_request(
        KEY, spend.payload, payload_kind="btc_psbt", chain=demo.BTC_NETWORK
    )
    await client.submit(request)
    for _ in range(100):
        listing = lantau("approvals", "list", "--config", str(platform.config_path))
        if request.request_id in listing.stdout:
            return request, spend
        await asyncio.sleep(0.2)
    raise AssertionError(f"{request.request_id} was never held")


def swap_credential(stolen: dict[str, Any]) -> Any:
    """A route handler that replaces the assertion a page posts with ``stolen``: what an
    attacker replaying someone's (or another vote's) assertion would send."""

    async def handler(route: Any) -> None:
        body = json.loads(route.request.post_data)
        body["credential"] = stolen
        await route.continue_(post_data=json.dumps(body))

    return handler


def capture_credential(page: Any, into: list[dict[str, Any]]) -> None:
    def on_request(request: Any) -> None:
        if request.url.endswith("/api/vote/finish"):
            into.append(json.loads(request.post_data)["credential"])

    page.on("request", on_request)


async def events_on(platform, subject: str) -> list[Any]:
    """Every event on ``subject`` (as the provisioner: an ephemeral consumer)."""
    nc = await platform.connect_as(PROVISIONER)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(subject, stream=EVENTS.name)
        found = []
        try:
            while True:
                msgs = await sub.fetch(100, timeout=1)
                found += [codec.EVENT.decode(m.data) for m in msgs]
        except TimeoutError:
            pass
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


async def refused_outcomes(platform, request) -> list[ApprovalOutcome]:
    found = await events_on(platform, approval_event_subject(KEY_REQUESTER, request.request_id))
    return [e for e in found if isinstance(e, ApprovalOutcome) and not e.accepted]


KEY_REQUESTER = "desk-a"


@pytest.fixture(scope="module")
async def people(platform, browser, policy_with_outsider, shots) -> dict[str, Person]:
    found = {n: await person(browser, n) for n in ("alice", "bob", "carol", DAVE)}
    found["alice"].key = await enrol(platform, found["alice"], shots)  # type: ignore[attr-defined]
    for name in ("bob", DAVE):
        found[name].key = await enrol(platform, found[name])  # type: ignore[attr-defined]
    return found


async def test_approve_a_held_transfer_with_security_keys_until_it_is_signed(
    platform, client, btc_key, people, shots
):
    alice, bob = people["alice"], people["bob"]
    request, spend = await held(platform, client, btc_key, 5_000_000, salt=11)
    await sign_in(platform, alice)
    page = alice.page
    assert request.request_id in await page.locator("#pending").text_content()
    await shots.take(page, "02-list-waiting")

    await page.click(f"a[href$='{request.request_id}']")
    view = await page.locator("#view").text_content()
    # Decoded by the console from the PSBT itself: the amount and the destination.
    assert demo.COLD_BTC in view and "0.05" in view, view
    why = await page.locator("#why").text_content()
    assert "large-btc" in why and "desk-a" in why and "treasury" in why, why
    assert "left" in await page.locator("#status").text_content()
    await shots.take(page, "03-detail-decoded")

    stolen: list[dict[str, Any]] = []
    capture_credential(page, stolen)
    await page.click("button[data-vote=approve]")
    said = await outcome(page)
    assert "approval recorded: 1 of 2" in said, said
    assert stolen and stolen[0]["id"]
    await shots.take(page, "04-approved-by-alice")

    # Bob's page posts Alice's assertion instead of his own: refused, in words.
    await sign_in(platform, bob)
    await bob.page.goto(f"{platform.console_url}/requests/desk-a/{request.request_id}")
    assert "alice: approve" in await bob.page.locator("#votes").text_content()
    await bob.page.route("**/api/vote/finish", swap_credential(stolen[0]))
    await bob.page.click("button[data-vote=approve]")
    said = await outcome(bob.page)
    assert "refused" in said and "registered to alice, not bob" in said, said
    await shots.take(bob.page, "05-refused-reused-assertion")
    await bob.page.unroute("**/api/vote/finish")

    # With his own key it counts: the quorum is met and the transfer is signed.
    await bob.page.click("button[data-vote=approve]")
    said = await outcome(bob.page)
    assert "quorum met" in said, said
    result = await client.send(request, timeout=30)
    assert isinstance(result, SignResult) and result.status == "signed", result
    assert "every input verified" in txcheck.check_psbt(result.signed_payload or b"", spend.spent)
    await bob.page.reload()
    assert "approved" in await bob.page.locator("#status").text_content()
    await shots.take(bob.page, "06-approved-quorum-signed")

    refusals = await refused_outcomes(platform, request)
    assert [(r.approver, r.code) for r in refusals] == [("bob", "UNKNOWN_CREDENTIAL")]


async def test_an_assertion_made_for_another_request_is_refused(
    platform, client, btc_key, people, shots
):
    alice = people["alice"]
    first, _ = await held(platform, client, btc_key, 4_000_000, salt=12)
    second, _ = await held(platform, client, btc_key, 4_500_000, salt=13)
    page = alice.page
    stolen: list[dict[str, Any]] = []
    capture_credential(page, stolen)
    await page.goto(f"{platform.console_url}/requests/desk-a/{first.request_id}")
    await page.click("button[data-vote=approve]")
    assert "approval recorded" in await outcome(page)

    await page.goto(f"{platform.console_url}/requests/desk-a/{second.request_id}")
    await page.route("**/api/vote/finish", swap_credential(stolen[0]))
    await page.click("button[data-vote=approve]")
    said = await outcome(page)
    assert "refused" in said and "signed something else" in said, said
    await shots.take(page, "07-refused-assertion-for-another-request")
    await page.unroute("**/api/vote/finish")
    refusals = await refused_outcomes(platform, second)
    assert [(r.approver, r.code) for r in refusals] == [("alice", "ASSERTION_INVALID")]


async def test_an_approver_outside_the_group_sees_nothing_and_cannot_vote(
    platform, client, btc_key, people, shots
):
    dave = people[DAVE]
    request, _ = await held(platform, client, btc_key, 3_000_000, salt=14)
    await sign_in(platform, dave)
    assert "Nothing waits for your approval" in await dave.page.locator("main").text_content()
    await dave.page.goto(f"{platform.console_url}/requests/desk-a/{request.request_id}")
    text = await dave.page.locator("#message").text_content()
    assert "you are not an approver" in text and "treasury" in text, text
    await shots.take(dave.page, "08-refused-outside-the-group")
    # Straight at the API, as a script would: refused the same way.
    answer = await dave.page.evaluate(
        """async (id) => (await fetch('/api/vote/begin', {
            method: 'POST', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({requester: 'desk-a', request_id: id, vote: 'approve'}),
        })).json()""",
        request.request_id,
    )
    assert answer["ok"] is False and answer["code"] == "WRONG_GROUP", answer
    recorded = [
        e
        for e in await events_on(platform, EVENT_CONSOLE)
        if isinstance(e, ConsoleEvent) and e.person == DAVE and not e.accepted
    ]
    assert {e.action for e in recorded} == {"view", "vote"}
    assert all(e.request == f"desk-a.{request.request_id}" for e in recorded)


async def test_a_vote_after_the_approval_window_closed_is_refused(
    platform, client, btc_key, people, shots
):
    alice = people["alice"]
    request, _ = await held(platform, client, btc_key, QUICK + 1, salt=15)
    page = alice.page
    await page.goto(f"{platform.console_url}/requests/desk-a/{request.request_id}")
    assert "quick-window" in await page.locator("#why").text_content()
    await asyncio.sleep(6)  # the window is 5 s
    await page.click("button[data-vote=approve]")
    said = await outcome(page)
    assert "refused" in said and ("closed" in said or "expired" in said), said
    await shots.take(page, "09-refused-window-closed")
    refusals = await refused_outcomes(platform, request)
    assert refusals and refusals[0].code in ("APPROVAL_EXPIRED", "NOT_PENDING"), refusals


async def test_a_revoked_key_is_refused_at_once(platform, client, btc_key, people, shots):
    alice = people["alice"]
    request, _ = await held(platform, client, btc_key, 3_500_000, salt=16)
    page = alice.page
    await page.goto(f"{platform.console_url}/requests/desk-a/{request.request_id}")
    revoked = lantau(
        "credentials",
        "revoke",
        f"alice/{alice.key}",  # type: ignore[attr-defined]
        "--approver",
        "carol",
        "--key-file",
        str(platform.run_dir / "approvers" / "carol.key"),
        "--reason",
        "reported lost",
        "--config",
        str(platform.config_path),
    )
    assert revoked.returncode == 0 and "revoked by carol" in revoked.stdout, revoked.stderr
    # Still signed in, alice tries to approve: the console refuses at once, in words.
    await page.click("button[data-vote=approve]")
    said = await outcome(page)
    assert "revoked by carol: reported lost" in said, said
    await shots.take(page, "10-refused-revoked-key")
    recorded = [
        e
        for e in await events_on(platform, EVENT_CONSOLE)
        if isinstance(e, ConsoleEvent) and e.person == "alice" and e.action == "vote"
    ]
    assert [e.code for e in recorded] == ["CREDENTIAL_REVOKED"]
    # A vote signed by the revoked key that skips the console (straight onto the bus as
    # alice) is refused by policy: the key itself, taken out of the virtual authenticator.
    [credential] = await alice.credentials()
    outcome_ = await vote_with_exported_key(platform, request, credential)
    assert outcome_ is not None and not outcome_.accepted
    assert outcome_.code == "CREDENTIAL_REVOKED" and "revoked by carol" in outcome_.message
    # Nor can she sign in with it again.
    await page.goto(f"{platform.console_url}/signin")
    await page.fill("#person", "alice")
    await page.click("#signin")
    said = await outcome(page)
    assert "revoked" in said, said
    await shots.take(page, "11-refused-signin-revoked-key")


async def vote_with_exported_key(platform, request, credential: dict[str, Any]):
    """Alice's vote on ``request``, signed with her virtual key's exported private key,
    sent on the bus as alice (no console): what policy says of it."""
    held_now = await held_requests_as_operator(platform)
    pending = next(p for p in held_now if p.request_id == request.request_id)
    vote = views.unsigned_vote(
        pending,
        "alice",
        "approve",
        review(pending, pending.public_key),
        now_ms(),
        60_000,
    )
    raw_id = base64.b64decode(credential["credentialId"])
    key = serialization.load_der_private_key(base64.b64decode(credential["privateKey"]), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
    soft = SoftAuthenticator(origin=platform.console_url, keys={raw_id: key}, counter=100)
    response = soft.assertion(
        {
            "rpId": credential["rpId"],
            "challenge": b64url(vote_challenge(vote)),
            "allowCredentials": [{"id": b64url(raw_id)}],
        }
    )
    signed = msgspec.structs.replace(vote, assertion=assertion_from_json(response))
    nc = await platform.connect_as(approver_identity("alice"))
    try:
        return await send_vote(nc, signed)
    finally:
        await nc.close()


async def held_requests_as_operator(platform):
    nc = await platform.connect_as(OPERATOR)
    try:
        return await held_requests(nc)
    finally:
        await nc.close()


def test_screenshots_were_kept(shots):
    names = sorted(p.name for p in shots.taken)
    assert len(names) == 11, names
    assert all(Path(p).stat().st_size > 5_000 for p in shots.taken)
