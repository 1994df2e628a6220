"""The benchmark keeps working: a short run of every stage (timings are not asserted)."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from devkit.bench import (
    CurveRun,
    Durations,
    Latency,
    Report,
    add_parsers,
    chart,
    percentile,
    run_bench,
    table,
)
from devkit.softhsm import init_token


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.999) == 100.0
    assert percentile([], 0.5) == 0.0


async def test_a_smoke_run_measures_every_stage(tmp_path: Path):
    # A previous run left its stacks behind (make bench twice in one checkout, or a run
    # that failed): its tokens carry the labels this run's stacks are about to create.
    # And --out may name a directory holding things of the user's: none is deleted.
    await asyncio.to_thread(init_token, tmp_path / "run" / "1-nodes" / "authority", "lantau-policy")
    (tmp_path / "notes.txt").write_text("the user's")
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
    # The headline figure, top level: end to end over raw for each key type.
    assert data["ratio"] == {c["curve"]: c["ratio_to_raw"] for c in data["curves"]}
    assert all(0 < r for r in data["ratio"].values())
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
    # The stale stacks and the user's file are untouched; this run's stacks are gone.
    assert (tmp_path / "run" / "1-nodes" / "authority").is_dir()
    assert (tmp_path / "notes.txt").read_text() == "the user's"
    assert not list(tmp_path.glob("run-*"))
    text = table(report)
    assert "SIGKILL of hsm-2" in text and "secp256k1" in text
    assert "cost of 3 replicas: throughput" in text


def _report(curve: str, p99s: tuple[float, float, float]) -> Report:
    run = CurveRun(
        curve=curve,
        nodes_holding_key=3,
        raw_per_s=1000.0,
        raw_cpu_us_per_sign=500.0,
        sustained_per_s=300.0,
        ratio_to_raw=0.3,
        overhead_cpu_us=1.0,
        overhead_cpu_us_with_nats=2.0,
    )
    run.latency = [
        Latency(
            offered_per_s=r,
            sent=10,
            signed=10,
            lost=0,
            p50_ms=p / 2,
            p99_ms=p,
            p999_ms=p,
            achieved_per_s=r,
        )
        for r, p in zip((75.0, 150.0, 240.0), p99s, strict=True)
    ]
    return Report(machine={}, curves=[run])


def test_the_chart_draws_an_earlier_run_beside_this_one(tmp_path: Path):
    earlier = tmp_path / "before.json"
    earlier.write_text(json.dumps(asdict(_report("secp256k1", (20.0, 60.0, 200.0)))))
    labels = chart(_report("secp256k1", (10.0, 20.0, 50.0)), tmp_path / "after.png", earlier)
    assert labels == [
        "before: secp256k1 p50",
        "before: secp256k1 p99",
        "secp256k1 p50",
        "secp256k1 p99",
    ]
    alone = chart(_report("secp256k1", (10.0, 20.0, 50.0)), tmp_path / "alone.png")
    assert alone == ["secp256k1 p50", "secp256k1 p99"]
    assert (tmp_path / "after.png").read_bytes()[:4] == b"\x89PNG"
    # A report the benchmark wrote is accepted by the command line.
    parser = argparse.ArgumentParser(prog="lantau")
    add_parsers(parser.add_subparsers())
    assert parser.parse_args(["bench", "--before", str(earlier)]).before == earlier


@pytest.mark.parametrize(
    "content",
    [
        None,
        "not json",
        '{"no": "curves"}',
        "[1, 2]",
        '{"curves": [1]}',
        '{"curves": [{"curve": "secp256k1"}]}',
        '{"curves": [{"curve": "secp256k1", "latency": [{"p50_ms": 1}]}]}',
    ],
)
def test_before_must_be_a_bench_json_or_the_command_says_so(
    tmp_path: Path, content: str | None, capsys: pytest.CaptureFixture[str]
):
    path = tmp_path / "before.json"
    if content is not None:
        path.write_text(content)
    parser = argparse.ArgumentParser(prog="lantau")
    add_parsers(parser.add_subparsers())
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["bench", "--before", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "not a" in err and "bench JSON" in err and "Traceback" not in err
