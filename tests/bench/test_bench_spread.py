"""Three consecutive runs read side by side (pure: the reports' JSON form)."""

from __future__ import annotations

import argparse

import pytest

from devkit.bench import add_parsers
from devkit.bench_spread import figures, lines, spread


def _run(e2e: float, nats_us: float, p99: float, *, kill: bool = True) -> dict[str, object]:
    return {
        "curves": [
            {
                "curve": "secp256k1",
                "raw_per_s": 3600.0,
                "sustained_per_s": e2e,
                "ratio_to_raw": e2e / 3600.0,
                "overhead_cpu_us_with_nats": 4000.0 + nats_us,
                "cpu_us_by_process": {"nats": nats_us, "policy": 1000.0},
                "latency": [{"p99_ms": 10.0}, {"p99_ms": p99}, {"p99_ms": 90.0}],
            }
        ],
        "scaling": [{"nodes": 1, "e2e_per_s": e2e - 10}, {"nodes": 3, "e2e_per_s": e2e}],
        "kill": {"lost": 0, "added_latency_ms": 50.0} if kill else None,
        "replicas": [{"servers": 3, "replicas": 3, "sustained_per_s": e2e / 2}],
    }


def test_each_figure_is_listed_run_by_run_in_order() -> None:
    table = spread([_run(300, 1400, 45), _run(330, 1300, 66), _run(360, 1100, 72)])
    assert table["secp256k1 e2e/s"] == [300, 330, 360]
    assert table["secp256k1 ratio %"] == [8.3, 9.2, 10.0]
    assert table["secp256k1 cpu us/request nats"] == [1400, 1300, 1100]
    assert table["secp256k1 p99 ms at 50%"] == [45, 66, 72]
    assert table["scaling e2e/s 1 node(s)"] == [290, 320, 350]
    assert table["nats 3 server(s) R3 e2e/s"] == [150, 165, 180]


def test_a_figure_one_run_lacks_is_shown_missing_not_zero() -> None:
    table = spread([_run(300, 1400, 45), _run(330, 1300, 66, kill=False)])
    assert table["kill added ms"] == [50.0, None]
    text = "\n".join(lines(table))
    kill = next(line for line in text.splitlines() if line.startswith("kill added ms"))
    assert "50 / -" in kill and "min 50" in kill and "max 50" in kill


def test_the_spread_line_gives_min_median_max_and_the_swing() -> None:
    text = lines(spread([_run(300, 1400, 45), _run(330, 1300, 66), _run(360, 1100, 72)]))
    e2e = next(line for line in text if line.startswith("secp256k1 e2e/s"))
    assert "300 / 330 / 360" in e2e
    assert "min 300  median 330  max 360  spread 18%" in e2e
    assert "lower is better" not in e2e
    p99 = next(line for line in text if line.startswith("secp256k1 p99 ms at 50%"))
    assert "lower is better" in p99


def test_a_report_without_curves_has_only_its_other_figures() -> None:
    assert figures({"scaling": [{"nodes": 2, "e2e_per_s": 10.0}]}) == {
        "scaling e2e/s 2 node(s)": 10.0
    }


@pytest.mark.parametrize("runs", ["0", "-1", "three"])
def test_runs_must_be_a_positive_count(runs: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="lantau")
    add_parsers(parser.add_subparsers())
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["bench", "--runs", runs])
    assert exit_.value.code == 2
    assert "not a number of runs" in capsys.readouterr().err
    assert parser.parse_args(["bench", "--runs", "3"]).runs == 3
