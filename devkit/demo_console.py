"""The demo's console part: security keys enrolled by a quorum, a held transfer approved
through the console's own HTTP path with a software key (where a person would touch a
real one), and one more held transfer left waiting for a person in the browser."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from devkit import demo_policy as demo
from devkit import txcheck, txs
from devkit.authenticator import SoftAuthenticator
from devkit.console_client import ConsoleClient
from devkit.demo_chains import Lantau, Out, _check, _outcome
from libs.client import CustodyClient
from proto.results import SignResult

APPROVERS = ("alice", "bob")


async def _held(stack: Any, client: CustodyClient, public_key: bytes, amount: int, salt: int):
    spend = txs.btc_spend(public_key, demo.COLD_BTC, amount, fee=2_000, salt=salt)
    request = client.sign_request(
        "demo-btc", spend.payload, payload_kind="btc_psbt", chain=demo.BTC_NETWORK
    )
    await client.submit(request)
    return request, spend


async def _enrol(stack: Any, person: str, key: SoftAuthenticator, out: Out, lantau: Lantau) -> bool:
    async with ConsoleClient(stack.console_url, key) as console:
        proposed = await console.enrol(person, f"{person}'s demo key")
    if not proposed.get("ok"):
        out(f"  enrol {person}: {proposed.get('message')}")
        return False
    credential = proposed["credential"]
    out(f"  {person} registers a key in the console: proposed as {person}/{credential[:12]}...")
    endorsers = [n for n in demo.APPROVERS if n != person][:2]
    for endorser in endorsers:
        key_file = stack.run_dir / "approvers" / f"{endorser}.key"
        done = lantau(
            stack,
            "credentials",
            "endorse",
            f"{person}/{credential}",
            "--approver",
            endorser,
            "--key-file",
            str(key_file),
        )
        said = (done.stdout or done.stderr).strip().split("\n")[-1]
        out(f"    $ lantau credentials endorse {person}/{credential[:12]}... --approver {endorser}")
        out(f"      {said}")
        if done.returncode != 0:
            return False
    return True


async def console_approval(
    stack: Any, client: CustodyClient, keys: dict[str, bytes], out: Out, lantau: Lantau
) -> bool:
    """0.05 BTC held for 2 of 3 treasury approvers, approved in the console with keys."""
    out(f"\n[console] the approvers' console: {stack.console_url}/")
    out("  security keys count once two other treasury approvers endorse them (a quorum);")
    out("  this demo uses software keys through the console's own HTTP path, as a browser would")
    authenticators = {p: SoftAuthenticator(origin=stack.console_url) for p in APPROVERS}
    for person, key in authenticators.items():
        if not await _enrol(stack, person, key, out, lantau):
            return False
    request, spend = await _held(stack, client, keys["demo-btc"], 5_000_000, salt=31)
    out(f"  0.05 BTC to the cold wallet is held (request {request.request_id})")
    for _ in range(50):
        listing = lantau(stack, "approvals", "list")
        if request.request_id in listing.stdout:
            break
        await asyncio.sleep(0.2)
    ok = True
    for person, key in authenticators.items():
        async with ConsoleClient(stack.console_url, key) as console:
            signed_in = await console.sign_in(person)
            page = await console.page(f"/requests/{client.requester}/{request.request_id}")
            seen = re.search(r"send 0\.05 BTC[^<\n]*", page)
            voted = await console.vote(client.requester, request.request_id)
        out(
            f"  {person} signs in ({'ok' if signed_in.get('ok') else signed_in.get('message')}), "
            f'reads "{seen.group(0) if seen else "?"}", approves with the key: '
            f"{voted.get('message')}"
        )
        ok = ok and bool(voted.get("ok"))
    result = await client.send(request, timeout=30)
    if not isinstance(result, SignResult) or not _outcome(result, out):
        return False
    psbt = result.signed_payload or b""
    ok = _check(out, lambda: txcheck.check_psbt(psbt, spend.spent)) and ok
    waiting, _ = await _held(stack, client, keys["demo-btc"], 6_000_000, salt=32)
    approvers = stack.run_dir / "approvers"
    out(f"\n  one more held transfer waits for you ({waiting.request_id}). In a browser on")
    out(f"  this machine open {stack.console_url}/enrol, register your security key as carol,")
    out("  and have alice and bob endorse it (the fingerprint the page shows):")
    for endorser in ("alice", "bob"):
        out(
            f"    lantau credentials endorse carol/<key> --approver {endorser} "
            f"--key-file {approvers}/{endorser}.key"
        )
    out("  It needs two approvals: alice's from the command line,")
    out(
        f"    lantau approve {waiting.request_id} --approver alice --key-file {approvers}/alice.key"
    )
    out("  and yours: sign in as carol and approve it with the key.")
    return ok
