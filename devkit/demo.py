"""Demo traffic for ``make run``: keys on both curves, signatures, independent verification."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nacl.signing
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

from devkit import demo_policy
from libs.client import CustodyClient
from libs.config import RequesterConfig
from libs.secret_files import write_secret
from proto.common import Curve, PayloadKind
from proto.requests import Transfer
from proto.results import SignResult

DEMO_REQUESTER = "demo-trader"


def independent_verify(result: SignResult, payload: bytes) -> str:
    """Verify with OpenSSL (via cryptography), a library the signer does not use."""
    assert result.signature is not None and result.public_key is not None
    try:
        if result.curve == "secp256k1":
            r = int.from_bytes(result.signature[:32], "big")
            s = int.from_bytes(result.signature[32:], "big")
            pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), result.public_key)
            pub.verify(
                utils.encode_dss_signature(r, s),
                payload,
                ec.ECDSA(utils.Prehashed(hashes.SHA256())),
            )
        else:
            ed25519.Ed25519PublicKey.from_public_bytes(result.public_key).verify(
                result.signature, payload
            )
    except InvalidSignature:
        return "INVALID (OpenSSL rejects it)"
    return "valid (verified independently with OpenSSL)"


async def run_demo(stack: Any, key_file: Path, out: Any = print) -> bool:
    from libs.client import load_signing_key

    ok = True
    async with await CustodyClient.connect(
        stack.config.nats.servers, DEMO_REQUESTER, load_signing_key(key_file)
    ) as client:
        cases: list[tuple[str, Curve, PayloadKind, bytes]] = [
            (
                "demo-btc-hot",
                "secp256k1",
                "digest",
                hashlib.sha256(b"demo: pay 0.5 BTC to bc1q-demo").digest(),
            ),
            ("demo-sol-hot", "ed25519", "message", b"demo: transfer 12 SOL to demo-wallet"),
        ]
        for key_id, curve, kind, payload in cases:
            created = await client.create_key(key_id, curve)
            if created.status != "created":
                out(f"  create {key_id}: {created.status} {created.error}")
                ok = False
                continue
            assert created.public_key is not None
            out(f"\n[{curve}] key {key_id} created on {created.node}")
            out(f"  public key {created.public_key.hex()}")
            result = await client.sign(key_id, payload, payload_kind=kind)
            if result.status != "signed" or result.signature is None:
                out(f"  sign: {result.status} {result.error}")
                ok = False
                continue
            verdict = independent_verify(result, payload)
            ok = ok and verdict.startswith("valid")
            out(f"  payload    {payload.hex() if kind == 'digest' else payload.decode()}")
            out(f"  signature  {result.signature.hex()}")
            if result.recovery_id is not None:
                out(f"  recovery id {result.recovery_id} (Ethereum v = {27 + result.recovery_id})")
            out(f"  signed by  {result.node}; request {result.request_id}")
            out(f"  check      {verdict}")
            again = await client.sign(
                key_id, payload, payload_kind=kind, request_id=result.request_id
            )
            same = again.signature == result.signature
            out(f"  resending request {result.request_id} returns the same signature: {same}")
        ok = await policy_demo(stack, client, out) and ok
    return ok


def _lantau(stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "services.cli.main", *args, "--config", str(stack.config_path)]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


async def policy_demo(stack: Any, client: CustodyClient, out: Any) -> bool:
    """One transfer refused by a rule; one held until two of three approvers agree."""
    key_id = "demo-btc-hot"
    out("\n[policy] a transfer to a sanctioned address")
    refused = await client.sign(
        key_id,
        hashlib.sha256(b"demo: pay the sanctioned address").digest(),
        transfer=Transfer(asset="BTC", amount=2_500, destination=demo_policy.SANCTIONED),
    )
    out(f"  {refused.status}: {refused.error.code if refused.error else ''}")
    out(f"  {refused.error.message if refused.error else ''}")
    ok = refused.status == "rejected"

    amount = demo_policy.LARGE * 3
    out(
        f"\n[policy] a large transfer ({amount} minor units of BTC) needs 2 of 3 treasury approvers"
    )
    payload = hashlib.sha256(b"demo: pay 0.03 BTC to the cold wallet").digest()
    request = client.sign_request(
        key_id, payload, transfer=Transfer(asset="BTC", amount=amount, destination="bc1q-cold")
    )
    await client.submit(request)
    for _ in range(50):
        listing = _lantau(stack, "approvals", "list")
        if request.request_id in listing.stdout:
            break
        await asyncio.sleep(0.2)
    out("  $ lantau approvals list")
    out("    " + listing.stdout.strip().replace("\n", "\n    "))
    for approver in ("alice", "bob"):
        key_file = stack.run_dir / "approvers" / f"{approver}.key"
        out(f"  $ lantau approve {request.request_id} --approver {approver} --key-file {key_file}")
        voted = _lantau(
            stack,
            "approve",
            request.request_id,
            "--approver",
            approver,
            "--key-file",
            str(key_file),
        )
        out("    " + (voted.stdout or voted.stderr).strip())
        ok = ok and voted.returncode == 0
    result = await client.send(request, timeout=30)
    if not isinstance(result, SignResult) or result.signature is None:
        out(f"  not signed: {result.status} {result.error}")
        return False
    verdict = independent_verify(result, payload)
    out(f"  signed by {result.node} after approval: {result.signature.hex()}")
    out(f"  check      {verdict}")
    return ok and verdict.startswith("valid")


def prepare_run_dir(run_dir: Path) -> RequesterConfig:
    """Start clean (fresh tokens, fresh streams) with a new demo trading system identity."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    key = nacl.signing.SigningKey.generate()
    write_secret(run_dir / f"{DEMO_REQUESTER}.key", key.encode().hex() + "\n")
    return RequesterConfig(
        name=DEMO_REQUESTER,
        public_key=key.verify_key.encode().hex(),
        keys=["demo-*"],
        may_create_keys=True,
        blind_keys=["demo-*"],
    )


async def dev_up_with_demo(
    run_dir: Path, *, nodes: int, demo: bool, keep_running: bool, prometheus: bool = False
) -> int:
    from devkit import stack as devstack

    requester = prepare_run_dir(run_dir)
    outcome = {"ok": True}

    async def on_ready(stack: Any) -> None:
        if demo:
            print("\n=== demo traffic ===")
            outcome["ok"] = await run_demo(stack, run_dir / f"{DEMO_REQUESTER}.key")
            print("\n=== demo " + ("passed" if outcome["ok"] else "FAILED") + " ===")

    code = await devstack.dev_up(
        run_dir,
        nodes=nodes,
        requesters=[requester],
        on_ready=on_ready,
        keep_running=keep_running,
        prometheus=prometheus,
    )
    return code or (0 if outcome["ok"] else 1)
