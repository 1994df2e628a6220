"""What an SRE sees: every service's metrics after traffic, health and readiness, and one
connected trace from the client through policy, signer and hsm-node."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devkit import demo_policy
from devkit.stack import DevStack
from proto.requests import Transfer
from tests.conftest import _start, connect_client

# Service processes print their spans with the SDK's console exporter, chosen by the
# standard OTEL_* variables; the test process keeps its own in memory.
SERVICE_TRACING = {
    "OTEL_TRACES_EXPORTER": "console",
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "LANTAU__LOGGING__JSON": "true",
}
CLIENT_SPANS = InMemorySpanExporter()


@pytest.fixture(scope="module")
async def traced_platform(tmp_path_factory, requesters) -> AsyncIterator[DevStack]:
    saved = {k: os.environ.get(k) for k in SERVICE_TRACING}
    os.environ.update(SERVICE_TRACING)
    try:
        stack = await _start(tmp_path_factory.mktemp("observed"), requesters, {"nodes": 2})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(CLIENT_SPANS))
    trace.set_tracer_provider(provider)
    try:
        yield stack
    finally:
        await stack.stop()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def series(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}


EXPECTED = {
    "policy": {
        "lantau_policy_decisions_total",
        "lantau_results_total",
        "lantau_approvals_pending",
        "lantau_approvals_oldest_age_seconds",
        "lantau_policy_reloads_total",
        "lantau_messages_total",
        "lantau_consumer_pending_messages",
    },
    "signer": {
        "lantau_results_total",
        "lantau_request_duration_seconds_bucket",
        "lantau_stage_duration_seconds_bucket",
        "lantau_hsm_node_up",
        "lantau_hsm_node_in_flight",
        "lantau_hsm_operation_duration_seconds_bucket",
        "lantau_hsm_circuit_state",
        "lantau_consumer_pending_messages",
    },
    "hsm-1": {
        "lantau_hsm_token_operations_total",
        "lantau_hsm_token_operation_duration_seconds_bucket",
    },
    "backup": {"lantau_keys_under_replicated", "lantau_backup_lag_seconds"},
    "audit": {
        "lantau_audit_head_sequence",
        "lantau_audit_lag_messages",
        "lantau_messages_total",
    },
}


async def test_every_service_exports_its_series_after_traffic(traced_platform, trader_key):
    stack = traced_platform
    async with await connect_client(stack, trader_key) as c:
        assert (await c.create_key("desk-a-obs", "secp256k1")).status == "created"
        for i in range(5):
            result = await c.sign("desk-a-obs", hashlib.sha256(b"%d" % i).digest())
            assert result.status == "signed"
        refused = await c.sign(
            "desk-a-obs",
            hashlib.sha256(b"bad").digest(),
            transfer=Transfer(asset="ETH", amount=1, destination=demo_policy.SANCTIONED),
        )
        assert refused.status == "rejected"
    await asyncio.sleep(1.5)
    for name, wanted in EXPECTED.items():
        text = scrape(stack.url(name, "/metrics"))
        missing = wanted - series(text)
        assert not missing, f"{name} does not export {sorted(missing)}"
        assert scrape(stack.url(name, "/healthz"))
        ready = scrape(stack.url(name, "/readyz"))
        assert "ready" in ready.lower(), ready
    policy = scrape(stack.url("policy", "/metrics"))
    assert re.search(
        r'lantau_policy_decisions_total\{decision="deny",rule="no-sanctioned-destinations"\} 1',
        policy,
    ), policy
    signer = scrape(stack.url("signer", "/metrics"))
    assert re.search(r'lantau_results_total\{code="",outcome="signed",service="signer"\} 5', signer)
    for name in EXPECTED:
        text = scrape(stack.url(name, "/metrics"))
        assert "desk-a-obs" not in text, f"{name}: a key id is a label value (unbounded)"


def _spans(log: Path) -> list[dict]:
    """The JSON span objects the console exporter printed into a service's log."""
    text, spans, decoder, at = log.read_text(), [], json.JSONDecoder(), 0
    while (start := text.find('{\n    "name"', at)) != -1:
        span, at = decoder.raw_decode(text, start)
        spans.append(span)
    return spans


