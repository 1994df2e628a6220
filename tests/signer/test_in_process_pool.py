"""The pool driving the slots of one in-process PKCS#11 module (as a vendor HA client
presents network HSMs): balancing across slots, and failover when a slot dies.

Runs in a child process: SoftHSM reads its configuration once per process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCENARIO = r"""
import asyncio, hashlib, json, os, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from libs import curves
from libs.clock import now_ms
from libs.evidence import Pins
from libs.hsm.guard import Guard
from libs.hsm.replay import ReplayLog
from libs.hsm.token import Pkcs11Token
from devkit import forge
from devkit.softhsm import find_module, init_slots
from libs.hsm.pool import HsmPool
from proto import codec
from proto.hsm import HsmGenerate, HsmSign
from proto.requests import CreateKeyRequest, signing_bytes
import msgspec, nacl.signing

POLICY, DESK = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
PINS = Pins(policy=frozenset({POLICY.verify_key.encode().hex()}),
            requesters={"desk": DESK.verify_key.encode().hex()})

async def main(workdir):
    slots = init_slots(Path(workdir), ["slot-1", "slot-2", "slot-3"])
    os.environ["SOFTHSM2_CONF"] = str(slots[0].conf_path)
    shared = ThreadPoolExecutor(max_workers=1)  # SoftHSM without locking: one thread
    # Each slot behind its own guard: the same evidence checks an hsm-node makes.
    backends = {
        s.label: Guard(
            Pkcs11Token(find_module(), s.label, s.pin_file.read_text().strip(), executor=shared),
            node_id=s.label, pins=lambda: PINS, replays=ReplayLog(None))
        for s in slots
    }
    pool = HsmPool(None, None, observer="test", backends=backends, timeout_s=2.0)
    stopping = asyncio.Event()
    await pool.start(stopping)
    for _ in range(100):  # local beats, then one probe each, bring the slots up
        if all(v.state == "up" for v in pool.balancer.views()):
            break
        await asyncio.sleep(0.05)
    create = CreateKeyRequest(request_id="c", requester="desk", key_id="desk-k",
                              curve="secp256k1", created_at_ms=now_ms(),
                              expires_at_ms=now_ms() + 60_000)
    create = msgspec.structs.replace(create, signature=DESK.sign(signing_bytes(create)).signature)
    command = HsmGenerate(key_id="desk-k", curve="secp256k1", request=codec.encode(create),
                          authorization=forge.create_authorization(POLICY, create))
    public = {}
    for name in backends:
        async def gen(b, _n):
            return (await b.generate(command)).public_key
        public[name], _ = await pool.run("generate", [name], gen, max_attempts=1)

    async def burst(n, tag):
        by_node, verified = {}, 0
        async def one(i):
            nonlocal verified
            digest = hashlib.sha256(b"%s %d" % (tag, i)).digest()
            request = forge.signed_request(DESK, "desk", "desk-k", digest)
            cmd = HsmSign(key_id="desk-k", curve="secp256k1", request=codec.encode(request),
                          authorization=forge.authorization(POLICY, request, b""))
            async def sign(b, _n):
                return await b.sign(cmd)
            raws, node = await pool.run("sign", list(backends), sign, max_attempts=3)
            curves.finalize("secp256k1", public[node], digest, raws[0])  # raises if invalid
            verified += 1
            by_node[node] = by_node.get(node, 0) + 1
        for start in range(0, n, 24):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 24))))
        return by_node, verified

    before, ok_before = await burst(240, b"before")
    await backends["slot-2"].close()  # the slot dies: its sessions are gone
    after, ok_after = await burst(240, b"after")
    states = {v.node_id: [str(v.state), str(v.circuit)] for v in pool.balancer.views()}
    stopping.set()
    await pool.stop()
    print(json.dumps({"before": before, "after": after, "verified": ok_before + ok_after,
                      "states": states}))

asyncio.run(main(sys.argv[1]))
"""


def test_the_pool_balances_and_fails_over_across_in_process_slots(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["verified"] == 480
    assert set(report["before"]) == {"slot-1", "slot-2", "slot-3"}, report
    assert min(report["before"].values()) >= 40, report  # balanced, not one slot
    assert "slot-2" not in report["after"] and sum(report["after"].values()) == 240, report
    assert report["states"]["slot-2"][1] != "closed", report  # its circuit opened
