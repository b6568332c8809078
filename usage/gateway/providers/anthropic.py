"""Anthropic Messages upstreams (api.anthropic.com and proxies that speak the Messages wire format).

Auth is `x-api-key`; `anthropic-version` and `anthropic-beta` are the client's to choose (the
version defaults to the one every SDK sends). Usage comes beside, not inside, the input count:
`input_tokens` already exclude cache reads (`cache_read_input_tokens`) and cache writes
(`cache_creation_input_tokens`), which is TokenUsage's own convention, so nothing is subtracted.
A stream reports input and cache counts in `message_start` and the final output count in
`message_delta` (newer API versions repeat the input and cache counts there too).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from billing.money import TokenUsage
from openbili.core.errors import (
    InvalidRequest,
    OpenbiliError,
    RateLimited,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from usage.gateway.errors import retry_after_seconds
from usage.gateway.providers.base import (
    BlankLineReader,
    Event,
    Provider,
    Reply,
    UpstreamCall,
    UpstreamFailure,
    sse_fields,
)

API_VERSION = "2023-06-01"  # what the official SDKs send; a client's own header wins
MESSAGE_LIMIT = 300  # upstream messages shown to customers are shortened to this many characters
_JSON_SEPARATORS = (",", ":")
# An upstream message never carries our secret in practice; this is the belt to that braces.
_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_\-]{6,}")
# Event names as they arrive on the wire, decoded once.
_NAMES = {
    name.encode(): name
    for name in (
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    )
}
_DELTA_TEXT = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


# --------------------------------------------------------------------------------------------------
# Usage
# --------------------------------------------------------------------------------------------------


def _count(value: Any) -> int:
    """A token count from the wire: null, absent, negative or not a number counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(int(value), 0)


def usage_from_anthropic(usage: dict | None) -> TokenUsage | None:
    """Messages `usage` → TokenUsage (None when there is no usage object).

    input_tokens are already uncached (Anthropic counts cache reads and writes beside them).
    Cache writes: `cache_creation_input_tokens`; when only the newer per-TTL breakdown
    (`cache_creation: {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}`) is there, its sum
    (the flat field is that sum when both are sent, so they are never added together).
    Reasoning: thinking tokens are billed inside output_tokens and Anthropic does not split them
    out, except in the optional `output_tokens_details.thinking_tokens` of newer API versions,
    which is taken for information when present (0 otherwise).
    """
    if not isinstance(usage, dict):
        return None
    cache_write = usage.get("cache_creation_input_tokens")
    if cache_write is None:
        breakdown = usage.get("cache_creation")
        if isinstance(breakdown, dict):
            cache_write = _count(breakdown.get("ephemeral_5m_input_tokens")) + _count(
                breakdown.get("ephemeral_1h_input_tokens")
            )
    details = usage.get("output_tokens_details")
    return TokenUsage(
        input_tokens=_count(usage.get("input_tokens")),
        output_tokens=_count(usage.get("output_tokens")),
        cached_input_tokens=_count(usage.get("cache_read_input_tokens")),
        cache_write_tokens=_count(cache_write),
        reasoning_tokens=_count(details.get("thinking_tokens")) if isinstance(details, dict) else 0,
    )


def _utf8_len(text: str) -> int:
    # surrogatepass: a lone surrogate (valid in JSON's \u escapes) must not raise on the hot path.
    return len(text.encode("utf-8", "surrogatepass"))


def _block_bytes(block: Any) -> int:
    """UTF-8 bytes of the output in a complete content block (a reply's, or a stream's block start)."""
    if not isinstance(block, dict):
        return 0
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return _utf8_len(block["text"])
    if kind == "thinking" and isinstance(block.get("thinking"), str):
        return _utf8_len(block["thinking"])
    if kind in ("tool_use", "server_tool_use"):
        size = _utf8_len(block["name"]) if isinstance(block.get("name"), str) else 0
        tool_input = block.get("input")
        if tool_input:  # a stream's block start carries `{}`: its input arrives as deltas
            size += _utf8_len(json.dumps(tool_input, ensure_ascii=False))
        return size
    return 0


