"""docs/audit.md promises auditors a verifier written without Lantau: run it, so it stays true."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from libs.audit.export import to_lines
from tests.audit.test_verify import PUB, build

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def recipe():
    code = re.search(
        r"## Verifying with your own code.*?```python\n(.*?)```", DOC.read_text(), re.S
    )
    assert code, "the independent verifier is missing from docs/audit.md"
    namespace: dict = {"__name__": "recipe"}
    exec(compile(code.group(1), str(DOC), "exec"), namespace)
    return namespace["check"]


def test_the_documented_verifier_accepts_a_good_export(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text("\n".join(to_lines(build(120, 40))) + "\n")
    assert recipe()(str(path), PUB.hex()) == "OK: 120 records, signed up to seq 120"


def test_the_documented_verifier_catches_an_edit_and_a_forgery(tmp_path):
    check = recipe()
    lines = list(to_lines(build(120, 40)))
    path = tmp_path / "audit.jsonl"
    edited = lines.copy()
    edited[10] = edited[10].replace('"actor":"a', '"actor":"b', 1)
    path.write_text("\n".join(edited) + "\n")
    assert check(str(path), PUB.hex()).startswith("bad record at seq")
    forged = lines.copy()
    cp = msgspec.json.decode(forged[40])
    assert cp["type"] == "audit_checkpoint"
    cp["at_ms"] += 1
    forged[40] = msgspec.json.encode(cp).decode()
    path.write_text("\n".join(forged) + "\n")
    assert check(str(path), PUB.hex()) == "forged checkpoint at seq 40"
