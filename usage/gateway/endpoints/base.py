"""The endpoint interface: one module per CLIENT wire format.

An endpoint owns what its format says and nothing else: request validation and the fields to
clamp, whether the client asked for usage on a stream, the bound on the request's maximum cost,
the error body, the stream's events, error event and terminator. The lifecycle
(usage/gateway/lifecycle.py) runs every endpoint the same way and never builds client JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from openbili.core.errors import InvalidRequest, OpenbiliError
from usage.gateway.context import parse_json_object
from usage.gateway.state import ModelInfo

# The row's integer columns hold at most 2**31 - 1; a huge max_tokens is clamped, never rejected.
MAX_RECORDED_TOKENS = 2**31 - 1

# Tokens an upstream may count beyond the request's own bytes: chat templates, role markers and
# the tool-use system prompt Anthropic adds when tools are present (346 tokens). A text token
# covers at least one byte of the JSON that carries it, so bytes + this bound the text input.
TEMPLATE_TOKENS = 1024

# An image costs at most this many input tokens whatever its size, because every provider resizes
# before counting: OpenAI high detail tops out at 765 (4 tiles + 85), its patch models at 1,536,
# Anthropic at ~1,600 (1.15 megapixels / 750). A URL costs a few bytes and a data URL's bytes need
# not cover its tokens, so each image adds this on top of the request's bytes.
IMAGE_TOKENS = 2048


def estimate_tokens(byte_count: int) -> int:
    """Rough tokens for bytes we saw but the upstream did not count (about 4 bytes a token)."""
    return math.ceil(byte_count / 4)


@dataclass(slots=True)
class Parsed:
    """What the lifecycle needs to know of a valid request."""

    model: str
    stream: bool
    max_tokens: int | None  # requested by the client (None: not given)
    wants_usage: bool  # the client asked for usage in the stream (Messages: always)
    choices: int = 1  # Chat `n`: output is bounded per choice
    images: int = 0  # image parts (each adds IMAGE_TOKENS to the input bound)
    images_out: int = 0  # images the request asks to generate (each held at the per-image price)
    unbounded_input: bool = False  # content fetched by URL of unknown size (a PDF): bound by the context
    deferred: bool = False  # answered before the work is done (a background response): billed later


def positive_int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
    return value


def stream_flag(body: dict) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    return stream


def model_name(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    return model


class Endpoint:
    fmt: str = ""  # the client wire format: "chat" | "messages"
    path: str = ""
    terminator: bytes = b""  # the stream's last event, sent once the bill is settled
    # The largest body this endpoint reads (413 beyond); None: OPENBILI_MAX_BODY_BYTES, 32 MiB by
    # default. Anthropic takes 32 MB on Messages and on token counting alike (Claude Code counts
    # the very conversation it then sends); OpenAI's chat takes up to 50 MB of images, held here
    # to the same bound so that one request's worst case is one figure for the whole process. The
    # three JSON endpoints keep the default; one that takes files (audio, batches) sets its own.
    max_body_bytes: int | None = None
    # Translated stream events of these types end a successful stream: held back, like the
    # terminator, until the bill is settled (Responses' response.completed carries the usage).
    final_events: frozenset[str] = frozenset()
    track_sent = False  # the lifecycle keeps the stream's first and last events for stream_error

    def parse(self, raw: bytes, content_type: str) -> dict:
        """The request body as a dict (JSON here; the image edits endpoint reads multipart)."""
        return parse_json_object(raw)

    def validate(self, body: dict) -> Parsed:
        raise NotImplementedError

    def clamp(self, body: dict, parsed: Parsed, model: ModelInfo) -> int | None:
        """Clamp the output limit fields to the model's (never reject); the applied value."""
        raise NotImplementedError

    def input_bound(self, raw: bytes, parsed: Parsed, model: ModelInfo) -> int:
        """The most input tokens this request can be billed for."""
        if parsed.unbounded_input:
            return model.context_window
        return min(len(raw) + TEMPLATE_TOKENS + IMAGE_TOKENS * parsed.images, model.context_window)

    def output_bound(self, parsed: Parsed, applied: int | None, model: ModelInfo) -> int:
        return (applied or model.max_output_tokens) * parsed.choices

    def prompt_bytes(self, raw: bytes, body: dict) -> int:
        """The bytes a missing usage's input is estimated from: the request's (an image edit's
        files are not its prompt)."""
        return len(raw)

    async def prepare(self, state: Any, ctx: Any, body: dict, model: ModelInfo) -> ModelInfo:
        """After the model is resolved, before the hold: the model to serve the request with (its
        routes narrowed, say, to the one that stored a conversation). Refusals raise."""
        return model

    async def deliver(self, call: Any, data: dict | None, out: bytes | None) -> bytes:
        """The whole answer's bytes for the client: `out` when the upstream's passed through,
        else `data` (the translated reply) encoded. The image endpoints store the images here."""
        return out if out is not None else json.dumps(data).encode()

    def error_body(self, error: OpenbiliError, *, request_id: str, trace_id: str) -> bytes:
        raise NotImplementedError

    def stream_error(
        self,
        error: OpenbiliError,
        *,
        request_id: str,
        trace_id: str,
        sent: tuple[dict | None, dict | None] = (None, None),
    ) -> bytes:
        """The event that ends a failed stream (never followed by the terminator). `sent` is the
        first and the last event the client got, parsed, for formats whose error event names its
        stream (a Responses stream's id and sequence numbers); kept only for those (track_sent)."""
        raise NotImplementedError

    def encode(self, event: dict) -> bytes:
        """One translated stream event for the wire."""
        raise NotImplementedError