# --------------------------------------------------------------------------------------------------
# Stream
# --------------------------------------------------------------------------------------------------


class AnthropicReader(BlankLineReader):
    """Cuts a Messages SSE stream into events and keeps score (see StreamReader).

    Anthropic has no usage-only event, so `hidden` is never set: every event is forwarded.
    """

    def __init__(self) -> None:
        super().__init__()
        self._usage: dict[str, Any] = {}  # the raw usage so far: message_start's, updated by each message_delta

    def _event(self, raw: bytes) -> Event:
        name_bytes, payload = sse_fields(raw)
        name = _NAMES.get(name_bytes) or name_bytes.decode("utf-8", "replace")
        data: dict | None = None
        if payload is not None:
            try:
                parsed = json.loads(payload)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                data = parsed
        kind = name or (str(data.get("type")) if data is not None else "")
        event = Event(raw=raw, data=data, name=name)
        if kind == "content_block_delta":
            self.output_events += 1
            delta = data.get("delta") if data is not None else None
            if isinstance(delta, dict):
                text = delta.get(_DELTA_TEXT.get(str(delta.get("type")), ""))
                if isinstance(text, str):
                    self.output_chars += _utf8_len(text)
        elif kind == "content_block_start":
            size = _block_bytes(data.get("content_block")) if data is not None else 0
            if size:  # a tool_use's name (or any text a block starts with) is generated output
                self.output_events += 1
                self.output_chars += size
        elif kind == "message_start":
            message = data.get("message") if data is not None else None
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                # Input and cache counts only: `self.usage` waits for message_delta, because
                # message_start's output_tokens (1) is no count of a stream cut later on. Without
                # a message_delta, the lifecycle estimates the output from output_chars.
                self._usage = dict(usage)
                reported = usage_from_anthropic(usage)
                if reported is not None:
                    self.input_usage = replace(reported, output_tokens=0)
        elif kind == "message_delta":
            usage = data.get("usage") if data is not None else None
            if isinstance(usage, dict):
                # Cumulative counts: output_tokens always; newer API versions repeat the input and
                # cache counts, which then replace message_start's.
                self._usage.update((key, value) for key, value in usage.items() if value is not None)
                self.usage = usage_from_anthropic(self._usage)
        elif kind == "message_stop":
            event.final = True
            self.completed = True
        elif kind == "error":
            message, _ = _error_message(data)
            self.upstream_error = UpstreamError(
                message or "The upstream provider interrupted the stream.", code="upstream_stream_interrupted"
            )
        return event


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def _shorten(message: str) -> str:
    return _KEY_LIKE.sub("sk-***", message[:MESSAGE_LIMIT])


def _error_message(data: Any) -> tuple[str, str]:
    """(message, error type) of an Anthropic error body `{"type": "error", "error": {...}}`."""
    if not isinstance(data, dict):
        return "", ""
    error = data.get("error")
    if isinstance(error, dict):
        message, kind = error.get("message"), error.get("type")
        return (_shorten(message) if isinstance(message, str) else ""), (kind if isinstance(kind, str) else "")
    return (_shorten(error) if isinstance(error, str) else ""), ""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's headers are case-insensitive; a plain dict may come with either spelling.
    value = headers.get(name)
    return value if value is not None else headers.get(name.title())


# --------------------------------------------------------------------------------------------------
# The provider
# --------------------------------------------------------------------------------------------------


def _api_root(base_url: str) -> str:
    """The `/v1` root of a route's base URL: "https://api.anthropic.com" or ".../v1" alike."""
    root = base_url.rstrip("/")
    return root if root.endswith("/v1") else root + "/v1"


