"""A fake LLM upstream speaking the OpenAI, Anthropic and Gemini wire formats.

Built on ``aiohttp.web`` only (no Django), so it runs standalone, inside the test process (in a
daemon thread) or under an existing event loop.

Endpoints (any path prefix is accepted, so ``/v1``, ``/openai/v1`` ... base URLs all work):

* ``POST .../chat/completions``             OpenAI Chat Completions (stream and non-stream)
* ``POST .../responses``                    OpenAI Responses (stream and non-stream)
* ``GET  .../responses/{id}`` (``?stream=true&starting_after=N`` for background streams),
  ``DELETE .../responses/{id}``, ``POST .../responses/{id}/cancel``   stored Responses (see below)
* ``POST .../images/generations``           OpenAI Images (``b64_json`` or ``url``)
* ``POST .../images/edits``                 OpenAI Images edit (multipart ``image``/``image[]``, ``mask``)
* ``GET  .../models``                       model list (OpenAI, Anthropic or Gemini shape)
* ``POST .../messages``                     Anthropic Messages (stream and non-stream)
* ``POST .../messages/count_tokens``        Anthropic token counting
* ``POST .../models/{model}:generateContent`` / ``:streamGenerateContent[?alt=sse]``  Gemini
* ``GET  /files/{id}.png``                  the image behind ``response_format="url"`` (no auth)
* ``POST /__fake__/script``, ``POST /__fake__/reset``, ``GET /__fake__/requests``,
  ``GET /__fake__/script``                  test control (no auth)
* ``POST /__fake__/gate/{name}``             release the requests held at a scenario's ``gate``

Token accounting (deterministic):

* prompt tokens = number of whitespace-separated words in every text of the prompt (chat/Anthropic
  ``messages[].content`` strings and ``text`` parts, Anthropic ``system``, Responses
  ``instructions`` + ``input``, Gemini ``systemInstruction`` + ``contents[].parts[].text``, image
  ``prompt``; tool results' ``content``/``output`` count too; tool definitions do not), minimum 1.
* completion tokens = number of content pieces emitted (one piece = one stream delta). The default
  reply is ``chunks`` words of "Hello from the fake upstream ..."; a ``content`` override is split
  into words (each piece keeps its leading whitespace). ``max_tokens`` / ``max_completion_tokens``
  / ``max_output_tokens`` / ``generationConfig.maxOutputTokens`` cut the reply to that many pieces
  and the finish reason becomes ``length`` / ``max_tokens`` / ``MAX_TOKENS`` / ``incomplete``.
* image edits: input tokens = prompt words + ``EDIT_IMAGE_TOKENS`` per input image (plus
  ``EDIT_HIGH_FIDELITY_TOKENS`` each with ``input_fidelity=high``); the mask is not counted.
* ``previous_response_id``: the previous response's input + output tokens are added to the prompt.
* a scenario's ``tokens`` override writes the provider's wire fields directly (see ``Scenario``).

Stateful Responses (as OpenAI keeps them): ``store`` defaults to true and keeps the response (the
newest ``max_responses``, default 1000) under the caller's bearer key, so another key gets a 404.
``background: true`` (needs ``store``) answers ``queued`` at once, shows ``in_progress`` after half of
``background_delay_ms`` (default 200) and its final object (usage included) after all of it; with
``stream: true`` it streams as usual, its events can be replayed with ``GET ...?stream=true``, and
it completes even when the client goes away. ``reset()`` forgets stored responses.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import itertools
import json
import os
import re
import struct
import threading
import time
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web

__all__ = [
    "DEFAULT_CHUNKS",
    "PNG_B64",
    "PNG_BYTES",
    "FakeUpstream",
    "Scenario",
    "UpstreamState",
    "count_words",
    "make_app",
    "serve",
]

DEFAULT_CHUNKS = 8
REPLY_WORDS = (
    "Hello",
    "from",
    "the",
    "fake",
    "upstream.",
    "This",
    "is",
    "a",
    "deterministic",
    "reply",
    "for",
    "tests",
    "and",
    "benchmarks.",
)
MODEL_IDS = ("gpt-4o-mini", "gpt-4o", "gpt-image-1", "claude-sonnet-4-5", "gemini-2.5-flash")
GEMINI_IMAGE_TOKENS = 1290  # output tokens Gemini bills for one 1024x1024 image
IMAGE_TOKENS = {  # gpt-image-1 output tokens per image: (size class, quality)
    ("square", "low"): 272,
    ("square", "medium"): 1056,
    ("square", "high"): 4160,
    ("wide", "low"): 408,
    ("wide", "medium"): 1584,
    ("wide", "high"): 6240,
}
EDIT_IMAGE_TOKENS = 194  # input tokens per edited image (65 base + 129 for one 512px tile)
EDIT_HIGH_FIDELITY_TOKENS = 4160  # extra input tokens per image with input_fidelity=high
EDIT_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")


def _png_1x1() -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8-bit RGBA
    idat = zlib.compress(b"\x00\xff\x00\x00\xff")  # filter byte + one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


PNG_BYTES = _png_1x1()
PNG_B64 = base64.b64encode(PNG_BYTES).decode("ascii")

_ID_PREFIX = os.urandom(4).hex()
_ids = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"{prefix}{_ID_PREFIX}{next(_ids):016x}"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------------

_TOKEN_KEYS = {
    "prompt": "prompt",
    "prompt_tokens": "prompt",
    "input_tokens": "prompt",
    "promptTokenCount": "prompt",
    "completion": "completion",
    "completion_tokens": "completion",
    "output_tokens": "completion",
    "candidatesTokenCount": "completion",
    "cached": "cached",
    "cached_tokens": "cached",
    "cachedContentTokenCount": "cached",
    "reasoning": "reasoning",
    "reasoning_tokens": "reasoning",
    "thoughtsTokenCount": "reasoning",
    "cache_creation": "cache_creation",
    "cache_creation_input_tokens": "cache_creation",
    "cache_write_tokens": "cache_creation",
    "cache_read": "cache_read",
    "cache_read_input_tokens": "cache_read",
}


@dataclass(slots=True)
class Scenario:
    """One scripted behaviour, consumed by one request (``times`` requests; ``times=0``: forever).

    Matching: ``model`` (exact request model) and ``path`` (substring of the request path). A
    scenario without ``path`` only matches generation endpoints (chat, messages, responses,
    images, Gemini), never ``/models`` or ``/files``.

    ``tokens`` keys (aliases in parentheses) map straight onto each provider's usage fields:
    ``prompt`` (prompt_tokens, input_tokens), ``completion`` (completion_tokens, output_tokens),
    ``cached`` (cached_tokens), ``reasoning`` (reasoning_tokens), ``cache_creation``
    (cache_creation_input_tokens) and ``cache_read`` (cache_read_input_tokens; defaults to
    ``cached`` and vice versa). When ``completion`` is not given it is the number of pieces
    emitted, plus ``reasoning`` for OpenAI/Anthropic (whose output counts include reasoning).
    """

    model: str | None = None
    path: str | None = None
    times: int = 1
    # errors
    status: int | None = None
    message: str | None = None
    error_type: str | None = None  # OpenAI error.type / Anthropic error.type / Gemini error.status
    error_code: str | None = None  # OpenAI error.code
    usage: Any = None  # dict (sent verbatim) or True (computed) -> top-level "usage" in error body
    retry_after: float | int | str | None = None
    headers: dict[str, str] | None = None  # extra response headers (any response)
    body: Any = None  # raw error body (str or JSON) replacing the provider error body
    error_after_chunks: int | None = None  # with status: 200 stream, N chunks, then an error event
    api_key: str | None = None  # only this key is accepted (401/400 otherwise)
    # timing / transport
    delay_first_byte_ms: float = 0
    hang: bool = False
    # Hold the answer until the test opens this gate (FakeUpstream.open_gate or POST
    # /__fake__/gate/{name}): lets a test make "every request is in flight" an event, not a delay.
    gate: str | None = None
    # Answer a non-stream request gzip-compressed (Content-Encoding: gzip), whatever the client
    # asked for, as some proxies in front of real providers do.
    gzip: bool = False
    cut_after_chunks: int | None = None
    chunk_delay_ms: float | None = None
    # content / usage
    no_usage: bool = False
    tokens: dict[str, int] | None = None
    tool_call: Any = None  # True (first tool of the request) or {"name": ..., "arguments": {...}}
    content: Any = None  # str (split into word pieces) or list[str] (the exact pieces)
    # Responses background mode: how long this response takes (overrides the server's
    # background_delay_ms) and the status it ends in ("completed" by default, "failed" with an
    # error object built from message/error_code, "incomplete", "cancelled").
    background_delay_ms: float | None = None
    background_status: str | None = None

    def __post_init__(self) -> None:
        if self.tokens:
            normalized = {}
            for key, value in self.tokens.items():
                if key not in _TOKEN_KEYS:
                    raise ValueError(f"unknown tokens key {key!r}; use one of {sorted(set(_TOKEN_KEYS))}")
                normalized[_TOKEN_KEYS[key]] = int(value)
            self.tokens = normalized
        if self.error_after_chunks is not None and self.status is None:
            self.status = 500

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown scenario keys: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        default = Scenario()
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)
        }


@dataclass(slots=True)
class _Tokens:
    prompt: int
    completion: int
    cached: int = 0
    reasoning: int = 0
    cache_creation: int = 0
    cache_read: int = 0


def _tokens(prompt: int, pieces: int, scen: Scenario | None, reasoning_in_output: bool = True) -> _Tokens:
    over = (scen.tokens if scen is not None else None) or {}
    if not over:
        return _Tokens(prompt, pieces)
    reasoning = over.get("reasoning", 0)
    completion = over.get("completion", pieces + (reasoning if reasoning_in_output else 0))
    cached = over.get("cached", over.get("cache_read", 0))
    return _Tokens(
        prompt=over.get("prompt", prompt),
        completion=completion,
        cached=cached,
        reasoning=reasoning,
        cache_creation=over.get("cache_creation", 0),
        cache_read=over.get("cache_read", cached),
    )


# --------------------------------------------------------------------------------------------------
# Shared state (thread-safe: scripted from the test thread, read by the server loop)
# --------------------------------------------------------------------------------------------------


class UpstreamState:
    def __init__(
        self,
        *,
        latency_ms: float = 0,
        chunks: int = DEFAULT_CHUNKS,
        chunk_delay_ms: float = 0,
        record: bool = True,
        max_records: int = 200,
        api_key: str | None = None,
        max_responses: int = 1000,
        background_delay_ms: float = 200,
    ) -> None:
        self.latency_ms = latency_ms
        self.chunks = chunks
        self.chunk_delay_ms = chunk_delay_ms
        self.record = record
        self.api_key = api_key
        self.max_responses = max_responses
        self.background_delay_ms = background_delay_ms
        self.stopping = False
        self._lock = threading.Lock()
        self._queue: list[Scenario] = []
        self._records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self._responses: OrderedDict[str, _StoredResponse] = OrderedDict()
        self._open_gates: set[str] = set()
        self._waiting: dict[str, int] = {}
        self.default_pieces = _default_pieces(chunks)

    def set_chunks(self, chunks: int) -> None:
        self.chunks = chunks
        self.default_pieces = _default_pieces(chunks)

    # scripting ------------------------------------------------------------------------------------
    def add(self, scenario: Scenario) -> Scenario:
        with self._lock:
            self._queue.append(scenario)
        return scenario

    def take(self, model: str | None, path: str, generation: bool) -> Scenario | None:
        if not self._queue:  # fast path, no lock
            return None
        with self._lock:
            for i, scen in enumerate(self._queue):
                if scen.model is not None and scen.model != model:
                    continue
                if scen.path is not None:
                    if scen.path not in path:
                        continue
                elif not generation:
                    continue
                if scen.times == 1:
                    del self._queue[i]
                elif scen.times > 1:
                    scen.times -= 1
                return scen
        return None

    @property
    def pending(self) -> list[Scenario]:
        with self._lock:
            return list(self._queue)

    # recording ------------------------------------------------------------------------------------
    def add_record(self, rec: dict[str, Any]) -> None:
        with self._lock:
            self._records.append(rec)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._records.clear()
            self._open_gates.clear()
            self._responses.clear()  # pending background timers find their entry gone and stop

    # stored Responses -----------------------------------------------------------------------------
    def response_put(self, entry: _StoredResponse) -> None:
        with self._lock:
            self._responses[entry.id] = entry
            self._responses.move_to_end(entry.id)
            while len(self._responses) > self.max_responses:
                self._responses.popitem(last=False)

    def response_get(self, rid: str, owner: str | None) -> _StoredResponse | None:
        """The stored response, or None when unknown or stored under another key."""
        with self._lock:
            entry = self._responses.get(rid)
        return entry if entry is not None and entry.owner == owner else None

    def response_pop(self, rid: str, owner: str | None) -> _StoredResponse | None:
        with self._lock:
            entry = self._responses.get(rid)
            if entry is None or entry.owner != owner:
                return None
            del self._responses[rid]
        return entry

    def response_live(self, entry: _StoredResponse) -> bool:
        """Still stored (not deleted, evicted or reset)?"""
        with self._lock:
            return self._responses.get(entry.id) is entry

    @property
    def stored_responses(self) -> int:
        with self._lock:
            return len(self._responses)

    # gates ----------------------------------------------------------------------------------------
    def open_gate(self, name: str) -> None:
        with self._lock:
            self._open_gates.add(name)

    def waiting_at(self, name: str) -> int:
        """How many requests are held at a gate right now."""
        with self._lock:
            return self._waiting.get(name, 0)

    async def wait_gate(self, name: str, request: web.Request) -> None:
        with self._lock:
            self._waiting[name] = self._waiting.get(name, 0) + 1
        try:
            while name not in self._open_gates and not self.stopping:
                transport = request.transport
                if transport is None or transport.is_closing():
                    return
                await asyncio.sleep(0.01)
        finally:
            with self._lock:
                self._waiting[name] -= 1


_TERMINAL = ("completed", "failed", "incomplete", "cancelled")


@dataclass(slots=True)
class _StoredResponse:
    """A stored Responses object; ``obj`` is what GET answers (replaced, never mutated in place)."""

    id: str
    owner: str | None  # the bearer key it was created with (OpenAI scopes responses by project)
    obj: dict[str, Any]
    background: bool = False
    events: list[tuple[int, bytes]] | None = None  # (sequence_number, SSE bytes) of a background stream
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.obj.get("status") in _TERMINAL

    def stop_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


def _default_pieces(chunks: int) -> list[str]:
    n = len(REPLY_WORDS)
    return [(" " if i else "") + REPLY_WORDS[i % n] for i in range(max(0, chunks))]


_PIECE_RE = re.compile(r"\s*\S+")


def _split_pieces(content: Any) -> list[str]:
    if isinstance(content, list):
        return [str(p) for p in content]
    return _PIECE_RE.findall(str(content))


def count_words(obj: Any) -> int:
    """Words in the text fields of a prompt structure (str, list, or dict with text/content/...)."""
    if isinstance(obj, str):
        return len(obj.split())
    if isinstance(obj, list):
        return sum(count_words(x) for x in obj)
    if isinstance(obj, dict):
        total = 0
        for key in ("text", "content", "parts", "output"):
            value = obj.get(key)
            if value is not None:
                total += count_words(value)
        return total
    return 0


# --------------------------------------------------------------------------------------------------
# Errors in each provider's format
# --------------------------------------------------------------------------------------------------

_OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Request not allowed."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}
_ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _openai_error(status: int, message: str | None, etype: str | None, code: str | None) -> dict[str, Any]:
    d_type, d_code, d_msg = _OPENAI_ERRORS.get(
        status,
        ("server_error", None, "Server error.") if status >= 500 else ("invalid_request_error", None, "Error."),
    )
    return {
        "error": {
            "message": message or d_msg,
            "type": etype or d_type,
            "param": None,
            "code": code if code is not None else d_code,
        }
    }


def _openai_invalid(message: str, param: str | None = None, code: str | None = None, status: int = 400) -> web.Response:
    """An OpenAI ``invalid_request_error`` naming the offending parameter."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return _json_response({"error": error}, status)


