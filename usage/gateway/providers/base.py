"""The upstream adapter interface: one adapter per upstream wire format.

The request lifecycle (usage/gateway/lifecycle.py) never looks inside a provider's format. It asks
the route's adapter to
- `prepare` the upstream HTTP call from the client's request (translating formats if needed,
  putting the upstream model name in, and asking for usage on streams),
- `parse` a non-stream success into the bytes for the client and the normalised usage,
- `stream_relay` a stream: an object fed upstream bytes that returns the bytes to forward and
  tracks usage, output and completion,
- map an upstream error (`error`) to the contract's error, with any usage it reported,
- `probe` a route with the cheapest real request.

Usage is normalised once, here (billing.money.TokenUsage): input tokens exclude cached reads and
cache writes; OpenAI counts cached tokens inside prompt_tokens, Anthropic beside input_tokens.
The client-facing formats are OpenAI Chat Completions (`chat`), OpenAI Responses (`responses`),
OpenAI Images (`images`) and Anthropic Messages (`messages`); an adapter declares which it serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from billing.money import TokenUsage
from openbili.core.errors import OpenbiliError


@dataclass(slots=True)
class UpstreamCall:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None


@dataclass(slots=True)
class UpstreamReply:
    """A complete (non-stream) upstream success, ready for the client."""

    body: bytes
    usage: TokenUsage | None
    content_type: str = "application/json"
    output_bytes: int | None = None  # size of the generated text, to estimate a missing usage


@dataclass(slots=True)
class UpstreamFailure:
    """An upstream error mapped to the contract, with the usage the upstream reported, if any."""

    error: OpenbiliError
    usage: TokenUsage | None = None
    retryable: bool = False


@dataclass
class StreamRelay:
    """Fed upstream stream bytes; returns what to forward to the client.

    `final` holds the terminating event ([DONE], message_stop), kept back so the gateway can
    settle the bill before the client sees the stream end.
    """

    client_wants_usage: bool = False
    usage: TokenUsage | None = None
    output_events: int = 0
    output_chars: int = 0
    completed: bool = False
    upstream_error: OpenbiliError | None = None
    final: bytes = b""
    _buffer: bytes = field(default=b"", repr=False)

    def feed(self, data: bytes) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def error_event(self, error: OpenbiliError, *, request_id: str, trace_id: str) -> bytes:  # pragma: no cover
        raise NotImplementedError


class Adapter:
    provider: str = ""
    serves: frozenset[str] = frozenset()  # client formats this adapter can serve

    def prepare(
        self, *, fmt: str, body: dict, upstream_model: str, base_url: str, secret: str, stream: bool
    ) -> UpstreamCall:
        raise NotImplementedError

    def parse(self, *, fmt: str, body: bytes) -> UpstreamReply:
        raise NotImplementedError

    def stream_relay(self, *, fmt: str, client_wants_usage: bool) -> StreamRelay:
        raise NotImplementedError

    def failure(self, *, status: int, body: bytes, headers) -> UpstreamFailure:
        raise NotImplementedError

    def probe_call(self, *, kind: str, upstream_model: str, base_url: str, secret: str) -> UpstreamCall:
        raise NotImplementedError
