"""Consecutive bench runs side by side: each headline figure, run by run, and its spread.

On a 2-core machine one run's figures move by tens of percent; a figure is read with its
spread or not at all. Pure: works on the reports' JSON form (``asdict(Report)`` or a
``bench-*.json`` read back).
"""

from __future__ import annotations

import statistics
from typing import Any

# Figures where smaller is better are marked so a reader need not guess.
_LOWER_IS_BETTER = ("cpu", "p99", "lost", "added")


def figures(report: dict[str, Any]) -> dict[str, float]:
    """The headline figures of one run, by name."""
    found: dict[str, float] = {}
    for c in report.get("curves", []):
        name = c["curve"]
        found[f"{name} raw/s"] = c["raw_per_s"]
        found[f"{name} e2e/s"] = c["sustained_per_s"]
        found[f"{name} ratio %"] = round(c["ratio_to_raw"] * 100, 1)
        found[f"{name} cpu us/request with nats"] = c["overhead_cpu_us_with_nats"]
        for process, us in c.get("cpu_us_by_process", {}).items():
            found[f"{name} cpu us/request {process}"] = us
        if len(c.get("latency", [])) > 1:
            found[f"{name} p99 ms at 50%"] = c["latency"][1]["p99_ms"]
    for s in report.get("scaling", []):
        found[f"scaling e2e/s {int(s['nodes'])} node(s)"] = s["e2e_per_s"]
    kill = report.get("kill")
    if kill:
        found["kill lost"] = kill["lost"]
        found["kill added ms"] = kill["added_latency_ms"]
    for r in report.get("replicas", []):
        found[f"nats {r['servers']} server(s) R{r['replicas']} e2e/s"] = r["sustained_per_s"]
    return found


def spread(reports: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Each figure with its value in every run (None where a run lacks it), in the order
    the figures first appear."""
    per_run = [figures(r) for r in reports]
    names: list[str] = []
    for f in per_run:
        names += [n for n in f if n not in names]
    return {n: [f.get(n) for f in per_run] for n in names}


def lines(table: dict[str, list[float | None]]) -> list[str]:
    """One line per figure: the runs in order, then min, median and max of those present."""
    out = []
    width = max((len(n) for n in table), default=10) + 2
    for name, values in table.items():
        present = [v for v in values if v is not None]
        runs = " / ".join("-" if v is None else f"{v:g}" for v in values)
        if not present:
            continue
        lo, mid, hi = min(present), statistics.median(present), max(present)
        swing = f"{(hi - lo) / mid:.0%}" if mid else "-"
        hint = " (lower is better)" if any(k in name for k in _LOWER_IS_BETTER) else ""
        out.append(
            f"{name:<{width}}{runs:<28} min {lo:g}  median {mid:g}  max {hi:g}  "
            f"spread {swing}{hint}"
        )
    return out