async def test_one_connected_trace_follows_a_request(traced_platform, trader_key):
    stack = traced_platform
    CLIENT_SPANS.clear()
    payload = hashlib.sha256(b"traced").digest()
    async with await connect_client(stack, trader_key) as c:
        await c.create_key("desk-a-traced", "secp256k1")
        CLIENT_SPANS.clear()
        result = await c.sign("desk-a-traced", payload)
    assert result.status == "signed"
    (root,) = [s for s in CLIENT_SPANS.get_finished_spans() if s.name.startswith("lantau ")]
    trace_id = f"0x{root.context.trace_id:032x}"
    await asyncio.sleep(1.5)  # the services' batch processors flush every 100 ms

    found: dict[str, list[dict]] = {}
    for name in ("policy", "signer", "hsm-1", "hsm-2", "audit"):
        spans = [
            s for s in _spans(stack.service(name).log_path) if s["context"]["trace_id"] == trace_id
        ]
        if spans:
            found[name] = spans
    assert {"policy", "signer"} <= set(found), sorted(found)
    assert {"hsm-1", "hsm-2"} & set(found), "no hsm-node span in the trace"

    ids = {f"0x{root.context.span_id:016x}"} | {
        s["context"]["span_id"] for spans in found.values() for s in spans
    }
    for name, spans in found.items():
        for s in spans:
            assert s["parent_id"] in ids, f"{name} span {s['name']} is not connected"
    signer_attrs = [s["attributes"] for s in found["signer"]]
    assert any(a.get("lantau.request_id") == result.request_id for a in signer_attrs)
    assert any(a.get("lantau.key_id") == "desk-a-traced" for a in signer_attrs)
    everything = json.dumps(found)
    assert payload.hex() not in everything and result.signature.hex() not in everything
    pins = [Path(n.pin_file).read_text().strip() for n in stack.config.hsm_nodes]
    assert not any(pin in everything for pin in pins)


async def test_a_real_prometheus_scrapes_the_dev_stack_with_the_alert_rules(traced_platform):
    stack = traced_platform
    url = stack.start_prometheus()
    if url is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    up: dict[str, str] = {}
    for _ in range(100):
        try:
            reply = json.loads(scrape(f"{url}/api/v1/query?query=up"))
            up = {
                r["metric"]["job"] + "@" + r["metric"]["instance"]: r["value"][1]
                for r in reply["data"]["result"]
            }
        except OSError:
            pass
        if len(up) == len(stack.procs.processes) - 1 and set(up.values()) == {"1"}:
            break
        await asyncio.sleep(0.3)
    jobs = {k.split("@")[0] for k in up}
    assert jobs == {
        "lantau-policy",
        "lantau-signer",
        "lantau-hsm-node",
        "lantau-backup",
        "lantau-audit",
        "lantau-console",
    }, up
    assert set(up.values()) == {"1"}, up
    rules = json.loads(scrape(f"{url}/api/v1/rules"))
    names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert {"LantauHsmNodeDown", "LantauAuditLag", "LantauDeadLetters"} <= names


async def test_json_log_lines_about_a_request_carry_its_request_and_trace_ids(
    traced_platform, trader_key
):
    from libs.client import ResultTimeout

    stack = traced_platform
    CLIENT_SPANS.clear()
    async with await connect_client(stack, trader_key) as c:
        await c.create_key("desk-a-logged", "secp256k1")
        CLIENT_SPANS.clear()
        request = c.sign_request(
            "desk-a-logged",
            hashlib.sha256(b"held").digest(),
            transfer=Transfer(asset="ETH", amount=demo_policy.LARGE + 1, destination="0xfeed"),
        )
        with pytest.raises(ResultTimeout):
            await c.send(request, timeout=1.5)  # held for approvers: no result yet
    (span,) = [s for s in CLIENT_SPANS.get_finished_spans() if s.name.startswith("lantau ")]
    trace_id = f"{span.context.trace_id:032x}"
    lines = [
        json.loads(line)
        for line in stack.service("policy").log_path.read_text().splitlines()
        if line.startswith('{"ts"')
    ]
    about = [e for e in lines if e.get("request_id") == request.request_id]
    assert about, "no JSON log line names the held request"
    assert all(e["trace_id"] == trace_id for e in about), about
    assert {"ts", "level", "service", "logger", "msg"} <= set(about[0])
