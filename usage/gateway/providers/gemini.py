"""Gemini API upstreams (generativelanguage.googleapis.com and proxies that speak its wire format):
native `generateContent` and `streamGenerateContent?alt=sse`, auth `x-goog-api-key`.

Chat completions reach it through translate/chat_to_gemini.py; other client formats not yet.

The body is already a Gemini `GenerateContentRequest`; the model is in the URL, not the body.
Usage (`usageMetadata`) counts cached content INSIDE `promptTokenCount` ("When cachedContent is
set, this is still the total effective prompt size meaning this includes the number of tokens in
the cached content", ai.google.dev/api/generate-content#UsageMetadata), so it is subtracted, as
for OpenAI. Tool-use prompt tokens (`toolUsePromptTokenCount`, e.g. grounding results fed back to
the model) are reported beside the prompt and billed as input; thinking (`thoughtsTokenCount`) is
reported beside the candidates and billed as output (ai.google.dev/gemini-api/docs/thinking,
"pricing": output = candidates + thoughts). Per-modality lists (`promptTokensDetails`,
`candidatesTokensDetails`, ...) are breakdowns of those totals, used only when a total is absent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

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

API_VERSION = "v1beta"  # the version the official SDKs call, and the only one with every feature
MESSAGE_LIMIT = 300  # upstream messages shown to customers are shortened to this many characters
_JSON_SEPARATORS = (",", ":")
# Google API keys ("AIza" + 35 characters); an upstream message never carries one in practice.
_KEY_LIKE = re.compile(r"AIza[0-9A-Za-z_\-]{8,}")
_VERSIONED = re.compile(r"/v\d+[a-z0-9]*$")
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
# ErrorInfo reasons that are the platform's key or project, whatever the HTTP status says: Gemini
# answers a wrong API key with 400 INVALID_ARGUMENT (troubleshooting page), not 401.
_PLATFORM_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "SERVICE_DISABLED", "BILLING_DISABLED"})


# --------------------------------------------------------------------------------------------------
# Usage
# --------------------------------------------------------------------------------------------------


def _count(value: Any) -> int:
    """A token count from the wire: null, absent, negative or not a number counts as 0. (proto3
    JSON may also send an int64 as a string.)"""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(int(value), 0)


def _total(usage: dict, field: str, details: str) -> int:
    """The flat count, else the sum of its per-modality breakdown (ModalityTokenCount list)."""
    if usage.get(field) is not None:
        return _count(usage.get(field))
    breakdown = usage.get(details)
    if not isinstance(breakdown, list):
        return 0
    return sum(_count(item.get("tokenCount")) for item in breakdown if isinstance(item, dict))


def _image_tokens(usage: dict) -> int:
    breakdown = usage.get("candidatesTokensDetails")
    if not isinstance(breakdown, list):
        return 0
    return sum(
        _count(item.get("tokenCount"))
        for item in breakdown
        if isinstance(item, dict) and item.get("modality") == "IMAGE"
    )


def usage_from_gemini(usage: dict | None, *, images: int = 0) -> TokenUsage | None:
    """`usageMetadata` → TokenUsage (None when there is no usage object).

    input  = promptTokenCount + toolUsePromptTokenCount − cachedContentTokenCount (never < 0)
    cached = cachedContentTokenCount (implicit or explicit context cache reads)
    output = candidatesTokenCount + thoughtsTokenCount; reasoning = thoughtsTokenCount
    `images` is the number of generated images, counted from the candidates' parts by the caller
    (usageMetadata has image TOKENS, in candidatesTokensDetails, but not an image count).
    """
    if not isinstance(usage, dict):
        return None
    prompt = _total(usage, "promptTokenCount", "promptTokensDetails")
    tool_use = _total(usage, "toolUsePromptTokenCount", "toolUsePromptTokensDetails")
    cached = _total(usage, "cachedContentTokenCount", "cacheTokensDetails")
    # A generated image is billed per image (the catalog's per_image), not as output tokens:
    # its tokens (the IMAGE entry of the candidates' breakdown) leave the output count.
    candidates = max(_total(usage, "candidatesTokenCount", "candidatesTokensDetails") - _image_tokens(usage), 0)
    thoughts = _count(usage.get("thoughtsTokenCount"))
    return TokenUsage(
        input_tokens=max(prompt + tool_use - cached, 0),
        cached_input_tokens=cached,
        output_tokens=candidates + thoughts,
        reasoning_tokens=thoughts,
        images=images,
    )


def _utf8_len(text: str) -> int:
    # surrogatepass: a lone surrogate (valid in JSON's \u escapes) must not raise on the hot path.
    return len(text.encode("utf-8", "surrogatepass"))


def _output(data: dict) -> tuple[int, int]:
    """(UTF-8 bytes of generated text, number of generated images) in a response or stream chunk:
    text parts (thought summaries included), function call names and arguments, inline images."""
    size = images = 0
    for candidate in data.get("candidates") or ():
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                size += _utf8_len(part["text"])
            call = part.get("functionCall")
            if isinstance(call, dict):
                if isinstance(call.get("name"), str):
                    size += _utf8_len(call["name"])
                if call.get("args"):
                    size += _utf8_len(json.dumps(call["args"], ensure_ascii=False))
            inline = part.get("inlineData")
            if isinstance(inline, dict) and str(inline.get("mimeType", "")).startswith("image/"):
                images += 1
    return size, images


# --------------------------------------------------------------------------------------------------
# Stream
# --------------------------------------------------------------------------------------------------


class GeminiReader(BlankLineReader):
    """Cuts a `streamGenerateContent?alt=sse` stream into events and keeps score (see StreamReader).

    Each `data:` event is a whole GenerateContentResponse chunk. Every chunk may carry
    usageMetadata, with cumulative counts (the prompt from the first chunk on, the candidates so
    far): the latest is the usage, and its input side is `input_usage` for a stream cut early.

    What "final" means: Gemini has no terminator event (no `[DONE]`, no `message_stop`); the stream
    just ends after the chunk whose candidate carries a `finishReason`, and that same chunk carries
    the final usageMetadata. That chunk also carries output (the last text, an image), so it is not
    an Event.final (a relay must forward it; there is nothing to hold back): `final` is never set.
    `completed` is set once every candidate seen has a finishReason (or the prompt was blocked:
    `promptFeedback.blockReason` with no candidates), because the lifecycle stops reading there.
    Events after it in the same bytes are still scored (a late usage-only chunk updates `usage`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._images = 0
        self._open: set[int] = set()  # candidate indexes seen without a finishReason yet
        self._finished: set[int] = set()

    def _event(self, raw: bytes) -> Event:
        name_bytes, payload = sse_fields(raw)
        name = name_bytes.decode("utf-8", "replace")
        if payload is None:
            return Event(raw=raw, name=name)
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and len(parsed) == 1:  # a proxy that frames the JSON-array form
            parsed = parsed[0]
        if not isinstance(parsed, dict):
            return Event(raw=raw, name=name)
        if parsed.get("error") is not None:
            message, _, _ = _error_fields(parsed)
            self.upstream_error = UpstreamError(
                message or "The upstream provider interrupted the stream.", code="upstream_stream_interrupted"
            )
            return Event(raw=raw, data=parsed, name=name)
        size, images = _output(parsed)
        if size or images:
            self.output_events += 1
            self.output_chars += size
            self._images += images
        usage = usage_from_gemini(parsed.get("usageMetadata"), images=self._images)
        if usage is not None:
            self.usage = usage
            self.input_usage = replace(usage, output_tokens=0, reasoning_tokens=0, images=0)
        elif images and self.usage is not None:
            self.usage = replace(self.usage, images=self._images)
        self._track_finish(parsed)
        return Event(raw=raw, data=parsed, name=name)

    def _track_finish(self, chunk: dict) -> None:
        candidates = chunk.get("candidates")
        if not candidates:
            feedback = chunk.get("promptFeedback")
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                self.completed = True  # a blocked prompt: one chunk, no candidates, then the end
            return
        for position, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                continue
            index = candidate.get("index")
            index = index if isinstance(index, int) else position
            if candidate.get("finishReason"):
                self._finished.add(index)
                self._open.discard(index)
            elif index not in self._finished:
                self._open.add(index)
        if self._finished and not self._open:
            self.completed = True


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def _shorten(message: str) -> str:
    return _KEY_LIKE.sub("AIza***", message[:MESSAGE_LIMIT])


def _error_fields(data: Any) -> tuple[str, str, list]:
    """(message, status, details) of a Google error body `{"error": {"code", "message", "status",
    "details"}}` (some proxies send a one-element list of it)."""
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return "", "", []
    error = data.get("error")
    if not isinstance(error, dict):
        return (_shorten(error) if isinstance(error, str) else ""), "", []
    message, status, details = error.get("message"), error.get("status"), error.get("details")
    return (
        _shorten(message) if isinstance(message, str) else "",
        status if isinstance(status, str) else "",
        details if isinstance(details, list) else [],
    )


def _retry_delay(details: list) -> str | None:
    """RetryInfo.retryDelay in seconds, as text: proto3 JSON sends a Duration as "7s" / "58.2s"."""
    for detail in details:
        if not isinstance(detail, dict) or detail.get("@type") != _RETRY_INFO:
            continue
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            return delay[:-1]
        if isinstance(delay, dict):  # the object form some clients re-serialise to
            return str(_count(delay.get("seconds")) + _count(delay.get("nanos")) / 1e9)
    return None


def _reasons(details: list) -> set[str]:
    return {
        str(detail.get("reason"))
        for detail in details
        if isinstance(detail, dict) and detail.get("@type") == _ERROR_INFO and detail.get("reason")
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's headers are case-insensitive; a plain dict may come with either spelling.
    value = headers.get(name)
    return value if value is not None else headers.get(name.title())


# --------------------------------------------------------------------------------------------------
# The provider
# --------------------------------------------------------------------------------------------------


def _api_root(base_url: str) -> str:
    """The versioned root of a route's base URL: "https://generativelanguage.googleapis.com" gets
    /v1beta; a base URL that already names a version (".../v1beta", ".../v1") keeps it."""
    root = base_url.rstrip("/")
    return root if _VERSIONED.search(root) else f"{root}/{API_VERSION}"


def _model_url(base_url: str, upstream_model: str) -> str:
    model = upstream_model.removeprefix("models/")  # the API's own resource name is "models/{id}"
    return f"{_api_root(base_url)}/models/{model}"


def _headers(secret: str, *, json_body: bool) -> dict[str, str]:
    headers = {"content-type": "application/json"} if json_body else {}
    if secret:
        headers["x-goog-api-key"] = secret
    return headers


class GeminiProvider(Provider):
    name = "gemini"
    wire = "gemini"
    image_formats = ("images", "chat")

    def call(self, body: dict, *, route, stream: bool, client_headers: Mapping[str, bytes]) -> UpstreamCall:
        url = _model_url(route.base_url, route.upstream_model)
        url += ":streamGenerateContent?alt=sse" if stream else ":generateContent"
        # ensure_ascii (the default) keeps a lone surrogate from a client's JSON encodable.
        return UpstreamCall(
            "POST", url, _headers(route.secret, json_body=True), json.dumps(body, separators=_JSON_SEPARATORS).encode()
        )

    def reply(self, raw: bytes) -> Reply:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise UpstreamError("the upstream returned a malformed response") from exc
        if not isinstance(data, dict):
            return Reply(data=None, usage=None)
        size, images = _output(data)
        usage = usage_from_gemini(data.get("usageMetadata"), images=images)
        return Reply(data=data, usage=usage, output_bytes=size, images=images)

    def reader(self) -> GeminiReader:
        return GeminiReader()

    def failure(self, *, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        message, kind, details = _error_fields(data)
        error: OpenbiliError
        retryable = False
        if status == 429 or kind == "RESOURCE_EXHAUSTED":
            delay = _header(headers, "retry-after") or _retry_delay(details)
            error = RateLimited(
                "The upstream provider is rate limiting this model: " + (message or "too many requests"),
                code="upstream_rate_limited",
                retry_after=retry_after_seconds(delay),
            )
        elif status == 503 or kind == "UNAVAILABLE":
            error, retryable = UpstreamUnavailable(f"The upstream provider is overloaded (HTTP {status})."), True
        elif status == 504 or kind == "DEADLINE_EXCEEDED":
            error, retryable = UpstreamTimeout(f"The upstream provider timed out (HTTP {status})."), True
        elif status >= 500 or kind == "INTERNAL":
            error, retryable = UpstreamError(f"The upstream provider failed (HTTP {status})."), True
        elif status == 413:
            error = RequestTooLarge(message or None)
        elif (
            status in (400, 422)
            and kind in ("", "INVALID_ARGUMENT", "OUT_OF_RANGE")
            and not (_reasons(details) & _PLATFORM_REASONS)
        ):
            error = InvalidRequest(message or "The upstream provider rejected the request.")
        else:
            # 401/403/404, a rejected API key (400 API_KEY_INVALID) and FAILED_PRECONDITION (the
            # troubleshooting page: "free tier is not available in your country, enable billing")
            # mean the route is misconfigured: not the customer's fault, and retrying the same
            # route does not help.
            error = UpstreamError(f"The upstream provider refused the platform's request (HTTP {status}).")
        return UpstreamFailure(error=error, usage=None, retryable=retryable)

    def probe_call(self, *, kind: str, upstream_model: str, base_url: str, secret: str) -> UpstreamCall:
        # models.get is free and needs the key: it proves the key, the project and the model name
        # without generating anything (an image model's generation would cost a real image).
        return UpstreamCall("GET", _model_url(base_url, upstream_model), _headers(secret, json_body=False))
