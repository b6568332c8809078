"""POST /v1/chat/completions: the OpenAI Chat Completions client format."""

from __future__ import annotations

import json

from openbili.core.errors import InvalidRequest, OpenbiliError
from usage.gateway.context import dumps
from usage.gateway.endpoints.base import Endpoint, Parsed, model_name, positive_int, stream_flag
from usage.gateway.errors import openai_error_body, openai_stream_error
from usage.gateway.state import ModelInfo

OUTPUT_LIMITS = ("max_completion_tokens", "max_tokens")


def count_media(messages: list) -> tuple[int, bool]:
    """(image parts, whether a file part of unknown token count is present)."""
    images, files = 0, False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "image_url":
                    images += 1
                elif kind == "file":
                    files = True
    return images, files


class ChatEndpoint(Endpoint):
    fmt = "chat"
    path = "/v1/chat/completions"
    terminator = b"data: [DONE]\n\n"

    def validate(self, body: dict) -> Parsed:
        model = model_name(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
        stream = stream_flag(body)
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
        requested = None
        for name in OUTPUT_LIMITS:
            value = positive_int(body, name)
            if value is not None:
                requested = value if requested is None else min(requested, value)
        n = body.get("n", 1)
        if n is None:
            n = 1
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
            raise InvalidRequest("'n' must be an integer between 1 and 128.", param="n")
        images, files = count_media(messages)
        return Parsed(
            model=model,
            stream=stream,
            max_tokens=requested,
            # Read before the provider turns include_usage on for the upstream.
            wants_usage=isinstance(options, dict) and options.get("include_usage") is True,
            choices=n,
            images=images,
            unbounded_input=files,
        )

    def clamp(self, body: dict, parsed: Parsed, model: ModelInfo) -> int | None:
        if parsed.max_tokens is None:
            return None
        limit = model.max_output_tokens
        for name in OUTPUT_LIMITS:
            if body.get(name) is not None:
                body[name] = min(body[name], limit)
        return min(parsed.max_tokens, limit)

    def error_body(self, error: OpenbiliError, *, request_id: str, trace_id: str) -> bytes:
        return json.dumps(openai_error_body(error, request_id=request_id, trace_id=trace_id)).encode()

    def stream_error(
        self,
        error: OpenbiliError,
        *,
        request_id: str,
        trace_id: str,
        sent: tuple[dict | None, dict | None] = (None, None),
    ) -> bytes:
        return openai_stream_error(error, request_id=request_id, trace_id=trace_id)

    def encode(self, event: dict) -> bytes:
        return b"data: " + dumps(event) + b"\n\n"


ENDPOINT = ChatEndpoint()