def _anthropic_error(status: int, message: str | None, etype: str | None) -> dict[str, Any]:
    d_type, d_msg = _ANTHROPIC_ERRORS.get(
        status, ("api_error", "Internal server error") if status >= 500 else ("invalid_request_error", "Error.")
    )
    return {
        "type": "error",
        "error": {"type": etype or d_type, "message": message or d_msg},
        "request_id": _new_id("req_"),
    }


def _gemini_error(status: int, message: str | None, estatus: str | None) -> dict[str, Any]:
    return {
        "error": {
            "code": status,
            "message": message or f"The service returned HTTP {status}.",
            "status": estatus or _GEMINI_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"),
        }
    }


def _error_body(provider: str, status: int, scen: Scenario | None, message: str | None = None) -> dict[str, Any]:
    etype = code = None
    if scen is not None:
        message = scen.message or message
        etype, code = scen.error_type, scen.error_code
    if provider == "anthropic":
        return _anthropic_error(status, message, etype)
    if provider == "gemini":
        return _gemini_error(status, message, etype)
    return _openai_error(status, message, etype, code)


_REASONS = {529: "Overloaded"}  # statuses http.HTTPStatus does not know


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_dumps(payload),
        status=status,
        reason=_REASONS.get(status),
        content_type="application/json",
        headers=headers,
    )


