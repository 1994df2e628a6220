"""The benchmark keeps working: a short run of every stage (timings are not asserted)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from devkit.bench import Durations, percentile, run_bench, table
from devkit.softhsm import init_token


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.999) == 100.0
    assert percentile([], 0.5) == 0.0


async def test_a_smoke_run_measures_every_stage(tmp_path: Path):
    # A previous run left its stacks behind (make bench twice in one checkout): its
    # tokens carry the labels this run's stacks are about to create.
    await asyncio.to_thread(init_token, tmp_path / "run" / "1-nodes" / "authority", "lantau-policy")
    lines: list[str] = []
    report = await run_bench(
        tmp_path,
        curves=["secp256k1", "ed25519"],
        durations=Durations.smoke(),
        in_flight=16,
        say=lines.append,
        scaling=(1,),  # make bench adds 2 nodes: the same code on one more stack
    )
    data = json.loads(Path(report.json_path).read_text())
    assert data["machine"]["cores"] >= 1 and data["machine"]["softhsm"]
    assert [c["curve"] for c in data["curves"]] == ["secp256k1", "ed25519"]
    for c in data["curves"]:
        assert c["raw_per_s"] > 0 and c["sustained_per_s"] > 0
        assert len(c["latency"]) == 3
        assert all(p["lost"] == 0 and p["signed"] == p["sent"] for p in c["latency"])
    assert [s["nodes"] for s in data["scaling"]] == [1, 3]
    kill = data["kill"]
    assert kill["lost"] == 0 and kill["sent"] == kill["signed"] + kill["failed"]
    # The NATS stage: one server against a 3-server cluster at 3 replicas, same offered load.
    replicas = data["replicas"]
    assert [(r["servers"], r["replicas"]) for r in replicas] == [(1, 1), (3, 3)]
    assert replicas[0]["latency"]["offered_per_s"] == replicas[1]["latency"]["offered_per_s"]
    for r in replicas:
        assert r["sustained_per_s"] > 0 and r["nats_cpu_us"] > 0
        assert r["latency"]["lost"] == 0 and r["latency"]["signed"] == r["latency"]["sent"]
    assert Path(report.chart_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = table(report)
    assert "SIGKILL of hsm-2" in text and "secp256k1" in text
    assert "cost of 3 replicas: throughput" in text
