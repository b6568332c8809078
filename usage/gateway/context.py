"""What every /v1 request shares, whatever its endpoint: ids and timings (Ctx), the usage row's
starting values, reading the body, authenticating the key and resolving the model. The lifecycle
(lifecycle.py) and the endpoints (endpoints/) build on this; it imports neither.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from datetime import UTC, datetime

from openbili.core.errors import (
    InvalidApiKey,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    ModelNotReady,
    OpenbiliError,
    RequestTimeout,
    RequestTooLarge,
)
from usage.gateway import ids
from usage.gateway.state import GatewayState, KeyInfo, ModelInfo

log = logging.getLogger("openbili.gateway")

MAX_BODY_BYTES = int(os.environ.get("OPENBILI_MAX_BODY_BYTES", str(32 * 1024 * 1024)))
# A client that stops sending its body for this long is answered 408 and let go (it held a
# connection and a coroutine forever before).
BODY_IDLE_SECONDS = float(os.environ.get("OPENBILI_BODY_IDLE_SECONDS", "30"))
JSON = b"application/json"


def now_utc() -> datetime:
    return datetime.now(UTC)


class NotFoundUrl(OpenbiliError):
    status = 404
    code = "unknown_url"
    error_class = "invalid_request"
    openai_type = "invalid_request_error"


class MethodNotAllowed(OpenbiliError):
    status = 405
    code = "method_not_allowed"
    error_class = "invalid_request"
    openai_type = "invalid_request_error"


class Ctx:
    """One client request: ids, timings and the usage row's fields as they become known."""

    __slots__ = (
        "attempts",
        "disconnected_at",
        "endpoint",
        "error",
        "first_byte",
        "headers",
        "key",
        "label",
        "request_id",
        "row",
        "row_written",
        "scope",
        "spans",
        "started_at",
        "status",
        "t0",
        "trace_id",
        "upstream_seconds",
    )  # fmt: skip

    def __init__(self, scope: dict) -> None:
        self.headers = {name.decode("latin-1"): value for name, value in scope["headers"]}
        self.started_at = now_utc()
        self.request_id = ids.request_id(self.started_at)  # carries started_at: the usage table's key (ids.py)
        self.trace_id = trace_id_from(self.headers.get("traceparent"))
        self.endpoint = db_text(scope["path"], 64)
        self.scope = scope  # the ASGI scope, for what few need beyond the headers (an image URL's host)
        self.key: KeyInfo | None = None
        self.row: dict | None = None
        self.row_written = False
        self.disconnected_at: datetime | None = None
        # For the request's metrics and log line (observe.py): its endpoint as a metric label (a
        # known path, never the client's), the status sent, the error it was refused with, the
        # upstream attempts, the time spent waiting on upstreams and when the first body byte left.
        self.t0 = time.monotonic()
        self.label = "other"
        self.status = 0
        self.error: OpenbiliError | None = None
        self.attempts: list[dict] = []
        self.upstream_seconds = 0.0
        self.first_byte: float | None = None
        self.spans: list[tuple[float, float]] = []  # each attempt's (start, end), when tracing is on

    @property
    def response_started(self) -> bool:
        """Whether the answer's status line has gone (its status is set where it is sent)."""
        return self.status != 0

    def id_headers(self) -> list[tuple[bytes, bytes]]:
        request_id = self.request_id.encode()
        headers = [(b"x-request-id", request_id), (b"x-trace-id", self.trace_id.encode())]
        if self.endpoint.startswith("/v1/messages"):
            # The Anthropic SDK reads `request-id` (Anthropic's own header) into `.request_id`.
            headers.append((b"request-id", request_id))
        return headers

    def new_row(self, *, model: str = "", stream: bool = False) -> dict:
        """The usage row with every column at its starting value (see sql.COLUMNS)."""
        key = self.key
        assert key is not None
        self.row = {
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "account_id": key.account_id,
            "api_key_id": key.id,
            "key_prefix": key.prefix,
            "endpoint": self.endpoint,
            "model_requested": db_text(model, 100),
            "route_id": None,
            "provider": "",
            "upstream_model": "",
            "stream": stream,
            "status": None,
            "error_class": "",
            "error_code": "",
            "error_message": "",
            "input_tokens": 0,
            "output_tokens": 0,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "image_count": 0,
            "tokens_estimated": False,
            "max_tokens_requested": None,
            "max_tokens_applied": None,
            "cost_usd": 0,
            "uncharged_usd": 0,
            "billing_result": "pending",
            "price_snapshot_id": None,
            "output_reached_client": False,
            "client_disconnected_at": None,
            "started_at": self.started_at,
            "first_byte_at": None,
            "finished_at": None,
            "attempts": "[]",
            "user_agent": self.headers.get("user-agent", b"").decode("latin-1")[:200],
            "response_id": "",
        }
        return self.row


