"""The OpenAI Chat Completions wire format, and what every OpenAI wire format of a route shares:
the URL under the route's base URL, bearer auth and the error mapping."""

from __future__ import annotations

import json

from billing.money import TokenUsage
from openbili.core.errors import (
    InvalidRequest,
    OpenbiliError,
    RateLimited,
    RequestTooLarge,
    UpstreamError,
    UpstreamUnavailable,
)
from usage.gateway.errors import retry_after_seconds
from usage.gateway.providers.base import Event, Provider, Reply, StreamReader, UpstreamCall, UpstreamFailure

_DATA = b"data:"
_DONE = b"[DONE]"


def usage_from_openai(usage: dict | None) -> TokenUsage | None:
    """Chat Completions usage → TokenUsage. Cached tokens are inside prompt_tokens: subtract them."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
    completion = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
    prompt_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    cached = int(prompt_details.get("cached_tokens") or 0)
    return TokenUsage(
        input_tokens=max(prompt - cached, 0),
        cached_input_tokens=cached,
        output_tokens=completion,
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def _text_bytes(data: dict, part: str = "delta") -> int:
    """UTF-8 bytes of the text generated in a chunk's deltas (or a completion's messages, with
    part="message"): content, refusal, reasoning and tool calls. What a missing usage is estimated from."""
    size = 0
    for choice in data.get("choices") or ():
        delta = choice.get(part) if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        for name in ("content", "refusal", "reasoning_content", "reasoning"):
            if isinstance(delta.get(name), str):
                size += len(delta[name].encode())
        for call in delta.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                for name in ("name", "arguments"):
                    if isinstance(function.get(name), str):
                        size += len(function[name].encode())
    return size


class OpenAIReader(StreamReader):
    """Chat Completions SSE, event by event. The gateway always asks upstream for
    `stream_options.include_usage`; the usage-only chunk (`"choices": []`) is marked hidden, for
    the client to see only when it asked for it."""

    def feed(self, data: bytes) -> list[Event]:
        buffer = self._buffer + data
        events = []
        while self.upstream_error is None:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            event = self._event(buffer[: end + 2])
            buffer = buffer[end + 2 :]
            if self.upstream_error is None:  # the error event itself is not forwarded
                events.append(event)
        self._buffer = buffer
        return events

    def _event(self, raw: bytes) -> Event:
        payload = raw.strip()
        if not payload.startswith(_DATA):
            return Event(raw)  # comments / keep-alives
        payload = payload[len(_DATA) :].strip()
        if payload == _DONE:
            self.completed = True
            return Event(raw, final=True)
        try:
            chunk = json.loads(payload)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            self.output_chars += len(payload)
            self.output_events += 1
            return Event(raw)
        if chunk.get("error") is not None:
            error = chunk["error"]
            message = str(error.get("message", "upstream stream error") if isinstance(error, dict) else error)
            self.upstream_error = UpstreamError(message[:300], code="upstream_stream_interrupted")
            return Event(raw, chunk)
        usage = usage_from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
            if not chunk.get("choices"):
                return Event(raw, chunk, hidden=True)
        # The estimate (if the upstream never reports usage) counts the generated text, not the
        # JSON envelope around it, which is ~50 times larger than a one-word delta. A chunk with
        # no text (the role chunk, the finish_reason chunk) is no output.
        size = _text_bytes(chunk)
        if size:
            self.output_chars += size
            self.output_events += 1
        return Event(raw, chunk)


def json_reply(raw: bytes) -> dict | None:
    """A 2xx body's JSON object (None: JSON, but not an object); UpstreamError when not JSON."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise UpstreamError("the upstream returned a malformed response") from exc
    return data if isinstance(data, dict) else None


def api_url(route, path: str) -> str:
    return route.base_url.rstrip("/") + path


def json_headers(secret: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    return headers


class OpenAIProvider(Provider):
    name = "openai"
    wire = "chat"
    image_formats = ("images", "image_edits")

    def call(self, body, *, route, stream, client_headers):
        body["model"] = route.upstream_model
        if stream:
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return UpstreamCall(
            "POST", api_url(route, "/chat/completions"), json_headers(route.secret), json.dumps(body).encode()
        )

    def reply(self, raw):
        data = json_reply(raw)
        if data is None:
            return Reply(data=None, usage=None, output_bytes=len(raw))
        return Reply(data=data, usage=usage_from_openai(data.get("usage")), output_bytes=_text_bytes(data, "message"))

    def reader(self):
        return OpenAIReader()

    def failure(self, *, status, body, headers):
        message, usage = _error_details(body)
        retryable = status >= 500
        error: OpenbiliError
        if status == 429:
            error = RateLimited(
                "The upstream provider is rate limiting this model: " + (message or "too many requests"),
                code="upstream_rate_limited",
                retry_after=retry_after_seconds(headers.get("Retry-After")),
            )
        elif status == 413:
            error = RequestTooLarge(message or None)
        elif status in (400, 422):
            error = InvalidRequest(message or "The upstream provider rejected the request.")
        elif status == 503:  # OpenAI's "overloaded" / "slow down": the provider's capacity, as Anthropic's 529
            error = UpstreamUnavailable(f"The upstream provider is overloaded or unavailable (HTTP {status}).")
        elif status >= 500:
            error = UpstreamError(f"The upstream provider failed (HTTP {status}).")
        else:
            # 401/403/404 from upstream mean the route is misconfigured, not the customer's fault.
            error = UpstreamError(f"The upstream provider refused the platform's request (HTTP {status}).")
        return UpstreamFailure(error=error, usage=usage, retryable=retryable)

    def probe_call(self, *, kind, upstream_model, base_url, secret):
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        if kind == "image":
            # Generating an image costs real money; checking the model exists is enough.
            return UpstreamCall("GET", f"{base_url.rstrip('/')}/models/{upstream_model}", headers)
        body = {"model": upstream_model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        headers["Content-Type"] = "application/json"
        return UpstreamCall("POST", base_url.rstrip("/") + "/chat/completions", headers, json.dumps(body).encode())


def _error_details(body: bytes) -> tuple[str, TokenUsage | None]:
    """The upstream's error message (shortened) and any usage its error body reported."""
    try:
        data = json.loads(body)
    except ValueError:
        return "", None
    if not isinstance(data, dict):
        return "", None
    error = data.get("error")
    message = str(error.get("message", "")) if isinstance(error, dict) else str(error or "")
    return message[:300], usage_from_openai(data.get("usage"))