def _error_response(
    provider: str,
    status: int,
    scen: Scenario | None = None,
    message: str | None = None,
    usage: dict[str, Any] | None = None,
) -> web.Response:
    headers: dict[str, str] = {}
    if scen is not None:
        if scen.headers:
            headers.update(scen.headers)
        if scen.retry_after is not None:
            headers["Retry-After"] = str(scen.retry_after)
        if scen.body is not None:
            if isinstance(scen.body, str | bytes):
                raw = scen.body.encode() if isinstance(scen.body, str) else scen.body
                headers.setdefault("Content-Type", "text/html" if raw.lstrip().startswith(b"<") else "text/plain")
                return web.Response(body=raw, status=status, reason=_REASONS.get(status), headers=headers)
            return _json_response(scen.body, status, headers)
    body = _error_body(provider, status, scen, message)
    if usage is not None:
        body["usage"] = usage
    return _json_response(body, status, headers or None)


# --------------------------------------------------------------------------------------------------
# Request plumbing
# --------------------------------------------------------------------------------------------------


class _Call:
    """Per-request context."""

    __slots__ = ("body", "chunk_delay", "files", "model", "provider", "request", "scen", "state")

    def __init__(
        self,
        state: UpstreamState,
        request: web.Request,
        provider: str,
        body: dict[str, Any],
        model: str | None,
        scen: Scenario | None,
        files: list[_Upload] | None = None,
    ) -> None:
        self.state = state
        self.request = request
        self.provider = provider
        self.body = body
        self.model = model
        self.scen = scen
        self.files = files or []
        delay = state.chunk_delay_ms
        if scen is not None and scen.chunk_delay_ms is not None:
            delay = scen.chunk_delay_ms
        self.chunk_delay = delay / 1000 if delay else 0

    def pieces(self, limit: Any) -> tuple[list[str], bool]:
        scen = self.scen
        pieces = (
            _split_pieces(scen.content) if scen is not None and scen.content is not None else self.state.default_pieces
        )
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < len(pieces):
            return pieces[:limit], True
        return pieces, False

    def tool(self, names: list[str]) -> tuple[str, str] | None:
        """(name, JSON arguments) when the scenario asks for a tool call and one is possible."""
        scen = self.scen
        if scen is None or not scen.tool_call:
            return None
        spec = scen.tool_call
        if isinstance(spec, dict) and spec.get("name"):
            args = spec.get("arguments", {})
            return spec["name"], args if isinstance(args, str) else json.dumps(args)
        if not names:
            return None
        args = spec.get("arguments", {}) if isinstance(spec, dict) else {}
        return names[0], args if isinstance(args, str) else json.dumps(args)

    @property
    def cut(self) -> int | None:
        return self.scen.cut_after_chunks if self.scen is not None else None

    @property
    def no_usage(self) -> bool:
        return self.scen is not None and self.scen.no_usage

    @property
    def mid_error(self) -> int | None:
        return self.scen.error_after_chunks if self.scen is not None else None

    def extra_headers(self) -> dict[str, str] | None:
        return self.scen.headers if self.scen is not None and self.scen.headers else None

    async def pause(self) -> None:
        if self.chunk_delay:
            await asyncio.sleep(self.chunk_delay)


def _split_args(args: str, n: int) -> list[str]:
    if not args:
        return [""]
    n = max(1, min(n, len(args)))
    size = -(-len(args) // n)
    return [args[i : i + size] for i in range(0, len(args), size)]


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def _check_auth(call_state: UpstreamState, request: web.Request, provider: str, scen: Scenario | None):
    """Returns an error response, or None when the request is authorised."""
    expected = scen.api_key if scen is not None and scen.api_key is not None else call_state.api_key
    if provider == "anthropic":
        key = request.headers.get("x-api-key") or _bearer(request)
        if not key:
            return _json_response(_anthropic_error(401, "x-api-key header is required", None), 401)
        if expected is not None and key != expected:
            return _json_response(_anthropic_error(401, "invalid x-api-key", None), 401)
        if "anthropic-version" not in request.headers:
            return _json_response(_anthropic_error(400, "anthropic-version: header is required", None), 400)
        return None
    if provider == "gemini":
        key = request.headers.get("x-goog-api-key") or request.query.get("key") or _bearer(request)
        if not key:
            return _json_response(
                _gemini_error(
                    401,
                    "Method doesn't allow unregistered callers (callers without established identity). "
                    "Please use API Key or other form of API consumer identity to call this API.",
                    None,
                ),
                401,
            )
        if expected is not None and key != expected:
            body = _gemini_error(400, "API key not valid. Please pass a valid API key.", None)
            body["error"]["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ]
            return _json_response(body, 400)
        return None
    key = _bearer(request)
    if not key:
        return _json_response(
            _openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                None,
                None,
            ),
            401,
        )
    if expected is not None and key != expected:
        return _json_response(
            _openai_error(401, f"Incorrect API key provided: {key[:3]}***{key[-4:]}.", None, None), 401
        )
    return None


async def _hang(state: UpstreamState, request: web.Request) -> web.StreamResponse:
    """Never answer: wait until the client goes away (or the server stops), then drop the socket."""
    while not state.stopping:
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        await asyncio.sleep(0.05)
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)  # never reaches the client: the socket is closed


