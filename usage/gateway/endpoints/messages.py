"""POST /v1/messages (and /v1/messages/count_tokens): the Anthropic Messages client format.

The SDK picks its exception class from the status code; the body is Anthropic's error shape with
our ids beside it, and a failed stream ends with `event: error` and never `message_stop`.
"""

from __future__ import annotations

import json

from openbili.core.errors import InvalidRequest, OpenbiliError
from usage.gateway.context import dumps
from usage.gateway.endpoints.base import Endpoint, Parsed, model_name, stream_flag
from usage.gateway.errors import anthropic_error_body
from usage.gateway.state import ModelInfo

MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def count_media(messages: list) -> tuple[int, bool]:
    """(image blocks, whether a document of unknown token count is present), tool results included."""
    images, documents = 0, False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        blocks = list(content)
        while blocks:
            block = blocks.pop()
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "image":
                images += 1
            elif kind == "document":
                source = block.get("source")
                # A text document's bytes bound its tokens; a PDF's pages (or a URL) do not.
                if not (isinstance(source, dict) and source.get("type") in ("text", "content")):
                    documents = True
            elif kind == "tool_result" and isinstance(block.get("content"), list):
                blocks.extend(block["content"])
    return images, documents


def validate_messages(body: dict) -> list:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: must be a non-empty array.", param="messages")
    return messages


class MessagesEndpoint(Endpoint):
    fmt = "messages"
    path = "/v1/messages"
    terminator = MESSAGE_STOP

    def validate(self, body: dict) -> Parsed:
        model = model_name(body)
        messages = validate_messages(body)
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            # Anthropic requires it; so does its SDK.
            raise InvalidRequest("max_tokens: required, a positive integer.", param="max_tokens")
        images, documents = count_media(messages)
        return Parsed(
            model=model,
            stream=stream_flag(body),
            max_tokens=max_tokens,
            wants_usage=True,  # usage is part of the format (message_start, message_delta)
            images=images,
            unbounded_input=documents,
        )

    def clamp(self, body: dict, parsed: Parsed, model: ModelInfo) -> int | None:
        assert parsed.max_tokens is not None
        applied = min(parsed.max_tokens, model.max_output_tokens)
        body["max_tokens"] = applied
        thinking = body.get("thinking")
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        # The budget must stay below max_tokens, or a clamped request would be refused upstream.
        if isinstance(thinking, dict) and isinstance(budget, int) and budget >= applied:
            body["thinking"] = {**thinking, "budget_tokens": max(applied - 1, 1)}
        return applied

    def error_body(self, error: OpenbiliError, *, request_id: str, trace_id: str) -> bytes:
        return json.dumps(anthropic_error_body(error, request_id=request_id, trace_id=trace_id)).encode()

    def stream_error(
        self,
        error: OpenbiliError,
        *,
        request_id: str,
        trace_id: str,
        sent: tuple[dict | None, dict | None] = (None, None),
    ) -> bytes:
        return b"event: error\ndata: " + self.error_body(error, request_id=request_id, trace_id=trace_id) + b"\n\n"

    def encode(self, event: dict) -> bytes:
        return b"event: " + str(event.get("type", "")).encode() + b"\ndata: " + dumps(event) + b"\n\n"


class CountTokensEndpoint(MessagesEndpoint):
    """Claude Code asks before each turn. No charge; one usage row like every request."""

    path = "/v1/messages/count_tokens"

    def validate(self, body: dict) -> Parsed:
        model = model_name(body)
        images, _ = count_media(validate_messages(body))
        return Parsed(model=model, stream=False, max_tokens=None, wants_usage=False, images=images)


ENDPOINT = MessagesEndpoint()
COUNT_TOKENS = CountTokensEndpoint()