def _header_text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _headers(secret: str, client_headers: Mapping[str, bytes]) -> dict[str, str]:
    version = client_headers.get("anthropic-version")
    headers = {
        "content-type": "application/json",
        "anthropic-version": _header_text(version) if version else API_VERSION,
    }
    beta = client_headers.get("anthropic-beta")
    if beta:
        headers["anthropic-beta"] = _header_text(beta)
    if secret:
        headers["x-api-key"] = secret
    return headers


def _encode(body: dict) -> bytes:
    # ensure_ascii (the default) keeps a lone surrogate from a client's JSON encodable.
    return json.dumps(body, separators=_JSON_SEPARATORS).encode()


class AnthropicProvider(Provider):
    name = "anthropic"
    wire = "messages"

    def call(self, body: dict, *, route, stream: bool, client_headers: Mapping[str, bytes]) -> UpstreamCall:
        body["model"] = route.upstream_model
        if stream:
            body["stream"] = True
        elif "stream" in body:
            body["stream"] = False
        return UpstreamCall(
            "POST",
            _api_root(route.base_url) + "/messages",
            _headers(route.secret, client_headers),
            _encode(body),
        )

    def reply(self, raw: bytes) -> Reply:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise UpstreamError("the upstream returned a malformed response") from exc
        if not isinstance(data, dict):
            return Reply(data=None, usage=None)
        content = data.get("content")
        output = sum(_block_bytes(block) for block in content) if isinstance(content, list) else 0
        return Reply(data=data, usage=usage_from_anthropic(data.get("usage")), output_bytes=output)

    def reader(self) -> AnthropicReader:
        return AnthropicReader()

    def failure(self, *, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        message, kind = _error_message(data)
        usage = usage_from_anthropic(data.get("usage")) if isinstance(data, dict) else None
        error: OpenbiliError
        retryable = False
        if status == 429:
            error = RateLimited(
                "The upstream provider is rate limiting this model: " + (message or "too many requests"),
                code="upstream_rate_limited",
                retry_after=retry_after_seconds(_header(headers, "retry-after")),
            )
        elif status == 529 or kind == "overloaded_error":
            error, retryable = UpstreamUnavailable(f"The upstream provider is overloaded (HTTP {status})."), True
        elif status >= 500:
            retryable = True
            if status == 503:
                error = UpstreamUnavailable(f"The upstream provider is unavailable (HTTP {status}).")
            elif status == 504 or kind == "timeout_error":
                error = UpstreamTimeout(f"The upstream provider timed out (HTTP {status}).")
            else:
                error = UpstreamError(f"The upstream provider failed (HTTP {status}).")
        elif status == 413:
            error = RequestTooLarge(message or None)
        elif status in (400, 422) and kind != "billing_error" and "credit balance" not in message.lower():
            error = InvalidRequest(message or "The upstream provider rejected the request.")
        else:
            # 401/403/404 (and the platform's own upstream credit running out, which Anthropic
            # answers with a 400 or 402) mean the route is misconfigured: not the customer's fault,
            # and retrying the same route does not help.
            error = UpstreamError(f"The upstream provider refused the platform's request (HTTP {status}).")
        return UpstreamFailure(error=error, usage=usage, retryable=retryable)

    def probe_call(self, *, kind: str, upstream_model: str, base_url: str, secret: str) -> UpstreamCall:
        # The Models API (GET /v1/models/{model_id}) costs nothing and proves what a probe must:
        # the key is accepted and the model exists for it. A one-token message cost a real request
        # per route every probe interval.
        headers = {name: value for name, value in _headers(secret, {}).items() if name != "content-type"}
        return UpstreamCall("GET", _api_root(base_url) + "/models/" + quote(upstream_model, safe=""), headers)

    def count_tokens_call(self, body: dict, *, route, client_headers: Mapping[str, bytes]) -> UpstreamCall | None:
        body["model"] = route.upstream_model
        return UpstreamCall(
            "POST",
            _api_root(route.base_url) + "/messages/count_tokens",
            _headers(route.secret, client_headers),
            _encode(body),
        )