def _close(request: web.Request) -> None:
    """Drop the connection without finishing the HTTP message (no terminating chunk)."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def _cut_body(request: web.Request, payload: bytes, status: int = 200) -> web.StreamResponse:
    """Non-stream cut: announce the full Content-Length, send half the body, close."""
    resp = web.StreamResponse(status=status)
    resp.content_type = "application/json"
    resp.content_length = len(payload)
    try:
        await resp.prepare(request)
        await resp.write(payload[: len(payload) // 2])
    except ConnectionError:
        return resp
    _close(request)
    return resp


async def _start_stream(call: _Call, content_type: str = "text/event-stream; charset=utf-8"):
    resp = web.StreamResponse(status=200, headers=call.extra_headers())
    resp.headers["Content-Type"] = content_type
    resp.headers["Cache-Control"] = "no-cache"
    await resp.prepare(call.request)
    return resp


async def _finish_json(call: _Call, payload: dict[str, Any]) -> web.StreamResponse:
    data = _dumps(payload)
    if call.cut is not None:
        return await _cut_body(call.request, data)
    return web.Response(body=data, content_type="application/json", headers=call.extra_headers())


# --------------------------------------------------------------------------------------------------
# OpenAI Chat Completions
# --------------------------------------------------------------------------------------------------


def _chat_usage(t: _Tokens) -> dict[str, Any]:
    return {
        "prompt_tokens": t.prompt,
        "completion_tokens": t.completion,
        "total_tokens": t.prompt + t.completion,
        "prompt_tokens_details": {"cached_tokens": t.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": t.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_prompt(body: dict[str, Any]) -> int:
    return max(1, count_words(body.get("messages") or []))


def _chat_tool_names(body: dict[str, Any]) -> list[str]:
    names = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            fn = tool.get("function")
            name = fn.get("name") if isinstance(fn, dict) else tool.get("name")
            if name:
                names.append(name)
    return names


async def _chat(call: _Call) -> web.StreamResponse:
    body = call.body
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    tool = call.tool(_chat_tool_names(body))
    if tool is not None:
        arg_pieces = _split_args(tool[1], call.state.chunks)
        pieces, truncated = arg_pieces, False
        finish = "tool_calls"
    else:
        pieces, truncated = call.pieces(limit)
        finish = "length" if truncated else "stop"
    tokens = _tokens(_chat_prompt(body), len(pieces), call.scen)
    cid = _new_id("chatcmpl-")
    created = int(time.time())
    model = call.model
    if body.get("stream"):
        return await _chat_stream(call, cid, created, model, pieces, tool, finish, tokens)
    if tool is not None:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": _new_id("call_"),
                    "type": "function",
                    "function": {"name": tool[0], "arguments": tool[1]},
                }
            ],
            "refusal": None,
            "annotations": [],
        }
    else:
        message = {"role": "assistant", "content": "".join(pieces), "refusal": None, "annotations": []}
    payload: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    if not call.no_usage:
        payload["usage"] = _chat_usage(tokens)
    payload["service_tier"] = "default"
    payload["system_fingerprint"] = "fp_fake"
    return await _finish_json(call, payload)


async def _chat_stream(call, cid, created, model, pieces, tool, finish, tokens) -> web.StreamResponse:
    opts = call.body.get("stream_options")
    include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
    head = (
        f'{{"id":"{cid}","object":"chat.completion.chunk","created":{created},"model":{json.dumps(model)},'
        '"service_tier":"default","system_fingerprint":"fp_fake","choices":'
    )
    head_b = head.encode()
    tail_b = b',"usage":null}\n\n' if include_usage else b"}\n\n"

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return b"data: " + head_b + _dumps([choice]) + tail_b

    resp = await _start_stream(call)
    try:
        if tool is not None:
            first = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": _new_id("call_"),
                        "type": "function",
                        "function": {"name": tool[0], "arguments": ""},
                    }
                ],
                "refusal": None,
            }
        else:
            first = {"role": "assistant", "content": "", "refusal": None}
        await resp.write(chunk(first))
        cut, mid_error = call.cut, call.mid_error
        for i, piece in enumerate(pieces):
            if cut is not None and i >= cut:
                _close(call.request)
                return resp
            if mid_error is not None and i >= mid_error:
                break
            await call.pause()
            if tool is not None:
                delta: dict[str, Any] = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            else:
                delta = {"content": piece}
            await resp.write(chunk(delta))
        if cut is not None:
            _close(call.request)
            return resp
        if mid_error is not None:
            err = _error_body("openai", call.scen.status, call.scen)
            await resp.write(b"data: " + _dumps(err) + b"\n\n")
            await resp.write_eof()
            return resp
        await resp.write(chunk({}, finish))
        if include_usage and not call.no_usage:
            usage_chunk = head_b + b'[],"usage":' + _dumps(_chat_usage(tokens)) + b"}\n\n"
            await resp.write(b"data: " + usage_chunk)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionError:
        pass
    return resp


# --------------------------------------------------------------------------------------------------
# Anthropic Messages
# --------------------------------------------------------------------------------------------------


def _anthropic_prompt(body: dict[str, Any]) -> int:
    return max(1, count_words(body.get("system") or []) + count_words(body.get("messages") or []))


def _anthropic_usage(t: _Tokens, output: int | None = None) -> dict[str, Any]:
    return {
        "input_tokens": t.prompt,
        "cache_creation_input_tokens": t.cache_creation,
        "cache_read_input_tokens": t.cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": t.cache_creation, "ephemeral_1h_input_tokens": 0},
        "output_tokens": t.completion if output is None else output,
        "service_tier": "standard",
    }


async def _messages(call: _Call) -> web.StreamResponse:
    body = call.body
    names = [str(t["name"]) for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name")]
    tool = call.tool(names)
    if tool is not None:
        pieces, truncated = _split_args(tool[1], call.state.chunks), False
        stop = "tool_use"
    else:
        pieces, truncated = call.pieces(body.get("max_tokens"))
        stop = "max_tokens" if truncated else "end_turn"
    tokens = _tokens(_anthropic_prompt(body), len(pieces), call.scen)
    mid = _new_id("msg_")
    if body.get("stream"):
        return await _messages_stream(call, mid, pieces, tool, stop, tokens)
    if tool is not None:
        content = [{"type": "tool_use", "id": _new_id("toolu_"), "name": tool[0], "input": json.loads(tool[1])}]
    else:
        content = [{"type": "text", "text": "".join(pieces)}]
    payload: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
    }
    if not call.no_usage:
        payload["usage"] = _anthropic_usage(tokens)
    return await _finish_json(call, payload)


def _sse(event: bytes, data: dict[str, Any]) -> bytes:
    return b"event: " + event + b"\ndata: " + _dumps(data) + b"\n\n"


async def _messages_stream(call, mid, pieces, tool, stop, tokens) -> web.StreamResponse:
    resp = await _start_stream(call)
    no_usage = call.no_usage
    try:
        message: dict[str, Any] = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if not no_usage:
            message["usage"] = _anthropic_usage(tokens, output=1)
        await resp.write(_sse(b"message_start", {"type": "message_start", "message": message}))
        if tool is not None:
            block: dict[str, Any] = {"type": "tool_use", "id": _new_id("toolu_"), "name": tool[0], "input": {}}
        else:
            block = {"type": "text", "text": ""}
        await resp.write(
            _sse(b"content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
        )
        await resp.write(_sse(b"ping", {"type": "ping"}))
        cut, mid_error = call.cut, call.mid_error
        for i, piece in enumerate(pieces):
            if cut is not None and i >= cut:
                _close(call.request)
                return resp
            if mid_error is not None and i >= mid_error:
                break
            await call.pause()
            if tool is not None:
                delta = {"type": "input_json_delta", "partial_json": piece}
            else:
                delta = {"type": "text_delta", "text": piece}
            await resp.write(
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":'
                + _dumps(delta)
                + b"}\n\n"
            )
        if cut is not None:
            _close(call.request)
            return resp
        if mid_error is not None:
            await resp.write(_sse(b"error", _error_body("anthropic", call.scen.status, call.scen)))
            await resp.write_eof()
            return resp
        await resp.write(_sse(b"content_block_stop", {"type": "content_block_stop", "index": 0}))
        delta_event: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
        }
        if not no_usage:
            delta_event["usage"] = {"output_tokens": tokens.completion}
        await resp.write(_sse(b"message_delta", delta_event))
        await resp.write(_sse(b"message_stop", {"type": "message_stop"}))
        await resp.write_eof()
    except ConnectionError:
        pass
    return resp


async def _count_tokens(call: _Call) -> web.StreamResponse:
    return _json_response({"input_tokens": _anthropic_prompt(call.body)})


# --------------------------------------------------------------------------------------------------
# OpenAI Responses
# --------------------------------------------------------------------------------------------------


def _responses_usage(t: _Tokens) -> dict[str, Any]:
    return {
        "input_tokens": t.prompt,
        "input_tokens_details": {"cached_tokens": t.cached, "cache_write_tokens": t.cache_creation},
        "output_tokens": t.completion,
        "output_tokens_details": {"reasoning_tokens": t.reasoning},
        "total_tokens": t.prompt + t.completion,
    }


def _response_obj(call: _Call, rid: str, created: int, status: str, output: list, usage, incomplete: bool):
    body = call.body
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": body.get("background") is True,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": call.model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": 0,
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def _not_found(rid: str) -> web.Response:
    return _openai_invalid(f"Response with id '{rid}' not found.", status=404)


def _background_final(call: _Call, final: dict[str, Any]) -> dict[str, Any]:
    """The object a background response ends as, after the scenario's ``background_status``."""
    status = call.scen.background_status if call.scen is not None else None
    if status is None or status == final["status"]:
        return final
    if status == "failed":
        err = _error_body("openai", 500, call.scen)["error"]
        error = {"code": err["code"] or "server_error", "message": err["message"]}
        return {**final, "status": "failed", "output": [], "usage": None, "error": error}
    if status == "incomplete":
        return {**final, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    return {**final, "status": status, "usage": None if status == "cancelled" else final["usage"]}


def _schedule_background(call: _Call, entry: _StoredResponse, final: dict[str, Any]) -> None:
    """queued -> in_progress (half the delay) -> the final object (the whole delay)."""
    state = call.state
    delay_ms = state.background_delay_ms
    if call.scen is not None and call.scen.background_delay_ms is not None:
        delay_ms = call.scen.background_delay_ms
    delay = max(0.0, delay_ms / 1000)

    def advance(obj: dict[str, Any] | None) -> None:
        if not state.response_live(entry) or entry.done:  # deleted, evicted, reset or cancelled
            return
        entry.obj = obj if obj is not None else {**entry.obj, "status": "in_progress"}

    loop = asyncio.get_running_loop()
    entry.timers = [loop.call_later(delay / 2, advance, None), loop.call_later(delay, advance, final)]


async def _responses(call: _Call) -> web.StreamResponse:
    body = call.body
    store = body.get("store") is not False  # absent or null: stored, as OpenAI does
    background = body.get("background") is True
    if background and not store:
        return _openai_invalid("background can only be used when `store` is true", "background")
    owner = _bearer(call.request)
    earlier = 0  # what the previous response's state costs: its whole input + output again
    prev_id = body.get("previous_response_id")
    if prev_id is not None:
        prev = call.state.response_get(str(prev_id), owner)
        if prev is None:
            return _openai_invalid(
                f"Previous response with id '{prev_id}' not found.",
                "previous_response_id",
                "previous_response_not_found",
            )
        prev_usage = prev.obj.get("usage") or {}
        earlier = int(prev_usage.get("input_tokens") or 0) + int(prev_usage.get("output_tokens") or 0)
    names = [str(t["name"]) for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name")]
    tool = call.tool(names)
    if tool is not None:
        pieces, truncated = _split_args(tool[1], call.state.chunks), False
    else:
        pieces, truncated = call.pieces(body.get("max_output_tokens"))
    prompt = max(1, count_words(body.get("instructions") or "") + count_words(body.get("input") or "")) + earlier
    tokens = _tokens(prompt, len(pieces), call.scen)
    rid = _new_id("resp_")
    item_id = _new_id("fc_" if tool is not None else "msg_")
    created = int(time.time())
    status = "incomplete" if truncated else "completed"
    usage = None if call.no_usage else _responses_usage(tokens)
    if tool is not None:
        call_id = _new_id("call_")
        item: dict[str, Any] = {
            "id": item_id,
            "type": "function_call",
            "status": "completed",
            "arguments": tool[1],
            "call_id": call_id,
            "name": tool[0],
        }
    else:
        text = "".join(pieces)
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        item = {
            "id": item_id,
            "type": "message",
            "status": status,
            "content": [part],
            "role": "assistant",
        }
    final = _response_obj(call, rid, created, status, [item], usage, truncated)
    if not body.get("stream"):
        if background:
            queued = _response_obj(call, rid, created, "queued", [], None, False)
            pending = _StoredResponse(rid, owner, queued, background=True)
            call.state.response_put(pending)
            _schedule_background(call, pending, _background_final(call, final))
            return await _finish_json(call, queued)
        if store:  # stored once generated, even when the answer is then cut on the wire
            call.state.response_put(_StoredResponse(rid, owner, final))
        return await _finish_json(call, final)

    entry: _StoredResponse | None = None
    if background:  # retrievable (and cancellable) from the first event on
        start = _response_obj(call, rid, created, "queued", [], None, False)
        entry = _StoredResponse(rid, owner, start, background=True, events=[])
        call.state.response_put(entry)
    else:
        start = _response_obj(call, rid, created, "in_progress", [], None, False)
    seq = itertools.count()

    def ev(etype: str, **data: Any) -> bytes:
        n = next(seq)
        data = {"type": etype, "sequence_number": n, **data}
        raw = b"event: " + etype.encode() + b"\ndata: " + _dumps(data) + b"\n\n"
        if entry is not None and entry.events is not None:
            entry.events.append((n, raw))
        return raw

    resp = await _start_stream(call)
    try:
        await resp.write(ev("response.created", response=start))
        if entry is not None:
            await resp.write(ev("response.queued", response=start))
            start = {**start, "status": "in_progress"}
            entry.obj = start
        await resp.write(ev("response.in_progress", response=start))
        if tool is not None:
            await resp.write(
                ev(
                    "response.output_item.added",
                    output_index=0,
                    item={**item, "status": "in_progress", "arguments": ""},
                )
            )
        else:
            empty_part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
            await resp.write(
                ev(
                    "response.output_item.added",
                    output_index=0,
                    item={**item, "status": "in_progress", "content": []},
                )
            )
            await resp.write(
                ev(
                    "response.content_part.added",
                    item_id=item_id,
                    output_index=0,
                    content_index=0,
                    part=empty_part,
                )
            )
        cut, mid_error = call.cut, call.mid_error
        for i, piece in enumerate(pieces):
            if cut is not None and i >= cut:
                _close(call.request)
                return resp
            if mid_error is not None and i >= mid_error:
                break
            await call.pause()
            if entry is not None and entry.obj["status"] == "cancelled":  # POST .../cancel meanwhile
                await resp.write_eof()
                return resp
            if tool is not None:
                await resp.write(
                    ev("response.function_call_arguments.delta", item_id=item_id, output_index=0, delta=piece)
                )
            else:
                await resp.write(
                    ev(
                        "response.output_text.delta",
                        item_id=item_id,
                        output_index=0,
                        content_index=0,
                        delta=piece,
                        logprobs=[],
                    )
                )
        if cut is not None:
            _close(call.request)
            return resp
        if mid_error is not None:
            assert call.scen is not None and call.scen.status is not None  # mid_error comes from the scenario
            err = _error_body("openai", call.scen.status, call.scen)["error"]
            if entry is not None and call.state.response_live(entry) and not entry.done:
                error = {"code": err["code"] or "server_error", "message": err["message"]}
                entry.obj = {**start, "status": "failed", "error": error}
            await resp.write(ev("error", code=err["code"] or err["type"], message=err["message"], param=None))
            await resp.write_eof()
            return resp
        if tool is not None:
            await resp.write(
                ev(
                    "response.function_call_arguments.done",
                    item_id=item_id,
                    output_index=0,
                    name=tool[0],
                    arguments=tool[1],
                )
            )
        else:
            await resp.write(
                ev(
                    "response.output_text.done",
                    item_id=item_id,
                    output_index=0,
                    content_index=0,
                    text=part["text"],
                    logprobs=[],
                )
            )
            await resp.write(
                ev("response.content_part.done", item_id=item_id, output_index=0, content_index=0, part=part)
            )
        await resp.write(ev("response.output_item.done", output_index=0, item=item))
        if entry is not None:
            if call.state.response_live(entry) and not entry.done:
                entry.obj = final
        elif store:  # before the last event, so a client that saw it can already retrieve it
            call.state.response_put(_StoredResponse(rid, owner, final))
        await resp.write(ev("response.incomplete" if truncated else "response.completed", response=final))
        await resp.write_eof()
    except ConnectionError:
        pass
    finally:
        # A background response goes on when its stream is cut or its client leaves.
        if entry is not None and call.state.response_live(entry) and not entry.done:
            entry.obj = final
    return resp


async def _replay_events(state: UpstreamState, request: web.Request, entry: _StoredResponse) -> web.StreamResponse:
    """GET .../responses/{id}?stream=true[&starting_after=N]: a background stream's events again."""
    after = request.query.get("starting_after")
    try:
        last = int(after) if after is not None else -1
    except ValueError:
        return _openai_invalid(f"Invalid 'starting_after': '{after}'. Expected an integer.", "starting_after")
    events = entry.events if entry.events is not None else []
    resp = web.StreamResponse(status=200)
    resp.headers["Content-Type"] = "text/event-stream; charset=utf-8"
    resp.headers["Cache-Control"] = "no-cache"
    try:
        await resp.prepare(request)
        sent = 0
        while True:
            while sent < len(events):  # the list grows while a write is awaited
                n, raw = events[sent]
                sent += 1
                if n > last:
                    await resp.write(raw)
            # The writer records its last event in the same step as it finishes the response.
            if entry.done or not state.response_live(entry) or state.stopping:
                break
            await asyncio.sleep(0.01)
        await resp.write_eof()
    except ConnectionError:
        pass
    return resp


async def _stored(state: UpstreamState, request: web.Request, kind: str) -> web.StreamResponse:
    """GET / DELETE .../responses/{id} and POST .../responses/{id}/cancel."""
    match = _RESPONSE_PATH.search(request.path)
    assert match is not None  # _route only gives these kinds for such paths
    rid, owner = match["id"], _bearer(request)
    if kind == "response_delete":
        entry = state.response_pop(rid, owner)
        if entry is None:
            return _not_found(rid)
        entry.stop_timers()
        return _json_response({"id": rid, "object": "response", "deleted": True})
    entry = state.response_get(rid, owner)
    if entry is None:
        return _not_found(rid)
    if kind == "response_get":
        if request.query.get("stream", "").lower() == "true":
            if entry.events is None:
                return _openai_invalid(
                    "This response cannot be streamed because it was not created with background=true and stream=true.",
                    "stream",
                )
            return await _replay_events(state, request, entry)
        return _json_response(entry.obj)
    if not entry.background:
        return _openai_invalid("Cannot cancel a synchronous response.")
    if not entry.done:  # cancelling a finished background response returns it unchanged
        entry.stop_timers()
        entry.obj = {**entry.obj, "status": "cancelled"}
    return _json_response(entry.obj)


# --------------------------------------------------------------------------------------------------
# OpenAI Images
# --------------------------------------------------------------------------------------------------


def _image_payload(
    call: _Call,
    *,
    n: int,
    text_tokens: int,
    image_tokens: int,
    url: bool,
    background: str = "opaque",
) -> dict[str, Any]:
    """What generations and edits both answer: ``created``, ``data`` and (GPT image) ``usage``."""
    body = call.body
    size = body.get("size") or "1024x1024"
    quality = body.get("quality") or "auto"
    q = quality if quality in ("low", "medium", "high") else ("high" if quality == "hd" else "medium")
    per_image = IMAGE_TOKENS[("square" if size in ("1024x1024", "auto") else "wide", q)]
    tokens = _tokens(text_tokens + image_tokens, per_image * n, call.scen)
    if url:
        host = call.request.host
        data = [{"url": f"http://{host}/files/{_new_id('img_')}.png"} for _ in range(n)]
    else:
        data = [{"b64_json": PNG_B64} for _ in range(n)]
    payload: dict[str, Any] = {"created": int(time.time()), "data": data}
    model = call.model or ""
    if model.startswith("gpt-image"):
        payload.update(
            background=background,
            output_format=body.get("output_format") or "png",
            quality=q,
            size=size if size != "auto" else "1024x1024",
        )
    if not call.no_usage:
        image_part = min(image_tokens, tokens.prompt)  # a `prompt` override is the whole input
        payload["usage"] = {
            "input_tokens": tokens.prompt,
            "input_tokens_details": {"text_tokens": tokens.prompt - image_part, "image_tokens": image_part},
            "output_tokens": tokens.completion,
            "total_tokens": tokens.prompt + tokens.completion,
        }
    return payload


async def _images(call: _Call) -> web.StreamResponse:
    body = call.body
    n = body.get("n") or 1
    if not isinstance(n, int) or n < 1:
        return _error_response("openai", 400, None, "Invalid 'n': must be a positive integer.")
    prompt = max(1, count_words(body.get("prompt") or ""))
    url = body.get("response_format") == "url"
    return await _finish_json(call, _image_payload(call, n=n, text_tokens=prompt, image_tokens=0, url=url))


@dataclass(slots=True)
class _Upload:
    """One file of a multipart request: what is recorded of it (never its bytes)."""

    field: str
    filename: str | None
    content_type: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "filename": self.filename, "content_type": self.content_type, "size": self.size}


async def _read_form(request: web.Request) -> tuple[dict[str, Any], list[_Upload]]:
    """Text fields (strings, as sent) and files of a multipart/form-data body."""
    form = await request.post()
    text: dict[str, Any] = {}
    uploads: list[_Upload] = []
    for name, value in form.items():
        if isinstance(value, web.FileField):
            value.file.seek(0, os.SEEK_END)
            uploads.append(_Upload(name, value.filename, value.content_type, value.file.tell()))
            value.file.close()
        else:
            text[name] = value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
    return text, uploads


_GPT_IMAGE_ONLY = ("background", "input_fidelity", "output_compression", "output_format")


def _edit_model(body: dict[str, Any], images: int) -> str:
    """The model an edit runs on: dall-e-2 unless one is named or a GPT image field is used."""
    model = body.get("model")
    if model:
        return str(model)
    gpt = images > 1 or body.get("quality") in ("low", "medium", "high") or any(k in body for k in _GPT_IMAGE_ONLY)
    return "gpt-image-1" if gpt else "dall-e-2"


def _supported(types: tuple[str, ...]) -> str:
    quoted = [f"'{t}'" for t in types]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _edit_input_error(body: dict[str, Any], files: list[_Upload]) -> web.Response | None:
    """OpenAI's 400s for an edit request without an image or prompt, or with a non-image file."""
    images = [f for f in files if f.field in ("image", "image[]")]
    json_images = body.get("images")  # the JSON form of the endpoint: images[].image_url / file_id
    if not images and not json_images:
        for key in ("image", "image[]"):
            if isinstance(body.get(key), str):
                return _openai_invalid(
                    f"Invalid type for '{key}': expected one of an array of files or file, but got a string instead.",
                    key,
                    "invalid_type",
                )
        return _openai_invalid("Missing required parameter: 'image'.", "image", "missing_required_parameter")
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return _openai_invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    model = _edit_model(body, len(images) or len(json_images or []))
    allowed = ("image/png",) if model == "dall-e-2" else EDIT_IMAGE_TYPES
    for upload in images:
        if upload.content_type not in allowed:
            return _openai_invalid(
                f"Invalid file '{upload.field}': unsupported mimetype ('{upload.content_type}'). "
                f"Supported file formats are {_supported(allowed)}.",
                upload.field,
            )
    for upload in files:
        if upload.field == "mask" and upload.content_type != "image/png":
            return _openai_invalid(
                f"Invalid file 'mask': unsupported mimetype ('{upload.content_type}'). "
                "Supported file formats are 'image/png'.",
                "mask",
            )
    return None


async def _image_edits(call: _Call) -> web.StreamResponse:
    body = call.body
    raw_n = body.get("n") or 1
    try:
        n = int(raw_n)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        return _error_response("openai", 400, None, "Invalid 'n': must be a positive integer.")
    uploads = [f for f in call.files if f.field in ("image", "image[]")]
    count = len(uploads) or len(body.get("images") or [])
    call.model = _edit_model(body, count)
    per_image = EDIT_IMAGE_TOKENS + (EDIT_HIGH_FIDELITY_TOKENS if body.get("input_fidelity") == "high" else 0)
    background = body.get("background") if body.get("background") in ("transparent", "opaque") else "opaque"
    payload = _image_payload(
        call,
        n=n,
        text_tokens=max(1, count_words(body.get("prompt") or "")),
        image_tokens=per_image * count,
        # GPT image models always answer base64; only dall-e-2 still gives a URL.
        url=body.get("response_format") == "url" and call.model == "dall-e-2",
        background=str(background),
    )
    return await _finish_json(call, payload)


# --------------------------------------------------------------------------------------------------
# Gemini generateContent
# --------------------------------------------------------------------------------------------------


def _gemini_usage(t: _Tokens, candidates: int | None, image: bool = False) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": t.prompt}
    if candidates is not None:
        usage["candidatesTokenCount"] = candidates
    usage["totalTokenCount"] = t.prompt + (candidates or 0) + t.reasoning
    if t.cached:
        usage["cachedContentTokenCount"] = t.cached
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": t.prompt}]
    if image and candidates is not None:
        usage["candidatesTokensDetails"] = [{"modality": "IMAGE", "tokenCount": candidates}]
    if t.reasoning:
        usage["thoughtsTokenCount"] = t.reasoning
    return usage


async def _gemini(call: _Call, stream: bool) -> web.StreamResponse:
    body = call.body
    model = call.model or ""
    gen_cfg = body.get("generationConfig") or {}
    prompt = max(1, count_words(body.get("systemInstruction") or []) + count_words(body.get("contents") or []))
    names = []
    for tool in body.get("tools") or []:
        for decl in (tool.get("functionDeclarations") or []) if isinstance(tool, dict) else []:
            if isinstance(decl, dict) and decl.get("name"):
                names.append(decl["name"])
    tool = call.tool(names)
    image = "image" in model
    parts_list: list[list[dict[str, Any]]]
    if tool is not None:
        parts_list = [[{"functionCall": {"name": tool[0], "args": json.loads(tool[1])}}]]
        n_out, finish = 1, "STOP"
    elif image:
        parts: list[dict[str, Any]] = []
        if call.scen is not None and call.scen.content is not None:
            parts.append({"text": "".join(_split_pieces(call.scen.content))})
        parts.append({"inlineData": {"mimeType": "image/png", "data": PNG_B64}})
        parts_list = [parts]
        n_out, finish = GEMINI_IMAGE_TOKENS, "STOP"
    else:
        pieces, truncated = call.pieces(gen_cfg.get("maxOutputTokens"))
        parts_list = [[{"text": p}] for p in pieces] or [[{"text": ""}]]
        n_out, finish = len(pieces), "MAX_TOKENS" if truncated else "STOP"
        if not stream:
            parts_list = [[{"text": "".join(pieces)}]]
    tokens = _tokens(prompt, n_out, call.scen, reasoning_in_output=False)
    response_id = _new_id("")

    def make(parts: list[dict[str, Any]], done: bool, emitted: int) -> dict[str, Any]:
        cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if done:
            cand["finishReason"] = finish
        cand["index"] = 0
        out: dict[str, Any] = {"candidates": [cand]}
        if not call.no_usage:
            if done:
                out["usageMetadata"] = _gemini_usage(tokens, tokens.completion, image)
            else:
                out["usageMetadata"] = _gemini_usage(tokens, emitted or None, image)
        out["modelVersion"] = model
        out["responseId"] = response_id
        return out

    if not stream:
        return await _finish_json(call, make(parts_list[0], True, n_out))

    sse = call.request.query.get("alt") == "sse"
    if sse:
        resp = await _start_stream(call, "text/event-stream")
    else:
        resp = await _start_stream(call, "application/json; charset=UTF-8")
    last = len(parts_list) - 1
    cut, mid_error = call.cut, call.mid_error
    if cut is not None:
        cut = min(cut, last)  # the chunk carrying finishReason is never sent
    try:
        for i, parts in enumerate(parts_list):
            if cut is not None and i >= cut:
                if not sse and i:
                    await resp.write(b"\r\n")
                _close(call.request)
                return resp
            if mid_error is not None and i >= mid_error:
                break
            if i:
                await call.pause()
            data = _dumps(make(parts, i == last, i + 1))
            if sse:
                await resp.write(b"data: " + data + b"\r\n\r\n")
            else:
                await resp.write((b"[" if i == 0 else b",\r\n") + data)
        if mid_error is not None:
            assert call.scen is not None and call.scen.status is not None  # mid_error comes from the scenario
            err = _dumps(_error_body("gemini", call.scen.status, call.scen))
            if sse:
                await resp.write(b"data: " + err + b"\r\n\r\n")
            else:
                await resp.write((b"[" if mid_error == 0 else b",\r\n") + err + b"]")
            await resp.write_eof()
            return resp
        if not sse:
            await resp.write(b"]")
        await resp.write_eof()
    except ConnectionError:
        pass
    return resp


# --------------------------------------------------------------------------------------------------
# Models, files, control
# --------------------------------------------------------------------------------------------------


def _models(request: web.Request, provider: str) -> web.Response:
    if provider == "gemini":
        return _json_response(
            {
                "models": [
                    {
                        "name": f"models/{m}",
                        "version": "001",
                        "displayName": m,
                        "inputTokenLimit": 1048576,
                        "outputTokenLimit": 65536,
                        "supportedGenerationMethods": ["generateContent", "countTokens"],
                    }
                    for m in MODEL_IDS
                    if m.startswith("gemini")
                ]
            }
        )
    if provider == "anthropic":
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-09-29T00:00:00Z"}
            for m in MODEL_IDS
            if m.startswith("claude")
        ]
        return _json_response({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})
    return _json_response(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"} for m in MODEL_IDS],
        }
    )


