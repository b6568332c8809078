"""Optional OpenTelemetry traces of /v1 requests (OPENBILI_OTEL_ENABLED=1; off by default, and then
nothing of OpenTelemetry is even imported).

One server span per request, with a client span per upstream attempt under it, exported by the
SDK's batch processor (a thread of its own, off the event loop) to the OTLP/HTTP endpoint of the
standard OTEL_EXPORTER_OTLP_* settings (`pip install openbili[otel]`). The spans are made when the
request has ended, from the times it recorded, so a request pays for tracing only when tracing is
on, and never waits on the exporter.

The span's trace id is the request's `trace_id` (usage row, log line, error body): the client's
own when it sent a W3C `traceparent`, whose span then is the server span's parent; ours
otherwise. Searching a trace by the id a customer quotes finds it.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

ENABLED = os.environ.get("OPENBILI_OTEL_ENABLED", "").strip().lower() in ("1", "true", "yes", "on")

_tracer: Any = None
_next_trace_id = 0  # the id the generator hands the next root span (see _TraceIds)


def setup(exporter=None) -> None:
    """The tracer provider; `exporter` replaces the OTLP one (tests: an in-memory exporter)."""
    global _tracer, ENABLED
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.id_generator import IdGenerator
    except ImportError as exc:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("OPENBILI_OTEL_ENABLED needs `pip install openbili[otel]`") from exc

    class TraceIds(IdGenerator):
        """Root spans take the request's trace id; span ids are random."""

        def generate_span_id(self) -> int:
            return secrets.randbits(64) or 1

        def generate_trace_id(self) -> int:
            return _next_trace_id or secrets.randbits(128) or 1

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "openbili-gateway")})
    provider = TracerProvider(resource=resource, id_generator=TraceIds())
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _tracer = provider.get_tracer("openbili.gateway")
    ENABLED = True


def disable() -> None:
    global _tracer, ENABLED
    _tracer, ENABLED = None, False


def request_span(ctx, status: int, error_code: str, end: float) -> None:
    """The request's spans, from its Ctx (usage/gateway/context.py); `end` on its monotonic clock."""
    global _next_trace_id
    if _tracer is None:
        setup()
    from opentelemetry import trace
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    started_ns = int(ctx.started_at.timestamp() * 1e9)

    def wall(monotonic: float) -> int:  # a time of the request's monotonic clock, as the SDK wants it
        return started_ns + int((monotonic - ctx.t0) * 1e9)

    parent = None
    trace_hex = ctx.trace_id.removeprefix("trace_")
    span_hex = _parent_span(ctx.headers.get("traceparent"), trace_hex)
    if span_hex:
        remote = SpanContext(int(trace_hex, 16), int(span_hex, 16), is_remote=True, trace_flags=TraceFlags(1))
        parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    _next_trace_id = int(trace_hex, 16)
    try:
        span = _tracer.start_span(
            f"{ctx.scope['method'][:20]} {ctx.label}", context=parent, kind=SpanKind.SERVER, start_time=started_ns
        )
    finally:
        _next_trace_id = 0
    row = ctx.row
    span.set_attribute("http.request.method", ctx.scope["method"][:20])
    span.set_attribute("url.path", ctx.endpoint)
    span.set_attribute("http.response.status_code", status)
    span.set_attribute("openbili.request_id", ctx.request_id)
    if row is not None:
        span.set_attribute("openbili.account_id", row["account_id"])
        span.set_attribute("openbili.key_prefix", row["key_prefix"])
        span.set_attribute("openbili.billing_result", row["billing_result"])
        span.set_attribute("openbili.cost_usd", str(row["cost_usd"]))
        span.set_attribute("gen_ai.request.model", row["model_requested"])
        span.set_attribute("gen_ai.usage.input_tokens", row["input_tokens"] + row["cached_input_tokens"])
        span.set_attribute("gen_ai.usage.output_tokens", row["output_tokens"])
    if error_code:
        span.set_attribute("error.type", error_code)
    if status >= 500 or (error_code and status >= 400):
        span.set_status(Status(StatusCode.ERROR, error_code))
    inside = trace.set_span_in_context(span)
    for attempt, (began, ended) in zip(ctx.attempts, ctx.spans, strict=False):
        child = _tracer.start_span(
            f"upstream {attempt['provider']}", context=inside, kind=SpanKind.CLIENT, start_time=wall(began)
        )
        child.set_attribute("openbili.route_id", attempt["route_id"])
        child.set_attribute("openbili.attempt", attempt["attempt"])
        child.set_attribute("gen_ai.system", attempt["provider"])
        child.set_attribute("gen_ai.request.model", attempt["upstream_model"])
        if attempt["status"] is not None:
            child.set_attribute("http.response.status_code", attempt["status"])
        if attempt["error"]:
            child.set_attribute("error.type", attempt["error"])
            child.set_status(Status(StatusCode.ERROR, attempt["error"]))
        child.end(end_time=wall(ended))
    span.end(end_time=wall(end))


def _parent_span(traceparent: bytes | None, trace_hex: str) -> str | None:
    """The client's span id, if its traceparent is the one the request's trace id came from."""
    if not traceparent:
        return None
    parts = traceparent.decode("latin-1").strip().split("-")
    if len(parts) != 4 or parts[1].lower() != trace_hex or len(parts[2]) != 16 or parts[2] == "0" * 16:
        return None
    try:
        int(parts[2], 16)
    except ValueError:
        return None
    return parts[2].lower()