def db_text(value: str, limit: int) -> str:
    """Client text for a usage row, which must be written: PostgreSQL text holds neither NUL nor a
    lone surrogate (JSON's "\\ud800"); both become U+FFFD."""
    value = value[:limit].replace("\x00", "\ufffd")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def trace_id_from(traceparent: bytes | None) -> str:
    """Honour a W3C traceparent (`00-<32 hex trace id>-<16 hex>-<2 hex>`), else start a trace."""
    if traceparent:
        parts = traceparent.decode("latin-1").strip().split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
            try:
                int(parts[1], 16)
                return "trace_" + parts[1].lower()
            except ValueError:
                pass
    return "trace_" + secrets.token_hex(16)


# --- responses -----------------------------------------------------------------------------------


async def send_bytes(
    send,
    ctx: Ctx,
    status: int,
    body: bytes,
    *,
    content_type: bytes = JSON,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *ctx.id_headers()]
    if extra:
        headers.extend(extra)
    ctx.status = status
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_headers(ctx: Ctx, error: OpenbiliError) -> list[tuple[bytes, bytes]]:
    """429s carry Retry-After and OpenAI's x-ratelimit-* triples (CONTRACT §2.1); a 503 of the
    platform's own says when to come back (the SDKs honour it when they retry)."""
    if error.status == 503 and error.retry_after:
        return [(b"retry-after", str(error.retry_after).encode())]
    if error.status != 429:
        return []
    retry_after = error.retry_after or 1
    limits = getattr(error, "limits", {})
    key = ctx.key
    headers = [(b"retry-after", str(retry_after).encode())]
    for what, configured in (("requests", key.rpm_limit if key else None), ("tokens", key.tpm_limit if key else None)):
        limit, remaining, reset = limits.get(what, (configured or 0, 0, retry_after))
        headers += [
            (b"x-ratelimit-limit-" + what.encode(), str(limit).encode()),
            (b"x-ratelimit-remaining-" + what.encode(), str(remaining).encode()),
            (b"x-ratelimit-reset-" + what.encode(), f"{reset}s".encode()),
        ]
    return headers


async def send_error(send, ctx: Ctx, error: OpenbiliError, body: bytes) -> None:
    """An error answer; `body` is the error in the endpoint's own format."""
    await send_bytes(send, ctx, error.status, body, extra=error_headers(ctx, error))


# --- the pieces every endpoint shares -------------------------------------------------------------


def presented_key(ctx: Ctx) -> str:
    auth = ctx.headers.get("authorization")
    if auth:
        scheme, _, token = auth.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
        return ""
    api_key = ctx.headers.get("x-api-key")
    return api_key.decode("latin-1").strip() if api_key else ""


async def authenticate(state: GatewayState, ctx: Ctx) -> KeyInfo:
    """The key behind the request. A known but unusable key still gets a usage row (CONTRACT §3)."""
    key = await state.key(presented_key(ctx))
    if key is None:
        raise InvalidApiKey()
    ctx.key = key
    if not key.usable(ctx.started_at):
        raise InvalidApiKey("This API key is disabled or expired.")
    return key


def declared_length(ctx: Ctx) -> int | None:
    """The body's Content-Length (None: chunked, or no body). The HTTP parser enforces it."""
    declared = ctx.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


async def read_body(ctx: Ctx, receive, limit: int | None = None) -> bytes:
    """The whole body, at most `limit` bytes (None: OPENBILI_MAX_BODY_BYTES), else 413."""
    limit = limit or MAX_BODY_BYTES
    declared = declared_length(ctx)
    if declared is not None and declared > limit:
        raise RequestTooLarge(f"The request body exceeds {limit} bytes.")
    chunks = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(BODY_IDLE_SECONDS):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout(f"No request body arrived for {BODY_IDLE_SECONDS:g} seconds.") from None
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"The request body exceeds {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


class ClientGone(Exception):
    """The client went away before we answered."""


# Deeper JSON than any real request (tool schemas nest a few dozen levels at most). Past ~970
# levels the parser still succeeds but re-encoding the body for the upstream (json.dumps)
# recurses too deep, after the reserve: such a body is refused before anything is held.
MAX_JSON_DEPTH = int(os.environ.get("OPENBILI_MAX_JSON_DEPTH", "128"))
# More JSON values (array items, object members, the root) than any real request carries: a
# long agent session is a few tens of thousands (its messages, content blocks and tool schemas);
# the tokens a model can read bound them too, since each value costs at least a token. Parsing
# costs per value, not per byte: 32 MiB of `{},{},…` is 11 million dicts, ~0.9 GB and seconds
# of event loop; 200,000 values cost at most ~30 MB and ~0.1 s to build, whatever their shape.
MAX_JSON_VALUES = int(os.environ.get("OPENBILI_MAX_JSON_VALUES", "200000"))
# What json_values_over keeps of a body: the quotes, and the bytes that start a value outside one.
_NOT_VALUE_MARKS = bytes(sorted(set(range(256)) - set(b'",[{')))
_SCAN_CHUNK = 1 << 20