async def _control(state: UpstreamState, request: web.Request) -> web.Response:
    action = request.path.rsplit("/", 1)[-1]
    if action == "script" and request.method == "POST":
        try:
            data = await request.json()
            items = data.get("scenarios", [data]) if isinstance(data, dict) else data
            if not isinstance(items, list):
                raise ValueError("expected a scenario object, a list, or {'scenarios': [...]}")
            scenarios = [Scenario.from_dict(item) for item in items]
        except (ValueError, TypeError) as exc:
            return _json_response({"error": str(exc)}, 400)
        for scen in scenarios:
            state.add(scen)
        return _json_response({"queued": len(state.pending)})
    if action == "script" and request.method == "GET":
        return _json_response({"scenarios": [s.to_dict() for s in state.pending]})
    if action == "reset" and request.method == "POST":
        state.reset()
        return _json_response({"ok": True})
    if action == "requests" and request.method == "GET":
        return _json_response({"requests": state.requests})
    if action == "health":
        return _json_response({"ok": True})
    if request.path.startswith("/__fake__/gate/") and request.method == "POST":
        state.open_gate(action)
        return _json_response({"opened": action})
    return _json_response({"error": f"unknown control endpoint {request.method} {request.path}"}, 404)


_GENERATORS = {
    "chat": ("openai", _chat),
    "responses": ("openai", _responses),
    "images": ("openai", _images),
    "image_edits": ("openai", _image_edits),
    "messages": ("anthropic", _messages),
    "count_tokens": ("anthropic", _count_tokens),
}
_REQUIRED = {
    "chat": ("model", "messages"),
    "responses": ("model",),
    "images": ("prompt",),
    "messages": ("model", "messages", "max_tokens"),
    "count_tokens": ("model", "messages"),
    "gemini": ("contents",),
}
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_STATEFUL = ("response_get", "response_delete", "response_cancel")  # stored Responses, no generation
_RESPONSE_PATH = re.compile(r"/responses/(?P<id>[^/]+)(?P<cancel>/cancel)?$")


