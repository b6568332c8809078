"""Render domain errors (openbili.core.errors) in each client wire format. Views never build error JSON."""

from __future__ import annotations

import json
import math

from openbili.core.errors import OpenbiliError


def openai_error_body(error: OpenbiliError, *, request_id: str, trace_id: str) -> dict:
    return {
        "error": {
            "message": error.message,
            "type": error.openai_type,
            "code": error.code,
            "param": error.param,
            "request_id": request_id,
            "trace_id": trace_id,
        }
    }


ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def anthropic_error_body(error: OpenbiliError, *, request_id: str, trace_id: str) -> dict:
    return {
        "type": "error",
        "error": {"type": ANTHROPIC_TYPES.get(error.status, "api_error"), "message": error.message, "code": error.code},
        "request_id": request_id,
        "trace_id": trace_id,
    }


def openai_stream_error(error: OpenbiliError, *, request_id: str, trace_id: str) -> bytes:
    body = openai_error_body(error, request_id=request_id, trace_id=trace_id)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


MAX_RETRY_AFTER = 3600  # an upstream's absurd Retry-After (inf, 1e300) is not passed on as is


def retry_after_seconds(value: str | None, default: int = 1) -> int:
    """Whole seconds, rounded up (CONTRACT §2.1), within [1, MAX_RETRY_AFTER]; accepts a number of
    seconds, else (an HTTP date, garbage, nan) the default."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        return default
    if not math.isfinite(seconds):
        return MAX_RETRY_AFTER if seconds > 0 else default
    return min(max(1, math.ceil(seconds)), MAX_RETRY_AFTER)
