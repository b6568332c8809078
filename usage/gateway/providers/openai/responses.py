"""The OpenAI Responses API wire format (`POST /v1/responses` and its stored-response calls).

A stream is typed SSE (`event: response.output_text.delta` / `data: {...}`) with no `[DONE]`: it
ends with the event that carries the whole response and its usage — `response.completed`, or
`response.incomplete` when the model stopped at `max_output_tokens` (a success, billed). Those
are the stream's `final` events: the lifecycle holds them back until the bill is settled, as it
does a chat `[DONE]`. `response.failed` and `error` are upstream errors inside a 200 stream.

Usage is counted like Chat's, under other names: `input_tokens` includes
`input_tokens_details.cached_tokens` (subtracted by usage_from_openai), `output_tokens` includes
`output_tokens_details.reasoning_tokens`.
"""

from __future__ import annotations

import json

from openbili.core.errors import UpstreamError
from usage.gateway.providers.base import BlankLineReader, Event, Reply, UpstreamCall, sse_fields
from usage.gateway.providers.openai.chat import OpenAIProvider, api_url, json_headers, json_reply, usage_from_openai

# Events whose `delta` is generated output (what a missing usage is estimated from).
OUTPUT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
    }
)
FINAL = frozenset({"response.completed", "response.incomplete"})


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def output_bytes(response: dict) -> int:
    """UTF-8 bytes of the text in a response's output items: messages, refusals, function call
    names and arguments, reasoning summaries."""
    size = 0
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        for name in ("name", "arguments", "input"):
            if isinstance(item.get(name), str):
                size += _utf8_len(item[name])
        for part in (item.get("content") or ()) if isinstance(item.get("content"), list) else ():
            if isinstance(part, dict):
                text = part.get("text") if part.get("text") is not None else part.get("refusal")
                size += _utf8_len(text) if isinstance(text, str) else 0
        for part in item.get("summary") or () if isinstance(item.get("summary"), list) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                size += _utf8_len(part["text"])
    return size


def _error_message(data: dict) -> str:
    error = data.get("error")
    if not isinstance(error, dict):
        response = data.get("response")
        error = response.get("error") if isinstance(response, dict) else None
    message = error.get("message") if isinstance(error, dict) else data.get("message")
    return str(message)[:300] if message else "The upstream provider failed the response."


class ResponsesReader(BlankLineReader):
    """Cuts a Responses SSE stream into events and keeps score (see StreamReader); also keeps the
    upstream's response id (`response.created`), which a stored response is retrieved by."""

    def __init__(self) -> None:
        super().__init__()
        self.response_id = ""

    def _event(self, raw: bytes) -> Event:
        name_bytes, payload = sse_fields(raw)
        name = name_bytes.decode("utf-8", "replace")
        try:
            data = json.loads(payload) if payload is not None else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return Event(raw=raw, name=name)
        kind = str(data.get("type") or name)
        if kind in OUTPUT_DELTAS:
            delta = data.get("delta")
            if isinstance(delta, str) and delta:
                self.output_events += 1
                self.output_chars += _utf8_len(delta)
            return Event(raw=raw, data=data, name=name)
        response = data.get("response")
        if isinstance(response, dict):
            if not self.response_id and isinstance(response.get("id"), str):
                self.response_id = response["id"]
            usage = usage_from_openai(response.get("usage"))
            if usage is not None:
                self.usage = usage
        if kind in FINAL:
            self.completed = True
            return Event(raw=raw, data=data, name=name, final=True)
        if kind in ("response.failed", "error"):
            self.upstream_error = UpstreamError(_error_message(data), code="upstream_stream_interrupted")
        return Event(raw=raw, data=data, name=name)


class OpenAIResponsesProvider(OpenAIProvider):
    wire = "responses"

    def call(self, body, *, route, stream, client_headers):
        body["model"] = route.upstream_model
        return UpstreamCall("POST", api_url(route, "/responses"), json_headers(route.secret), json.dumps(body).encode())

    def reply(self, raw):
        data = json_reply(raw)
        if data is None:
            return Reply(data=None, usage=None, output_bytes=len(raw))
        return Reply(data=data, usage=usage_from_openai(data.get("usage")), output_bytes=output_bytes(data))

    def reader(self):
        return ResponsesReader()

    def stored_id(self, data, reader):
        if isinstance(reader, ResponsesReader):
            return reader.response_id
        return data["id"] if isinstance(data, dict) and isinstance(data.get("id"), str) else ""

    def stored_call(self, method: str, response_id: str, suffix: str, *, route, query: str = "") -> UpstreamCall:
        """A call on a stored response: GET/DELETE /responses/{id}, POST …/cancel, GET …/input_items."""
        url = api_url(route, f"/responses/{response_id}{suffix}") + (f"?{query}" if query else "")
        headers = json_headers(route.secret)
        return UpstreamCall(method, url, headers, b"{}" if method == "POST" else None)
