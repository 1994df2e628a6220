"""libs.tracing without an installed provider: the fast path must carry the trace context
exactly as the OpenTelemetry no-op tracer did, so traces still join across processes."""

from __future__ import annotations

import pytest
from opentelemetry import context, propagate, trace

from libs import tracing

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _via_noop_tracer(headers: dict[str, str]) -> dict[str, str]:
    """What span() did before the fast path: the API's no-op tracer."""
    token = context.attach(propagate.extract(dict(headers)))
    try:
        with trace.NoOpTracer().start_as_current_span("x"):
            return tracing.inject({})
    finally:
        context.detach(token)


@pytest.mark.parametrize("headers", [{"traceparent": PARENT}, {"other": "1"}])
def test_fast_path_propagates_like_the_noop_tracer(
    headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "_exporting", lambda: False)
    with tracing.span("handle", parent_headers=headers, request="r1") as s:
        tracing.outcome(s, "ok")  # no-op on a non-recording span, must not raise
        tracing.annotate(key="k")
        inside = tracing.inject({})
    assert inside == _via_noop_tracer(headers)
    if "traceparent" in headers:
        assert inside["traceparent"] == PARENT
    # The parent context is detached afterwards.
    assert "traceparent" not in tracing.inject({})


def test_fast_path_detaches_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_exporting", lambda: False)
    with pytest.raises(RuntimeError), tracing.span("h", parent_headers={"traceparent": PARENT}):
        raise RuntimeError("handler failed")
    assert "traceparent" not in tracing.inject({})


def test_exporting_follows_the_global_provider() -> None:
    provider = trace.get_tracer_provider()
    assert tracing._exporting() is not isinstance(provider, trace.ProxyTracerProvider)


def test_a_service_without_an_exporter_decides_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """``setup`` with no exporter configured settles the question for the process: the
    per-message check no longer reads the environment through the global provider."""
    monkeypatch.setattr(tracing, "_decided", None)
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    tracing.setup("test")

    def asked() -> trace.TracerProvider:
        raise AssertionError("asked the global provider per message")

    monkeypatch.setattr(trace, "get_tracer_provider", asked)
    assert tracing._exporting() is False
    with tracing.span("h", parent_headers={"traceparent": PARENT}) as s:
        assert s.get_span_context().trace_id == int(PARENT.split("-")[1], 16)