def json_values_over(body: bytes, limit: int) -> bool:
    """Whether json.loads would build more than `limit` values from `body`, told before it builds
    any, by C-speed passes over the bytes (tens of milliseconds for 32 MiB of text or base64, a
    millisecond or two for a body of countless values: the count stops at the first MiB over the
    limit).

    Every value but the root starts after a `,`, `[` or `{` outside a string, so these count it
    from above; a prefix that json.loads parses before failing is valid JSON, counted the same. In
    UTF-8 no byte of a multi-byte character is ASCII, so the bytes scanned are the characters.
    """
    encoding = json.detect_encoding(body)
    if not encoding.startswith("utf-8"):  # JSON in UTF-16 or UTF-32: scan it as UTF-8
        try:
            body = body.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")
        except UnicodeError:
            return False  # json.loads fails on decoding it too, before it builds anything
    outside, in_string, start = 0, 0, 0
    while start < len(body):  # a MiB at a time: few pieces alive at once, and an early answer
        end = start + _SCAN_CHUNK
        while end < len(body) and body[end - 1] == 0x5C:  # never between a backslash and what it escapes
            end += 1
        chunk, start = body[start:end], end
        if b"\\" in chunk:
            # Escapes go first, pair by pair from the left as the parser reads them (so that `\\"`
            # ends a string and `\"` does not).
            chunk = chunk.replace(b"\\\\", b"").replace(b'\\"', b"")
        # Of the rest only quotes and value marks are kept, adjacent quotes dropped two at a time
        # (every byte stays inside or outside a string as it was). No two quotes are then left
        # adjacent, so a mark outside a string lies between any two strings: the pieces split
        # are about twice the values counted.
        pieces = chunk.translate(None, _NOT_VALUE_MARKS).replace(b'""', b"").split(b'"')
        outside += sum(map(len, pieces[in_string::2]))  # pieces alternate outside, inside, outside…
        in_string ^= (len(pieces) - 1) & 1
        if outside >= limit:  # the root plus `outside` values: more than `limit`
            return True
    return False


def _not_json(constant: str) -> None:
    """NaN and ±Infinity: Python's parser takes them, JSON does not, and an upstream would refuse
    the body we forward (or worse, read it differently)."""
    raise ValueError(f"{constant} is not JSON")


def parse_json_object(body: bytes) -> dict:
    # On the event loop, deliberately: the C parser never lets go of the GIL, so a worker thread
    # stalls the loop just as long, unless an object hook hands the interpreter back after each
    # object, which made matters worse (body.py has the figures). Bounding the work is the fix.
    # Counting is free below `MAX_JSON_VALUES` bytes: a value takes at least a byte.
    if len(body) >= MAX_JSON_VALUES and json_values_over(body, MAX_JSON_VALUES):
        raise InvalidRequest(f"The request body holds more than {MAX_JSON_VALUES} JSON values.", code="invalid_json")
    try:
        data = json.loads(body, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    # Counting brackets is a C loop over the bytes; only a body with that many brackets can be
    # that deep, so the walk below never runs for ordinary requests.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and json_depth(data) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json")
    return data


def json_depth(data: object) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest = 0
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((item, depth + 1) for item in value if isinstance(item, dict | list))
    return deepest


def resolve_model(catalog: dict[str, ModelInfo], key: KeyInfo, name: str) -> ModelInfo:
    model = catalog.get(name)
    if model is None:
        raise ModelNotFound(f"The model '{name[:100]}' does not exist.", param="model")
    if not key.allows(name):
        raise ModelNotAllowed(f"This API key may not use the model '{name}'.", param="model")
    if not model.visible:
        raise ModelNotReady(f"The model '{name}' is not available right now.", param="model")
    return model


async def write_rejection(state: GatewayState, ctx: Ctx, error: OpenbiliError) -> None:
    """The one usage row of a request refused before anything billable happened."""
    row = ctx.row or ctx.new_row()
    row.update(
        status=error.status,
        error_class=error.error_class,
        error_code=error.code,
        error_message=db_text(error.message, 500),
        billing_result="not_billed",
        cost_usd=0,
        finished_at=now_utc(),
    )
    await state.write_row(row)  # deferred to the outbox while the database is away
    ctx.row_written = True


async def execute(state: GatewayState, statement: str, params: dict) -> tuple | None:
    assert state.pool is not None
    async with state.pool.connection() as conn:
        cursor = await conn.execute(statement, params)
        return await cursor.fetchone() if cursor.description else None


def dumps(data: object) -> bytes:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate (valid in JSON's \u escapes) from the client: escaped
        return json.dumps(data, separators=(",", ":")).encode()
