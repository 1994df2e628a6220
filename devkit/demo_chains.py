"""The demo's clear-signing part: a real transaction of each chain decoded, judged, signed
and verified with another library; a lie about a sanctioned destination refused; an
approval whose approvers read the decoded transaction."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Callable
from typing import Any

from devkit import demo_policy as demo
from devkit import txcheck, txs
from libs import chains
from libs.client import CustodyClient
from proto.requests import Transfer
from proto.results import SignResult

Out = Callable[[str], None]
Lantau = Callable[..., subprocess.CompletedProcess[str]]


def _decoded(kind: str, payload: bytes, public_key: bytes, chain: str | None, out: Out) -> None:
    parsed = chains.parse(kind, payload, public_key, chain_hint=chain)
    out("  decoded (libs/chains: what policy judges and approvers read):")
    for line in parsed.summary:
        out(f"    | {line}")


def _outcome(result: SignResult, out: Out) -> bool:
    if result.status == "signed" and result.signed_payload is not None:
        out(f"  signed by {result.node}; request {result.request_id}")
        return True
    error = result.error
    out(f"  {result.status}: {error.code}: {error.message}" if error else f"  {result.status}")
    return False


def _check(out: Out, check: Callable[[], str]) -> bool:
    try:
        out(f"  check      {check()}")
    except Exception as e:  # any failure of the independent check is the demo's failure
        out(f"  check      FAILED: {type(e).__name__}: {e}")
        return False
    return True


async def sign_each_chain(client: CustodyClient, keys: dict[str, bytes], out: Out) -> bool:
    """An EIP-1559 transfer, a PSBT with change, a Solana transfer: each to its cold wallet."""
    ok = True
    evm = keys["demo-eth"]
    payload = txs.eth_transfer(demo.COLD_EVM, 5 * 10**16)
    out("\n[ethereum] demo-eth signs an EIP-1559 transfer of 0.05 ETH to the cold wallet")
    _decoded("evm_tx", payload, evm, None, out)
    result = await client.sign("demo-eth", payload, payload_kind="evm_tx")
    if _outcome(result, out):
        raw = result.signed_payload or b""
        out(f"  signed transaction ({len(raw)} bytes, ready to broadcast) 0x{raw.hex()[:64]}...")
        ok = _check(out, lambda: txcheck.check_evm_tx(raw, evm)) and ok
    else:
        ok = False

    btc = keys["demo-btc"]
    spend = txs.btc_spend(btc, demo.COLD_BTC, 60_000)
    out(
        "\n[bitcoin] demo-btc signs a PSBT: 0.0006 BTC to the cold wallet, change back "
        f"({demo.BTC_NETWORK})"
    )
    _decoded("btc_psbt", spend.payload, btc, demo.BTC_NETWORK, out)
    result = await client.sign(
        "demo-btc",
        spend.payload,
        payload_kind="btc_psbt",
        chain=demo.BTC_NETWORK,
        transfer=Transfer(asset="BTC", amount=60_000, destination=demo.COLD_BTC),
    )
    if _outcome(result, out):
        psbt = result.signed_payload or b""
        out(f"  the PSBT comes back with the signature in place ({len(psbt)} bytes)")
        ok = _check(out, lambda: txcheck.check_psbt(psbt, spend.spent)) and ok
    else:
        ok = False

    sol = keys["demo-sol"]
    message = txs.sol_message(sol, txs.sol_send(sol, demo.COLD_SOL, 10**7))
    out("\n[solana] demo-sol signs a system transfer of 0.01 SOL to the cold wallet")
    _decoded("sol_message", message, sol, demo.SOL_CLUSTER, out)
    result = await client.sign("demo-sol", message, payload_kind="sol_message", chain="devnet")
    if _outcome(result, out):
        raw = result.signed_payload or b""
        out(f"  signed transaction ({len(raw)} bytes, ready to broadcast)")
        ok = _check(out, lambda: txcheck.check_solana(raw, message, sol)) and ok
    else:
        ok = False
    return ok


async def sanctioned(client: CustodyClient, keys: dict[str, bytes], out: Out) -> bool:
    """The transaction pays a sanctioned address; the trading system says "cold wallet"."""
    payload = txs.eth_transfer(demo.SANCTIONED, 5 * 10**16, nonce=1)
    lie = Transfer(asset="ETH", amount=5 * 10**16, destination=demo.COLD_EVM)
    out("\n[policy] the trading system declares 0.05 ETH to the cold wallet ...")
    out(f"  declared: {lie.amount} wei of ETH to {lie.destination} (the cold wallet)")
    _decoded("evm_tx", payload, keys["demo-eth"], None, out)
    lied = await client.sign("demo-eth", payload, payload_kind="evm_tx", transfer=lie)
    refused_lie = not _outcome(lied, out) and _code(lied) == "TRANSFER_MISMATCH"
    out("  ... and the same transaction with no declaration at all:")
    bare = await client.sign("demo-eth", payload, payload_kind="evm_tx")
    denied = not _outcome(bare, out) and _code(bare) == "POLICY_DENIED"
    return refused_lie and denied and "sanction" in (bare.error.message if bare.error else "")


def _code(result: SignResult) -> str:
    return result.error.code if result.error else ""


async def approval(
    stack: Any, client: CustodyClient, keys: dict[str, bytes], out: Out, lantau: Lantau
) -> bool:
    """0.05 BTC is above the 0.01 BTC threshold: two of three approvers read it and agree."""
    btc = keys["demo-btc"]
    spend = txs.btc_spend(btc, demo.COLD_BTC, 5_000_000, fee=2_000, salt=2)
    out("\n[approval] 0.05 BTC to the cold wallet is above 0.01 BTC: 2 of 3 treasury approvers")
    request = client.sign_request(
        "demo-btc", spend.payload, payload_kind="btc_psbt", chain=demo.BTC_NETWORK
    )
    await client.submit(request)
    for _ in range(50):
        listing = lantau(stack, "approvals", "list")
        if request.request_id in listing.stdout:
            break
        await asyncio.sleep(0.2)
    out("  $ lantau approvals list")
    out("    " + listing.stdout.strip().replace("\n", "\n    "))
    found = re.search(
        r"view sha256 ([0-9a-f]{64}) \(decoded again here: the same\)", listing.stdout
    )
    if found is None:
        out("  the listing does not show a checked view digest")
        return False
    view = found.group(1)
    ok = True
    for approver in ("alice", "bob"):
        key_file = stack.run_dir / "approvers" / f"{approver}.key"
        args = ("--approver", approver, "--key-file", str(key_file), "--view-sha256", view)
        out(
            f"  $ lantau approve {request.request_id} {' '.join(args[:4])} "
            f"--view-sha256 {view[:12]}..."
        )
        voted = lantau(stack, "approve", request.request_id, *args)
        out("    " + (voted.stdout or voted.stderr).strip())
        ok = ok and voted.returncode == 0
    result = await client.send(request, timeout=30)
    if not isinstance(result, SignResult) or not _outcome(result, out):
        return False
    psbt = result.signed_payload or b""
    return _check(out, lambda: txcheck.check_psbt(psbt, spend.spent)) and ok
