"""Optional OpenTelemetry traces (issue 15, Deliver 3): off by default; when on, one server span per
request under the client's traceparent, with the request's trace id, and a client span per
upstream attempt."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from openbili.ops import tracing

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    tracing.setup(exporter)
    yield exporter
    tracing.disable()


def chat(gateway, **headers):
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "trace me"}]}
    return gateway.post("/v1/chat/completions", json=body, headers=headers)


def test_off_by_default(gateway):
    code = "import django; django.setup(); import openbili.asgi; print(openbili.ops.tracing.ENABLED)"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "openbili.settings"}
    env.pop("OPENBILI_OTEL_ENABLED", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False"], result.stderr[-2000:]
    # In this process too: a request makes no tracer.
    assert chat(gateway).status_code == 200
    assert tracing._tracer is None


def finished_spans(exporter, count: int) -> list:
    """The spans, once the request has made them: after its last byte, so after the client has it."""
    deadline = time.monotonic() + 5
    while len(exporter.get_finished_spans()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(exporter.get_finished_spans())


def test_a_request_is_a_server_span_under_the_clients_traceparent(gateway, spans):
    gateway.upstream.script(status=500)  # one failed attempt, then the retry
    response = chat(gateway, traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
    assert response.status_code == 200
    finished = finished_spans(spans, 3)
    server = [s for s in finished if s.kind == SpanKind.SERVER]
    assert len(server) == 1
    span = server[0]
    assert f"{span.context.trace_id:032x}" == CLIENT_TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == CLIENT_SPAN and span.parent.is_remote
    assert span.name == "POST /v1/chat/completions"
    assert span.attributes["openbili.request_id"] == response.headers["x-request-id"]
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["gen_ai.request.model"] == "gpt-5"
    assert span.attributes["openbili.account_id"] == gateway.account.pk
    attempts = sorted((s for s in finished if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)
    assert [s.attributes["openbili.attempt"] for s in attempts] == [1, 2]
    assert (
        attempts[0].status.status_code == StatusCode.ERROR
        and attempts[0].attributes["http.response.status_code"] == 500
    )
    for attempt in attempts:
        assert attempt.parent.span_id == span.context.span_id
        assert span.start_time <= attempt.start_time <= attempt.end_time <= span.end_time
    assert attempts[0].end_time <= attempts[1].start_time


def test_without_a_traceparent_the_trace_id_is_the_requests_own(gateway, spans):
    response = chat(gateway)
    (span,) = [s for s in finished_spans(spans, 2) if s.kind == SpanKind.SERVER]
    assert "trace_" + f"{span.context.trace_id:032x}" == response.headers["x-trace-id"]
    assert span.parent is None


def test_a_refused_request_is_an_error_span(gateway, spans):
    response = gateway.post("/v1/chat/completions", key="sk-not-a-key", json={"model": "gpt-5"})
    assert response.status_code == 401
    (span,) = finished_spans(spans, 1)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "invalid_api_key"
