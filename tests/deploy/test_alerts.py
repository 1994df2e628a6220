"""Prometheus rules and config, checked by promtool (Debian package `prometheus`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
ALERTS = PROM / "alerts.yml"
ALERTS_TEST = PROM / "alerts_test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
EXPECTED_ALERTS = {
    "LantauHsmNodeDown",
    "LantauHsmPoolBelowRedundancy",
    "LantauHsmFailoverStorm",
    "LantauSignLatencyBudgetBurn",
    "LantauBackupLag",
    "LantauKeysWithoutOfflineCopy",
    "LantauAuditLag",
    "LantauAuditHalted",
    "LantauSignatureWithoutOrder",
    "LantauAuditForeignEntries",
    "LantauAuditWitnessDown",
    "LantauAuditUnwitnessed",
    "LantauDeadLetters",
    "LantauServiceDown",
    "LantauNatsReplicaLost",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool not found: apt-get install prometheus (make setup does)")
    return subprocess.run(
        [tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"[`*_]", "", m.group(1)).strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text)))
    return anchors


def test_promtool_check_rules() -> None:
    proc = promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout


def test_promtool_unit_tests() -> None:
    proc = promtool("test", "rules", str(ALERTS_TEST.relative_to(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_check_config() -> None:
    proc = promtool("check", "config", str((PROM / "prometheus.yml").relative_to(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is valid prometheus config file syntax" in proc.stdout
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]


def test_the_expected_alerts_exist() -> None:
    assert {r["alert"] for r in rules() if "alert" in r} == EXPECTED_ALERTS


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    firing: dict[str, set[str]] = {}
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            expected = case.get("exp_alerts") or []
            if expected:
                firing.setdefault(case["alertname"], set()).update(
                    e["exp_labels"]["severity"] for e in expected
                )
            else:
                quiet.add(case["alertname"])
    assert quiet == EXPECTED_ALERTS, f"never tested not firing: {EXPECTED_ALERTS - quiet}"
    assert set(firing) == EXPECTED_ALERTS, f"never tested firing: {EXPECTED_ALERTS - set(firing)}"
    # An alert with several rules (severities) is shown firing at each of them.
    for rule in rules():
        assert rule["labels"]["severity"] in firing[rule["alert"]], rule["alert"]


def test_every_alert_has_severity_summary_and_a_runbook_in_operations_md() -> None:
    anchors = github_anchors(OPERATIONS.read_text())
    for rule in rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        for key in ("summary", "description", "runbook"):
            assert annotations.get(key, "").strip(), f"{name} has no {key}"
        path, _, anchor = annotations["runbook"].partition("#")
        assert path == "docs/operations.md", name
        assert anchor == name.lower(), f"{name}: runbook anchor {anchor!r}"
        assert anchor in anchors, f"{name}: no heading for #{anchor} in docs/operations.md"


def test_github_anchors() -> None:
    assert github_anchors("## LantauHsmNodeDown\n### Endpoints: `/readyz` reasons") == {
        "lantauhsmnodedown",
        "endpoints-readyz-reasons",
    }
