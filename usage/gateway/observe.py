"""The end of every /v1 request: its metrics, its one log line and (when enabled) its trace.

Called once per request by the router (app.py) after the answer's last byte, from what the
request left on its Ctx: the usage row (when it presented a known key), the status sent, the
upstream attempts and timings. Nothing here may raise into the request, nor hold what no log may
hold: the line carries the key's prefix (never its secret or hash), the requested model and the
route, never the prompt, the answer or an upstream's error text (the row's error_message, which
can quote the client's input).
"""

from __future__ import annotations

import logging
import time

from openbili.ops import tracing
from openbili.ops.logs import ACCESS
from openbili.ops.metrics import ADDED, ATTEMPTS, FIRST_BYTE, REQUESTS, RETRIES, TALLY, UPSTREAM
from usage.gateway.context import Ctx
from usage.gateway.state import GatewayState

log = logging.getLogger("openbili.gateway")
IMAGE_FILES_LABEL = "/v1/images/files/{file}"  # app.py's label for /v1/images/files/<token>
access = logging.getLogger(ACCESS)


def finished(state: GatewayState, ctx: Ctx) -> None:
    try:
        _finished(state, ctx)
    except Exception:  # a bug here must cost the request nothing
        log.exception("request_id=%s recording the request's metrics failed", ctx.request_id)


def _finished(state: GatewayState, ctx: Ctx) -> None:
    end = time.monotonic()
    total = end - ctx.t0
    upstream = ctx.upstream_seconds
    row, error = ctx.row, ctx.error
    if row is not None:
        status = row["status"] or ctx.status
        error_class, error_code = row["error_class"], row["error_code"]
        model, provider, stream = row["model_requested"], row["provider"], row["stream"]
    else:  # no known key: no row
        status = ctx.status
        error_class = error.error_class if error is not None else ""
        error_code = error.code if error is not None else ""
        model, provider, stream = "", "", False
    label = ctx.label
    ttfb = None
    if status == 200 and ctx.response_started:
        ttfb = (ctx.first_byte or end) - ctx.t0  # a whole answer's body leaves as the request ends
    # A model label only for a catalog model: a client's made-up names must not grow the series.
    TALLY.count(REQUESTS, (label, model if state.knows_model(model) else "unknown", status, error_class))
    TALLY.observe(ADDED, (label,), max(total - upstream, 0.0))
    if ctx.attempts:
        TALLY.observe(UPSTREAM, (label, provider), upstream)
        for attempt in ctx.attempts:
            route = attempt["route_id"]
            TALLY.count(ATTEMPTS, (route, attempt["provider"], attempt["error"] or "ok"))
            if attempt["attempt"] > 1:
                TALLY.count(RETRIES, (route, attempt["provider"]))
    if ttfb is not None:
        TALLY.observe(FIRST_BYTE, (label, "true" if stream else "false"), ttfb)
    if access.isEnabledFor(logging.INFO):
        access.info(
            "%s %s %s",
            ctx.scope["method"][:20],
            logged_path(ctx),
            status,
            extra={"fields": line(ctx, status, error_class, error_code, total, upstream, ttfb)},
        )
    if tracing.ENABLED:
        tracing.request_span(ctx, status, error_code, end)


def logged_path(ctx: Ctx) -> str:
    """The path, but a stored image's URL is its own capability (no key needed): never logged."""
    return ctx.label if ctx.label == IMAGE_FILES_LABEL else ctx.endpoint


def line(
    ctx: Ctx, status: int, error_class: str, error_code: str, total: float, upstream: float, ttfb: float | None
) -> dict:
    fields: dict = {"request_id": ctx.request_id, "trace_id": ctx.trace_id, "endpoint": logged_path(ctx)}
    row = ctx.row
    if row is not None:
        fields |= {
            "account_id": row["account_id"],
            "key_prefix": row["key_prefix"],
            "model": row["model_requested"],
            "route_id": row["route_id"],
            "provider": row["provider"],
            "upstream_model": row["upstream_model"],
            "stream": row["stream"],
        }
    fields |= {"status": status, "error_class": error_class, "error_code": error_code}
    if row is not None:
        fields |= {
            "billing_result": row["billing_result"],
            "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
            "cached_input_tokens": row["cached_input_tokens"],
            "cache_write_tokens": row["cache_write_tokens"],
            "reasoning_tokens": row["reasoning_tokens"],
            "images": row["image_count"],
            "cost_usd": str(row["cost_usd"]),
            "client_disconnected": row["client_disconnected_at"] is not None,
        }
    fields |= {
        "ms": round(total * 1000, 2),
        "gateway_ms": round(max(total - upstream, 0.0) * 1000, 2),
        "upstream_ms": round(upstream * 1000, 2),
        "ttfb_ms": None if ttfb is None else round(ttfb * 1000, 2),
        "attempts": ctx.attempts,
    }
    return fields
