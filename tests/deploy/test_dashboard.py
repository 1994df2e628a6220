"""The Grafana dashboard and the alert rules use only metrics libs/metrics.py exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import catalogue, parse, problems

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "lantau.json"

# What the dashboard must show (series names as exported).
REQUIRED_SERIES = {
    "lantau_results_total",
    "lantau_request_duration_seconds_bucket",
    "lantau_stage_duration_seconds_bucket",
    "lantau_hsm_node_up",
    "lantau_hsm_node_in_flight",
    "lantau_hsm_circuit_state",
    "lantau_hsm_errors_total",
    "lantau_hsm_failovers_total",
    "lantau_hsm_operation_duration_seconds_bucket",
    "lantau_policy_decisions_total",
    "lantau_approvals_pending",
    "lantau_approvals_oldest_age_seconds",
    "lantau_keys_under_replicated",
    "lantau_backup_lag_seconds",
    "lantau_keys_without_offline_copy",
    "lantau_audit_head_sequence",
    "lantau_audit_lag_messages",
    "lantau_consumer_pending_messages",
    "lantau_redeliveries_total",
    "lantau_dead_letters_total",
    "lantau_nats_stream_replicas",
    "lantau_nats_stream_replicas_current",
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_dashboard_identity_and_datasource_variable() -> None:
    d = dashboard()
    assert d["uid"] == "lantau"
    assert 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_every_panel_has_the_datasource_and_targets() -> None:
    seen_ids = set()
    for p in dashboard()["panels"]:
        assert p["id"] not in seen_ids, f"duplicate panel id {p['id']}"
        seen_ids.add(p["id"])
    for p in panels():
        title = p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert p["targets"], f"{title} has no target"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), title
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", title
            assert t["expr"].strip(), title


def test_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in dashboard()["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_dashboard_exprs_use_only_catalogued_metrics() -> None:
    known = catalogue()
    found = [
        f"{p['title']}: {issue}"
        for p in panels()
        for t in p["targets"]
        for issue in problems(t["expr"], known)
    ]
    assert not found, "\n".join(found)


def test_dashboard_shows_what_on_call_needs() -> None:
    exprs = [t["expr"] for p in panels() for t in p["targets"]]
    used = {name for e in exprs for name, _ in parse(e).selectors}
    assert REQUIRED_SERIES <= used, f"not on the dashboard: {REQUIRED_SERIES - used}"
    latency = [e for e in exprs if "lantau_request_duration_seconds_bucket" in e]
    for quantile in ("0.5", "0.99", "0.999"):
        assert any(f"histogram_quantile({quantile}," in e for e in latency), quantile
    assert any("by (outcome)" in e and "lantau_results_total" in e for e in exprs)
    assert any("by (code)" in e and "lantau_results_total" in e for e in exprs)
    assert any("by (rule, decision)" in e for e in exprs)
    assert any("rate(lantau_hsm_failovers_total" in e for e in exprs)


def test_alert_exprs_use_only_catalogued_metrics() -> None:
    known = catalogue()
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    found = [
        f"{r['alert']}: {issue}"
        for g in groups["groups"]
        for r in g["rules"]
        for issue in problems(r["expr"], known)
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("expr", "issue"),
    [
        ("rate(lantau_results[5m])", "lantau_results is not exported"),
        ("lantau_hsm_node_up_total", "lantau_hsm_node_up_total is not exported"),
        ('lantau_request_duration_seconds_bucket{le="0.25"}', "has no bucket le='0.25'"),
        ('lantau_results_total{outcom="signed"}', "has no label 'outcom'"),
        ("sum by (stage) (rate(lantau_results_total[5m]))", "grouping label 'stage'"),
        ('{__name__="lantau_nope"}', "lantau_nope is not exported"),
    ],
)
def test_the_checker_catches(expr: str, issue: str) -> None:
    assert any(issue in p for p in problems(expr)), problems(expr)


def test_the_checker_accepts() -> None:
    ok = (
        "histogram_quantile(0.999, sum by (le) ("
        'rate(lantau_request_duration_seconds_bucket{kind="sign"}[$__rate_interval])))'
        " / on (job) group_left () max by (job) (up) "
        "unless lantau_dead_letters_total offset 10m > 1e-3"
    )
    assert problems(ok) == []


def test_grafana_provisioning() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/lantau.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    # The provider reads the directory docker-compose.yml mounts the dashboards on.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