def _route(method: str, path: str) -> tuple[str | None, str | None]:
    """(kind, gemini model) for a request path."""
    if method == "POST":
        if path.endswith("/chat/completions"):
            return "chat", None
        if path.endswith("/messages"):
            return "messages", None
        if path.endswith("/responses"):
            return "responses", None
        if path.endswith("/images/generations"):
            return "images", None
        if path.endswith("/images/edits"):
            return "image_edits", None
        if path.endswith("/messages/count_tokens"):
            return "count_tokens", None
        match = _RESPONSE_PATH.search(path)
        if match is not None and match["cancel"]:
            return "response_cancel", None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            model, _, verb = last.partition(":")
            if verb == "generateContent":
                return "gemini", model
            if verb == "streamGenerateContent":
                return "gemini_stream", model
    elif method == "GET":
        match = _RESPONSE_PATH.search(path)
        if match is not None and not match["cancel"]:
            return "response_get", None
        if path.endswith("/models"):
            return "models", None
        if "/models/" in path:
            return "model", None  # retrieve one model (OpenAI GET /v1/models/{id})
        if path.startswith("/files/") and path.endswith(".png"):
            return "file", None
    elif method == "DELETE":
        match = _RESPONSE_PATH.search(path)
        if match is not None and not match["cancel"]:
            return "response_delete", None
    return None, None


