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
from libs.hsm.pkcs11_backend import Pkcs11Backend
from devkit.softhsm import find_module, init_slots
from libs.hsm.pool import HsmPool

async def main(workdir):
    slots = init_slots(Path(workdir), ["slot-1", "slot-2", "slot-3"])
    os.environ["SOFTHSM2_CONF"] = str(slots[0].conf_path)
    shared = ThreadPoolExecutor(max_workers=1)  # SoftHSM without locking: one thread
    backends = {
        s.label: Pkcs11Backend(find_module(), s.label, s.pin_file.read_text().strip(),
                               executor=shared)
        for s in slots
    }
    pool = HsmPool(None, None, observer="test", backends=backends, timeout_s=2.0)
    stopping = asyncio.Event()
    await pool.start(stopping)
    for _ in range(100):  # local beats, then one probe each, bring the slots up
        if all(v.state == "up" for v in pool.balancer.views()):
            break
        await asyncio.sleep(0.05)
    public = {}
    for name in backends:
        async def gen(b, _n):
            return (await b.generate("k", "secp256k1")).public_key
        public[name], _ = await pool.run("generate", [name], gen, max_attempts=1)

    async def burst(n):
        by_node, verified = {}, 0
        async def one(i):
            nonlocal verified
            digest = hashlib.sha256(b"%d" % i).digest()
            async def sign(b, _n):
                return await b.sign("k", "secp256k1", digest)
            raw, node = await pool.run("sign", list(backends), sign, max_attempts=3)
            curves.finalize("secp256k1", public[node], digest, raw)  # raises if invalid
            verified += 1
            by_node[node] = by_node.get(node, 0) + 1
        for start in range(0, n, 24):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 24))))
        return by_node, verified

    before, ok_before = await burst(240)
    await backends["slot-2"].close()  # the slot dies: its sessions are gone
    after, ok_after = await burst(240)
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
