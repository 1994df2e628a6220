"""docs/audit.md promises auditors a verifier written without Lantau: run it against
exports of logs Lantau's writer rules produce, honest and tampered, and check it agrees
with Lantau's own verifier, so the page stays true."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import coincurve
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.audit import witness
from libs.audit.export import line_of
from libs.audit.verify import verify
from proto.audit import AuditCheckpoint, AuditRecord, FactGap
from tests.audit.builders import (
    CP_PUB,
    KEYS,
    OTHER_RECORD_KEY,
    RECORD_KEY,
    build,
    items,
    reseal,
    sign_checkpoint,
)
from tests.audit.test_verify import _quarantined, _rechain, cp_position, position

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
LOG = build(n_records=48, every=8, batch=3)


def recipe():
    code = re.search(
        r"## Verifying with your own code.*?```python\n(.*?)```", DOC.read_text(), re.S
    )
    assert code, "the independent verifier is missing from docs/audit.md"
    imports = re.findall(r"^(?:from|import) (\S+)", code.group(1), re.M)
    assert {i.split(".")[0] for i in imports} <= {"base64", "hashlib", "json", "cryptography"}
    namespace: dict = {"__name__": "recipe"}
    exec(compile(code.group(1), str(DOC), "exec"), namespace)
    return namespace["check"]


CHECK = recipe()


def export(entries, tmp_path, name="audit.jsonl") -> str:
    path = tmp_path / name
    path.write_text(
        "".join(line_of(i, b"\x00junk" if i.entry is None else None) + "\n" for i in items(entries))
    )
    return str(path)


def run(entries, tmp_path, witnessed=None) -> str:
    w = None
    if witnessed is not None:
        wp = tmp_path / "witness.jsonl"
        wp.write_bytes(b"".join(witness.line_of(c) for c in witnessed))
        w = str(wp)
    return CHECK(export(entries, tmp_path), CP_PUB.hex(), RECORD_KEY.public_hex, w)


def test_the_documented_verifier_accepts_a_good_export(tmp_path):
    assert run(LOG, tmp_path) == "OK: 48 records, signed up to tree size 48"


def test_it_accepts_what_the_audit_service_quarantined_and_noted(tmp_path):
    log = _quarantined(LOG, position(LOG, 10), None)
    log = _quarantined(log, position(log, 30), log[cp_position(log, 16)])
    log = _quarantined(log, position(log, 40), log[position(log, 3)])
    assert verify(items(log), KEYS).ok
    assert run(log, tmp_path).startswith("OK: 48 records")


def test_it_accepts_gap_notes(tmp_path):
    r8 = [r for r in LOG if isinstance(r, AuditRecord)][7]
    f = r8.facts[0]
    gap = FactGap(stream=f.stream, first=f.seq, last=f.seq, reason="expired")
    noted = _rechain(LOG, {8: {"facts": r8.facts[1:], "gaps": [gap]}})
    assert run(noted, tmp_path) == "OK: 48 records, signed up to tree size 0"


def _tampered() -> dict[str, list[Any]]:
    cases: dict[str, list[Any]] = {}
    edited: list[Any] = list(LOG)
    i = position(edited, 20)
    edited[i] = msgspec.structs.replace(edited[i], at_ms=1)
    cases["edited"] = edited
    deleted: list[Any] = list(LOG)
    del deleted[position(deleted, 20)]
    cases["deleted"] = deleted
    swapped: list[Any] = list(LOG)
    i = position(swapped, 20)
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    cases["swapped"] = swapped
    garbage: list[Any] = list(LOG)
    garbage.insert(position(garbage, 20), None)
    cases["garbage not quarantined"] = garbage
    cases["garbage at the end"] = [*LOG, None]
    forged_cp: list[Any] = list(LOG)
    i = cp_position(forged_cp, 24)
    forged_cp[i] = sign_checkpoint(forged_cp[i], coincurve.PrivateKey(b"\x05" * 32))
    cases["forged checkpoint"] = forged_cp
    dropped: list[Any] = list(LOG)
    del dropped[cp_position(dropped, 24)]
    cases["dropped checkpoint"] = dropped
    resealed: list[Any] = list(LOG)
    i = position(resealed, 20)
    resealed[i] = reseal(resealed[i], at_ms=2)
    cases["resealed with the record key"] = resealed
    cases["another record key"] = build(48, 8, 3, key=OTHER_RECORD_KEY)
    return cases


@pytest.mark.parametrize("case", list(_tampered()))
def test_it_fails_where_lantau_fails_at_the_same_log_seq(case, tmp_path):
    entries = _tampered()[case]
    report = verify(items(entries), KEYS)
    assert not report.ok and report.failure is not None
    said = run(entries, tmp_path)
    assert said.startswith(f"FAILED at log seq {report.failure.log_seq}:"), (said, report.summary())


def test_it_catches_truncation_against_a_witness(tmp_path):
    witnessed = [e for e in LOG if isinstance(e, AuditCheckpoint)]
    truncated = LOG[: cp_position(LOG, 24) + 1]
    assert run(truncated, tmp_path).startswith("OK")
    assert run(truncated, tmp_path, witnessed) == (
        "FAILED: the log does not hold the tree witnessed on line 4"
    )
    assert run(LOG, tmp_path, witnessed).startswith("OK")
    assert run(LOG, tmp_path, [*witnessed, witnessed[0]]).startswith("FAILED: witness line 7")


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_it_agrees_with_lantau_on_random_tampering(data, tmp_path_factory):
    entries = list(LOG)
    how = data.draw(st.sampled_from(["swap", "delete", "duplicate", "move"]))
    i = data.draw(st.integers(0, len(entries) - 1))
    j = data.draw(st.integers(0, len(entries) - 1))
    if how == "swap":
        entries[i], entries[j] = entries[j], entries[i]
    elif how == "delete":
        del entries[i]
    elif how == "duplicate":
        entries.insert(j, entries[i])
    else:
        entries.insert(j, entries.pop(i))
    report = verify(items(entries), KEYS)
    said = run(entries, tmp_path_factory.mktemp("r"))
    assert said.startswith("OK") == report.ok, (how, i, j, said, report.summary())


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40))
def test_canonical_json_is_the_same_in_both(text, tmp_path_factory):
    """The recipe's json.dumps and Lantau's msgspec encoder agree on any string."""
    r = next(e for e in LOG if isinstance(e, AuditRecord))
    facts = [msgspec.structs.replace(r.facts[0], actor=text), *r.facts[1:]]
    log = _rechain(LOG[: position(LOG, 3)], {1: {"facts": facts}})
    assert verify(items(log), KEYS).ok
    tmp = tmp_path_factory.mktemp("c")
    assert run(log, tmp) == "OK: 2 records, signed up to tree size 0"
    line = json.loads((tmp / "audit.jsonl").read_text().split("\n")[0])
    assert line["entry"]["facts"][0]["actor"] == text