def _provider_for_models(request: web.Request) -> str:
    if "/v1beta/" in request.path or "x-goog-api-key" in request.headers or "key" in request.query:
        return "gemini"
    if "anthropic-version" in request.headers or "x-api-key" in request.headers:
        return "anthropic"
    return "openai"


SCENARIO = web.RequestKey("scenario", Scenario)  # the request's scenario, for handle() to post-process


def _make_handler(state: UpstreamState):
    async def handle(request: web.Request) -> web.StreamResponse:
        response = await answer(request)
        scen = request.get(SCENARIO)
        if scen is not None and scen.gzip and isinstance(response, web.Response) and response.body:
            assert isinstance(response.body, bytes)
            response.body = gzip.compress(response.body)
            response.headers["Content-Encoding"] = "gzip"
        return response

    async def answer(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/__fake__/"):
            return await _control(state, request)
        kind, gemini_model = _route(request.method, path)
        if kind is None:
            if state.record:
                state.add_record(_record(request, None))
            return _json_response(
                _openai_error(404, f"Unknown request URL: {request.method} {path}.", None, "unknown_url"), 404
            )
        if kind == "file":
            if state.record:
                state.add_record(_record(request, None))
            return web.Response(body=PNG_BYTES, content_type="image/png")

        body: Any = None
        files: list[_Upload] | None = None
        if kind == "image_edits" and request.content_type in _FORM_TYPES:
            try:
                body, files = await _read_form(request)
            except ValueError:
                body, files = "malformed form body", []
        elif request.method == "POST" and request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = raw.decode("utf-8", "replace")
        if state.record:
            state.add_record(_record(request, body, files))

        if kind in ("models", "model"):
            provider, model = _provider_for_models(request), None
            scen = state.take(None, path, generation=False)
        elif kind in _STATEFUL:
            provider, model = "openai", None
            scen = state.take(None, path, generation=False)
        else:
            provider = "gemini" if gemini_model is not None else _GENERATORS[kind][0]
            model = (
                gemini_model if gemini_model is not None else (body.get("model") if isinstance(body, dict) else None)
            )
            scen = state.take(model, path, generation=True)
        if scen is not None:
            request[SCENARIO] = scen

        denied = _check_auth(state, request, provider, scen)
        if denied is not None:
            return denied
        if kind not in ("models", "model", *_STATEFUL) and not isinstance(body, dict):
            if files is not None:
                return _error_response(provider, 400, None, "We could not parse the form body of your request.")
            return _error_response(provider, 400, None, "We could not parse the JSON body of your request.")
        if kind == "image_edits":
            invalid = _edit_input_error(body, files or [])
            if invalid is not None:
                return invalid
        required = _REQUIRED.get("gemini" if gemini_model is not None else kind, ())
        for key in required:
            if key not in body:
                return _error_response(provider, 400, None, f"{key}: Field required")
        if isinstance(body, dict) and body.get("tools") is not None and not isinstance(body["tools"], list):
            # What a real upstream says (the gateway passes `tools` through unchecked), not a 500.
            return _error_response(provider, 400, None, "tools: Input should be a valid list")

        if scen is not None and scen.hang:
            return await _hang(state, request)
        if scen is not None and scen.gate is not None:
            await state.wait_gate(scen.gate, request)
        delay = state.latency_ms + (scen.delay_first_byte_ms if scen is not None else 0)
        if delay:
            await asyncio.sleep(delay / 1000)

        if scen is not None and scen.status is not None and scen.error_after_chunks is None:
            usage = scen.usage
            if usage is True:
                usage = _default_error_usage(provider, kind, body)
            if scen.cut_after_chunks is not None:
                return await _cut_body(request, _dumps(_error_body(provider, scen.status, scen)), scen.status)
            return _error_response(provider, scen.status, scen, usage=usage)

        if kind == "models":
            return _models(request, provider)
        if kind == "model":
            return _json_response(_model(path.rsplit("/", 1)[-1], provider))
        if kind in _STATEFUL:
            return await _stored(state, request, kind)
        call = _Call(state, request, provider, body, model, scen, files)
        if gemini_model is not None:
            return await _gemini(call, stream=(kind == "gemini_stream"))
        return await _GENERATORS[kind][1](call)

    return handle


def _model(model_id: str, provider: str) -> dict[str, Any]:
    """One model, in the shape of the provider's own retrieve-model call."""
    if provider == "anthropic":  # GET /v1/models/{model_id}
        return {"type": "model", "id": model_id, "display_name": model_id, "created_at": "2025-05-14T00:00:00Z"}
    if provider == "gemini":  # GET /v1beta/models/{model}
        return {"name": f"models/{model_id}", "displayName": model_id, "inputTokenLimit": 1048576}
    return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "fake"}


