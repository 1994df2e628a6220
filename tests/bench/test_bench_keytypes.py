"""make bench has a row per key type: raw (the node's own signing code, no bus) and end
to end, for the types kept as sealed material too (a smoke run; timings not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from devkit.bench import Durations, run_bench, table

NEW_TYPES = ["bip32-secp256k1", "slip10-ed25519", "ml-dsa-65", "lms-hss"]


async def test_every_new_key_type_gets_raw_and_end_to_end_figures(tmp_path: Path):
    lines: list[str] = []
    report = await run_bench(
        tmp_path,
        curves=NEW_TYPES,  # type: ignore[arg-type]
        durations=Durations.smoke(),
        in_flight=12,
        say=lines.append,
        scaling=(),
        replicas=False,
    )
    data = json.loads(Path(report.json_path).read_text())
    assert [c["curve"] for c in data["curves"]] == NEW_TYPES
    for c in data["curves"]:
        # Sealed keys are cloned to every node of the domain: all three sign.
        assert c["nodes_holding_key"] == 3
        assert c["raw_per_s"] > 0 and c["sustained_per_s"] > 0, c
        assert all(p["lost"] == 0 and p["signed"] == p["sent"] for p in c["latency"])
    text = table(report)
    for t in NEW_TYPES:
        assert t in text
    print("\n" + text)
