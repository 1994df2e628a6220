"""Demo traffic for ``make run``: a real transaction of each chain decoded, judged, signed and
verified independently; blind signing as a permission; policy and approvals on what the
transactions really do."""

from __future__ import annotations

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

from devkit import demo_chains, demo_console
from libs.client import CustodyClient
from libs.config import RequesterConfig
from libs.secret_files import write_secret
from proto.common import Curve
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


# Keys the demo creates; only demo-blind may sign what nobody can decode (see prepare_run_dir).
DEMO_KEYS: dict[str, Curve] = {
    "demo-eth": "secp256k1",
    "demo-btc": "secp256k1",
    "demo-sol": "ed25519",
    "demo-blind": "secp256k1",
}


async def run_demo(stack: Any, key_file: Path, out: Any = print) -> bool:
    from libs.client import load_signing_key

    ok = True
    async with await CustodyClient.connect(
        stack.config.nats.servers,
        DEMO_REQUESTER,
        load_signing_key(key_file),
        **stack.requester_options(DEMO_REQUESTER),
    ) as client:
        keys: dict[str, bytes] = {}
        out("")
        for key_id, curve in DEMO_KEYS.items():
            created = await client.create_key(key_id, curve)
            if created.status != "created" or created.public_key is None:
                out(f"  create {key_id}: {created.status} {created.error}")
                return False
            keys[key_id] = created.public_key
            out(f"[{curve}] key {key_id} created on {created.node}: {created.public_key.hex()}")
        ok = await demo_chains.sign_each_chain(client, keys, out) and ok
        ok = await blind_demo(client, out) and ok
        ok = await demo_chains.sanctioned(client, keys, out) and ok
        ok = await demo_chains.approval(stack, client, keys, out, _lantau) and ok
        ok = await demo_console.console_approval(stack, client, keys, out, _lantau) and ok
    return ok


async def blind_demo(client: CustodyClient, out: Any) -> bool:
    """A raw digest nobody can decode: signed only because this key may sign blind."""
    key_id = "demo-blind"
    payload = hashlib.sha256(b"demo: pay 0.5 BTC to bc1q-demo").digest()
    out(f"\n[blind] {key_id} signs a raw digest: nobody can tell what it moves, so blind signing")
    out(f"  is a permission of the key (blind_keys = [{key_id!r}] for {DEMO_REQUESTER})")
    result = await client.sign(key_id, payload, payload_kind="digest")
    if result.status != "signed" or result.signature is None:
        out(f"  sign: {result.status} {result.error}")
        return False
    verdict = independent_verify(result, payload)
    out(f"  payload    {payload.hex()}")
    out(f"  signature  {result.signature.hex()}")
    if result.recovery_id is not None:
        out(f"  recovery id {result.recovery_id} (Ethereum v = {27 + result.recovery_id})")
    out(f"  signed by  {result.node}; request {result.request_id}")
    out(f"  check      {verdict}")
    again = await client.sign(key_id, payload, payload_kind="digest", request_id=result.request_id)
    same = again.signature == result.signature
    out(f"  resending request {result.request_id} returns the same signature: {same}")
    refused = await client.sign("demo-eth", payload, payload_kind="digest")
    code = refused.error.code if refused.error else refused.status
    out(f"  the same digest for demo-eth: {code}: {refused.error.message if refused.error else ''}")
    return verdict.startswith("valid") and same and code == "BLIND_SIGNING_DENIED"


def _lantau(stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "services.cli.main", *args, "--config", str(stack.config_path)]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


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
        blind_keys=["demo-blind"],
    )


async def dev_up_with_demo(
    run_dir: Path,
    *,
    nodes: int,
    demo: bool,
    keep_running: bool,
    prometheus: bool = False,
    nats_cluster: int = 1,
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
        nats_cluster=nats_cluster,
    )
    return code or (0 if outcome["ok"] else 1)