def _default_error_usage(provider: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    if provider == "anthropic":
        return _anthropic_usage(_Tokens(_anthropic_prompt(body), 0))
    if provider == "gemini":
        t = _Tokens(max(1, count_words(body.get("contents") or [])), 0)
        return _gemini_usage(t, 0)
    if kind == "responses":
        return _responses_usage(_Tokens(max(1, count_words(body.get("input") or "")), 0))
    return _chat_usage(_Tokens(_chat_prompt(body), 0))


def _record(request: web.Request, body: Any, files: list[_Upload] | None = None) -> dict[str, Any]:
    rec = {
        "method": request.method,
        "path": request.path,
        "query": dict(request.query),
        "headers": {k.lower(): v for k, v in request.headers.items()},
        "json": body if files is None else None,
        "time": time.time(),
    }
    if files is not None:  # multipart: the text fields, and what each file was (never its bytes)
        rec["form"] = body
        rec["files"] = [f.to_dict() for f in files]
    return rec


# --------------------------------------------------------------------------------------------------
# Apps, servers, the in-process handle
# --------------------------------------------------------------------------------------------------

STATE_KEY = web.AppKey("fake_upstream_state", UpstreamState)


def make_app(state: UpstreamState | None = None, **opts: Any) -> web.Application:
    """An aiohttp application; ``opts`` are ``UpstreamState`` options when ``state`` is not given."""
    state = state if state is not None else UpstreamState(**opts)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = state
    app.router.add_route("*", "/{tail:.*}", _make_handler(state))
    return app


class FakeUpstream:
    """Handle on a fake upstream server, run in a daemon thread (``start``) or the current loop
    (``await astart()``). Scripting, recording and reset are thread-safe."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0,
        chunks: int = DEFAULT_CHUNKS,
        chunk_delay_ms: float = 0,
        record: bool = True,
        max_records: int = 200,
        api_key: str | None = None,
        max_responses: int = 1000,
        background_delay_ms: float = 200,
    ) -> None:
        self.host = host
        self.port = port
        self.state = UpstreamState(
            latency_ms=latency_ms,
            chunks=chunks,
            chunk_delay_ms=chunk_delay_ms,
            record=record,
            max_records=max_records,
            api_key=api_key,
            max_responses=max_responses,
            background_delay_ms=background_delay_ms,
        )
        self.app = make_app(self.state)
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # lifecycle --------------------------------------------------------------------------------------
    async def astart(self) -> FakeUpstream:
        self.state.stopping = False
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        server: Any = site._server  # the bound socket tells us the real port when port=0
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        return self

    async def astop(self) -> None:
        self.state.stopping = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.astart())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.astop())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self.state.stopping = True
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeUpstream:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    # info -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Recorded requests, oldest first: method, path, query, headers (lower-case keys), json."""
        return self.state.requests

    @property
    def last_request(self) -> dict[str, Any] | None:
        recs = self.state.requests
        return recs[-1] if recs else None

    @property
    def pending(self) -> list[Scenario]:
        return self.state.pending

    # scripting --------------------------------------------------------------------------------------
    def script(self, scenario: Scenario | dict[str, Any] | None = None, /, **kwargs: Any) -> Scenario:
        """Queue one scenario (see ``Scenario`` for the keywords)."""
        if scenario is None:
            scen = Scenario(**kwargs)
        elif isinstance(scenario, Scenario):
            scen = scenario
        else:
            scen = Scenario.from_dict({**scenario, **kwargs})
        return self.state.add(scen)

    def reset(self) -> None:
        """Forget queued scenarios, recorded requests, opened gates and stored responses."""
        self.state.reset()

    def open_gate(self, name: str) -> None:
        """Release every request held (and to be held) at the scenarios' gate ``name``."""
        self.state.open_gate(name)

    def waiting_at(self, name: str) -> int:
        return self.state.waiting_at(name)

    def configure(
        self,
        *,
        latency_ms: float | None = None,
        chunks: int | None = None,
        chunk_delay_ms=None,
        background_delay_ms: float | None = None,
        max_responses: int | None = None,
    ):
        if latency_ms is not None:
            self.state.latency_ms = latency_ms
        if chunks is not None:
            self.state.set_chunks(chunks)
        if chunk_delay_ms is not None:
            self.state.chunk_delay_ms = chunk_delay_ms
        if background_delay_ms is not None:
            self.state.background_delay_ms = background_delay_ms
        if max_responses is not None:
            self.state.max_responses = max_responses


async def serve(host: str = "127.0.0.1", port: int = 0, **opts: Any) -> FakeUpstream:
    """Start a fake upstream on the running loop; ``await handle.astop()`` to stop it."""
    return await FakeUpstream(host=host, port=port, **opts).astart()
