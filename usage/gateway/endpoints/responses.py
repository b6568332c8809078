"""POST /v1/responses: the OpenAI Responses client format.

Passed through on OpenAI routes; translated for Claude and Gemini routes (translate/). What this
module decides for every route:

- **Hosted tools are refused** (`web_search`, `file_search`, `code_interpreter`, `mcp`, …): they are
  billed per call and add input the request's bytes do not bound, and file search and remote MCP
  would reach the platform's own stores. Function and custom tools are the customer's own.
- **Stored state is per account.** OpenAI keeps responses under the platform's organisation, so
  a `previous_response_id` or a GET of another account's response would read a stranger's
  conversation: the gateway serves only ids its own usage rows gave this account, and sends a
  continuation to the route that stored it (endpoints/stored.py). `conversation` and stored
  `prompt` templates live in the platform's organisation too and are refused outright.
- **Background responses** (OpenAI routes, not streamed) are answered queued at once and billed
  when they finish: their hold and pending row outlive the request (deferred.py).
- A continuation's input includes the stored conversation, which the request's bytes do not
  bound: its hold covers the model's context window.

Streams carry usage in their last event (`response.completed`/`response.incomplete`), which the
lifecycle holds back until the bill is settled, like a chat `[DONE]`. A failed stream ends with
`response.failed` and an `error` event whose data carries an `error` object, so that the
official SDK raises APIError, and never with `response.completed`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from openbili.core.errors import InvalidRequest, OpenbiliError
from usage.gateway.context import dumps
from usage.gateway.endpoints import stored
from usage.gateway.endpoints.base import Endpoint, Parsed, model_name, positive_int, stream_flag
from usage.gateway.endpoints.served import adapter_for
from usage.gateway.errors import openai_error_body
from usage.gateway.state import ModelInfo

# Tools a Responses request may carry: the customer's own code runs them.
OWN_TOOLS = frozenset({"function", "custom"})
# Refused on every route, with why.
REFUSED = {
    "conversation": "Conversations are stored in the platform's organisation, not per account; send the "
    "conversation in `input`, or continue it with `previous_response_id`.",
    "prompt": "Stored prompt templates are not available through Openbili; send `instructions` and `input`.",
}
BACKGROUND_STREAM = (
    "Streaming a background response is not available through Openbili yet: create it without `stream` "
    "and poll GET /v1/responses/{id}."
)
STATEFUL = ("previous_response_id", "background")  # need a route that stores responses: OpenAI's
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})


def count_media(items: list) -> tuple[int, bool]:
    """(input_image parts, whether an input_file of unknown token count is present)."""
    images, files = 0, False
    for item in items:
        content = item.get("output") if item.get("type") == "function_call_output" else item.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "input_image":
                images += 1
            elif kind == "input_file":
                files = True
    return images, files


def _input(body: dict) -> list:
    value = body.get("input")
    if value is None:
        if not body.get("previous_response_id"):
            raise InvalidRequest("'input' is required.", param="input")
        return []
    if isinstance(value, str):
        return []
    if not isinstance(value, list):
        raise InvalidRequest("'input' must be a string or an array of input items.", param="input")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequest(f"'input[{index}]' must be an object.", param=f"input[{index}]")
    return value


def _tools(body: dict) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str) or kind not in OWN_TOOLS:
            raise InvalidRequest(
                f"Tool type {str(kind)[:50]!r} (tools[{index}]) is not available through Openbili: hosted tools "
                "are billed per call by the provider. Use function tools and run them yourself.",
                param=f"tools[{index}]",
                code="tool_not_supported",
            )


def _stateful(body: dict) -> None:
    for name, why in REFUSED.items():
        if body.get(name) is not None:
            raise InvalidRequest(why, param=name, code="unsupported_parameter")
    background = body.get("background")
    if background is not None and not isinstance(background, bool):
        raise InvalidRequest("'background' must be a boolean.", param="background")
    if background and body.get("store") is False:
        raise InvalidRequest("A background response must be stored: omit `store` or set it to true.", param="store")
    if background and body.get("stream"):
        raise InvalidRequest(BACKGROUND_STREAM, param="stream", code="unsupported_parameter")
    previous = body.get("previous_response_id")
    if previous is not None and not stored.well_formed(previous):
        raise InvalidRequest("'previous_response_id' must be a response id.", param="previous_response_id")
    store = body.get("store")
    if store is not None and not isinstance(store, bool):
        raise InvalidRequest("'store' must be a boolean.", param="store")


class ResponsesEndpoint(Endpoint):
    fmt = "responses"
    path = "/v1/responses"
    terminator = b""  # the final event is the upstream's own response.completed, held back (FINAL_EVENTS)
    final_events = FINAL_EVENTS
    track_sent = True

    def validate(self, body: dict) -> Parsed:
        model = model_name(body)
        items = _input(body)
        stream = stream_flag(body)
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise InvalidRequest("'instructions' must be a string.", param="instructions")
        _tools(body)
        _stateful(body)
        images, files = count_media(items)
        return Parsed(
            model=model,
            stream=stream,
            max_tokens=positive_int(body, "max_output_tokens"),
            wants_usage=True,  # a Responses stream always ends with its usage
            images=images,
            # A continuation carries the stored conversation, which these bytes do not bound.
            unbounded_input=files or body.get("previous_response_id") is not None,
            deferred=body.get("background") is True,
        )

    async def prepare(self, state: Any, ctx: Any, body: dict, model: ModelInfo) -> ModelInfo:
        stateful = next((name for name in STATEFUL if body.get(name) not in (None, False)), None)
        if stateful is None:
            return model
        passing = tuple(r for r in model.routes if (a := adapter_for(r.provider, self.fmt)) is not None and not a[1])
        if not passing:
            raise InvalidRequest(
                f"The model '{model.name}' is not served by OpenAI, which alone stores responses: send the "
                f"conversation in `input` instead of `{stateful}`.",
                param=stateful,
                code="unsupported_parameter",
            )
        return await stored.pin(state, ctx, body, dataclasses.replace(model, routes=passing))

    def clamp(self, body: dict, parsed: Parsed, model: ModelInfo) -> int | None:
        if parsed.max_tokens is None:
            return None
        body["max_output_tokens"] = min(parsed.max_tokens, model.max_output_tokens)
        return body["max_output_tokens"]

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
        first, last = sent
        started = first.get("response") if first is not None else None
        response = dict(started) if isinstance(started, dict) else {}
        response.setdefault("id", "resp_" + request_id.removeprefix("req_"))  # a stream that never began
        response.update(
            object="response",
            status="failed",
            error={"code": error.code, "message": error.message},
            output=[],
            usage=None,
        )
        response.setdefault("created_at", int(time.time()))
        sequence = last.get("sequence_number") if last is not None else None
        sequence = sequence + 1 if isinstance(sequence, int) else 0
        body = openai_error_body(error, request_id=request_id, trace_id=trace_id)
        failed = {"type": "response.failed", "sequence_number": sequence, "response": response}
        # The documented error event (code, message, param) with the error object beside them:
        # the SDK raises APIError on an event whose data has `error`.
        event = {"type": "error", "sequence_number": sequence + 1, "code": error.code, "message": error.message}
        event |= {"param": error.param} | body
        return self.encode(failed) + self.encode(event)

    def encode(self, event: dict) -> bytes:
        return b"event: " + str(event.get("type", "message")).encode() + b"\ndata: " + dumps(event) + b"\n\n"


ENDPOINT = ResponsesEndpoint()
