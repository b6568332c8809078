"""The provider interface: one module per UPSTREAM wire format.

A provider knows its upstream's wire format and nothing about the client: URL and auth, request
encoding (the body it gets is already in its own wire format — the client's own body when the
formats match, a translation otherwise, see usage/gateway/translate/), SSE framing, usage →
`TokenUsage` normalisation, error mapping and the probe call. The request lifecycle
(usage/gateway/lifecycle.py) never looks inside a provider's format, and a provider never builds a
client-format body.

Usage is normalised once, here (billing.money.TokenUsage): `input_tokens` exclude cached reads and
cache writes. OpenAI counts cached tokens inside prompt_tokens; Anthropic reports
cache_read_input_tokens and cache_creation_input_tokens beside input_tokens.

Wire formats (`Provider.wire`, and an endpoint's `fmt`): "chat" (OpenAI Chat Completions),
"messages" (Anthropic Messages), "responses" (OpenAI Responses), "images" and "image_edits" (OpenAI
Images generations and edits), "gemini" (Gemini generateContent, upstream only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from billing.money import TokenUsage
from openbili.core.errors import OpenbiliError


@dataclass(slots=True)
class UpstreamCall:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None


@dataclass(slots=True)
class Reply:
    """A complete (non-stream) upstream success, parsed. The raw bytes go to the client untouched
    when the formats match; `data` is what a translation works from."""

    data: dict | None  # the JSON object (None when the body is not one)
    usage: TokenUsage | None  # None: the upstream reported none (the lifecycle estimates it)
    output_bytes: int = 0  # UTF-8 bytes of the generated text, to estimate a missing usage
    images: int = 0  # images generated, counted from the answer: billed even when usage is missing


@dataclass(slots=True)
class UpstreamFailure:
    """An upstream error mapped to the contract, with the usage the upstream reported, if any."""

    error: OpenbiliError
    usage: TokenUsage | None = None
    retryable: bool = False


@dataclass(slots=True)
class Event:
    """One upstream SSE event.

    `raw` is the event exactly as received, terminating blank line included: a pass-through relay
    forwards it untouched. `data` is its parsed JSON payload (None for comments, keep-alives,
    OpenAI's `[DONE]` and anything unparsable); `name` its `event:` field ("" when absent).
    `final` marks the upstream's terminator (OpenAI `data: [DONE]`, Anthropic `message_stop`),
    which the lifecycle holds back until the bill is settled. `hidden` marks an event a
    pass-through relay forwards only when the client asked for usage (OpenAI's usage-only chunk,
    which the gateway always requests).
    """

    raw: bytes
    data: dict | None = None
    name: str = ""
    final: bool = False
    hidden: bool = False


class StreamReader:
    """Cuts an upstream stream into events and keeps score as they pass.

    `feed(bytes)` returns the complete events in the bytes so far (a partial event waits in the
    buffer for the next call) and updates: `usage` (the latest usage the upstream reported,
    normalised), `output_events` (events that carried generated output), `output_chars` (UTF-8
    bytes of generated text: content, reasoning, tool-call names and arguments — what a missing
    usage is estimated from), `completed` (the terminator arrived) and `upstream_error` (an error
    event inside a 200 stream; the lifecycle stops there, bills what was consumed and sends the
    client an error event of its own format). The error event itself is not returned, nor
    anything after it: the client must never see the upstream's error in the upstream's format.

    `input_usage` is the input side the upstream reported before the end (Anthropic's
    message_start: input, cache reads and writes), for a stream cut before its final usage: its
    input is billed as reported and only the output is estimated.
    """

    def __init__(self) -> None:
        self.usage: TokenUsage | None = None
        self.input_usage: TokenUsage | None = None
        self.output_events = 0
        self.output_chars = 0
        self.completed = False
        self.upstream_error: OpenbiliError | None = None
        self._buffer = b""

    def feed(self, data: bytes) -> list[Event]:  # pragma: no cover - interface
        raise NotImplementedError


class BlankLineReader(StreamReader):
    """A StreamReader for SSE whose events end with a blank line of either ending, "\n\n" or
    "\n\r\n" (which covers "\r\n\r\n" and a mix): Anthropic's and Google's. Subclasses parse one
    event's bytes in `_event`, setting `upstream_error` on an error event."""

    def feed(self, data: bytes) -> list[Event]:
        previous = self._buffer
        buffer = previous + data if previous else data
        # The leftover buffer holds no separator, so the search resumes just before its end (a
        # separator may straddle two feeds), and each pattern is searched once per event: a big
        # feed is scanned in linear time.
        scan = max(len(previous) - 2, 0)
        lf = buffer.find(b"\n\n", scan)
        crlf = buffer.find(b"\n\r\n", scan)
        events = []
        start = 0
        while (lf >= 0 or crlf >= 0) and self.upstream_error is None:
            end = lf + 2 if crlf < 0 or 0 <= lf < crlf else crlf + 3
            event = self._event(buffer[start:end])
            start = end
            if self.upstream_error is None:  # the error event, and what follows, is not forwarded
                events.append(event)
            if 0 <= lf < start:
                lf = buffer.find(b"\n\n", start)
            if 0 <= crlf < start:
                crlf = buffer.find(b"\n\r\n", start)
        self._buffer = buffer[start:] if start else buffer
        return events

    def _event(self, raw: bytes) -> Event:  # pragma: no cover - interface
        raise NotImplementedError


def sse_fields(raw: bytes) -> tuple[bytes, bytes | None]:
    """(the `event:` name, the `data:` payload — its lines joined — or None) of one SSE event."""
    name = b""
    payload: list[bytes] = []
    for line in raw.splitlines():
        if not line or line[0] == 0x3A:  # blank, or a ":" comment
            continue
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            payload.append(value)
        elif field == b"event":
            name = value
    if not payload:
        return name, None
    return name, payload[0] if len(payload) == 1 else b"\n".join(payload)


class Provider:
    name: str = ""  # the route's `provider` value
    wire: str = ""  # the wire format of its request and response bodies (see the module docstring)
    # The client formats this provider's IMAGE models answer (served.py): OpenAI's image models
    # only the image endpoints, Gemini's also chat (their images come inside the answer).
    image_formats: tuple[str, ...] = ()

    def call(self, body: dict, *, route, stream: bool, client_headers: Mapping[str, bytes]) -> UpstreamCall:
        """The HTTP call for one attempt. `body` is this attempt's own copy, in `wire` format: set
        the upstream model name (route.upstream_model), ask for usage on streams, add auth
        (route.secret, route.base_url). `client_headers` (lower-case names) is for headers the
        format defines for clients to choose, e.g. `anthropic-version`, `anthropic-beta`."""
        raise NotImplementedError

    def reply(self, raw: bytes) -> Reply:
        """Parse a non-stream 2xx body. Raises UpstreamError on a malformed body."""
        raise NotImplementedError

    def reader(self) -> StreamReader:
        raise NotImplementedError

    def failure(self, *, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
        """Map an upstream error response. Retryable: 5xx (and the provider's 'overloaded')."""
        raise NotImplementedError

    def probe_call(self, *, kind: str, upstream_model: str, base_url: str, secret: str) -> UpstreamCall:
        """The cheapest real request that proves the route works."""
        raise NotImplementedError

    def stored_id(self, data: dict | None, reader: StreamReader | None) -> str:
        """The id under which the upstream stored this answer for later calls (the Responses
        API's response id), from the whole reply's `data` or the stream's reader; "" if none."""
        return ""

    def count_tokens_call(self, body: dict, *, route, client_headers: Mapping[str, bytes]) -> UpstreamCall | None:
        """The upstream's own token counting for a Messages body, when it has one (else None)."""
        return None
