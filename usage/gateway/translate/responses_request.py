"""The OpenAI Responses format on both sides of every translation from it to another upstream
(responses_to_anthropic, responses_to_gemini).

Reading the request: what the client's fields must be is the Responses format's, and is checked
once, here; each translation then writes its upstream's shape. Writing the reply: the `response`
object, its output items and the stream events that build them are the same Responses format
whichever upstream answered, so `Reply` builds them for both (a non-stream reply is built by the
same calls as a stream, its events discarded: the two cannot drift apart).

A JSON `null` counts as absent everywhere: SDKs and proxies send explicit nulls for unset fields.
Wire shapes: platform.openai.com/docs/api-reference/responses (create, the response object,
streaming events) and the official `openai` SDK's `types/responses`.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from openbili.core.errors import InvalidRequest
from usage.gateway.translate.chat_request import FunctionTool, PartConverter, data_url, part_text
from usage.gateway.translate.chat_request import invalid as _invalid
from usage.gateway.translate.chat_request import is_int as _is_int
from usage.gateway.translate.chat_request import is_number as _is_number

# ---------------------------------------------------------------------------------------------
# Request: what needs OpenAI's stored state
# ---------------------------------------------------------------------------------------------

# Fields that only work with state OpenAI keeps between requests. Another upstream keeps none, and
# pretending (answering without the earlier turns) would silently change the answer.
STATEFUL = {
    "previous_response_id": "continues a response stored by OpenAI",
    "conversation": "continues a conversation stored by OpenAI",
    "prompt": "uses a prompt template stored by OpenAI",
}


def refuse_stateful(body: dict) -> None:
    """A 400 for any feature that needs OpenAI's server-side state (previous_response_id,
    conversation, stored prompts, background runs, store: true)."""
    for name, what in STATEFUL.items():
        if body.get(name) is not None:
            raise _stateful(name, what)
    if body.get("background") is True:
        raise _stateful("background", "runs the response in the background, to be fetched later from OpenAI")
    # OpenAI's default is store: true, but a client that does not say so does not rely on it.
    if body.get("store") is True:
        raise _stateful("store", "keeps the response at OpenAI, to be fetched or continued later")


def _stateful(name: str, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"`{name}` {what}: it works only for models served by an OpenAI route. For this model, send the "
        "whole conversation in `input` on every request (and omit `store` or set it to false).",
        param=name,
        code="unsupported_parameter",
    )


# ---------------------------------------------------------------------------------------------
# Request: fields both translations treat alike
# ---------------------------------------------------------------------------------------------

# `include` values this translation honours. reasoning.encrypted_content: reasoning items carry
# what the upstream gives to send them back (Anthropic's thinking signature; Gemini: none).
# message.input_image.image_url is about listing stored input items: there are none, a no-op.
# The rest are outputs of built-in tools, which are refused in `tools`, so they never occur.
# message.output_text.logprobs is not here: neither upstream's logprobs are translated.
INCLUDABLE = frozenset(
    {
        "reasoning.encrypted_content",
        "message.input_image.image_url",
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
    }
)

# Responses reasoning efforts, each translation's budgets are keyed by these.
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
SUMMARIES = ("auto", "concise", "detailed")


def refuse_uncarriable(body: dict) -> None:
    """A 400 for the request fields neither upstream can carry at a value that changes the output."""
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list) or not all(isinstance(v, str) for v in include):
            raise _invalid("`include` must be a list of strings.", "include")
        for value in include:
            if value not in INCLUDABLE:
                raise _invalid(f"`include` value {value!r} is not available for this model.", "include")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None and top_logprobs != 0:
        raise _invalid("`top_logprobs` is not available for this model.", "top_logprobs")
    truncation = body.get("truncation")
    if truncation is not None and truncation not in ("auto", "disabled"):
        raise _invalid("`truncation` must be 'auto' or 'disabled'.", "truncation")
    text = body.get("text")
    if text is not None and not isinstance(text, dict):
        raise _invalid("`text` must be an object.", "text")
    verbosity = (text or {}).get("verbosity")
    if verbosity is not None and verbosity != "medium":
        raise _invalid("`text.verbosity` is not available for this model; omit it.", "text.verbosity")


def max_output_tokens(body: dict, limit: int) -> int:
    """The client's max_output_tokens, clamped to the model's output limit (its default)."""
    value = body.get("max_output_tokens")
    if value is None:
        return limit
    if not _is_int(value) or value < 1:
        raise _invalid("`max_output_tokens` must be a positive integer.", "max_output_tokens")
    return min(value, limit)


def number(body: dict, name: str, low: float, high: float, why: str = "") -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_number(value) or not low <= value <= high:
        raise _invalid(f"`{name}` must be a number between {low:g} and {high:g} for this model{why}.", name)
    return value


def instructions(body: dict) -> str | None:
    value = body.get("instructions")
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid("`instructions` must be a string.", "instructions")
    return value or None


@dataclass(frozen=True, slots=True)
class Reasoning:
    effort: str | None
    summary: str | None  # None: the client asked for no reasoning summary


def reasoning(body: dict) -> Reasoning:
    value = body.get("reasoning")
    if value is None:
        return Reasoning(None, None)
    if not isinstance(value, dict):
        raise _invalid("`reasoning` must be an object.", "reasoning")
    effort = value.get("effort")
    if effort is not None and effort not in EFFORTS:
        raise _invalid(f"`reasoning.effort` must be one of {', '.join(EFFORTS)}.", "reasoning.effort")
    # generate_summary is the deprecated name of summary.
    summary = value.get("summary") if value.get("summary") is not None else value.get("generate_summary")
    if summary is not None and summary not in SUMMARIES:
        raise _invalid(f"`reasoning.summary` must be one of {', '.join(SUMMARIES)}.", "reasoning.summary")
    return Reasoning(effort, summary)


def user_id(body: dict) -> str | None:
    """The end user's stable id: safety_identifier, or the older `user` it replaces."""
    for name in ("safety_identifier", "user"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise _invalid(f"`{name}` must be a string.", name)
            return value
    return None


def parallel_tool_calls(body: dict) -> bool:
    value = body.get("parallel_tool_calls")
    if value is not None and not isinstance(value, bool):
        raise _invalid("`parallel_tool_calls` must be a boolean.", "parallel_tool_calls")
    return value is not False


# ---------------------------------------------------------------------------------------------
# Request: tools, tool_choice, text.format
# ---------------------------------------------------------------------------------------------


def function_tools(body: dict) -> list[FunctionTool]:
    """The `tools`, every one a function tool (`strict` is each translation's business)."""
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _invalid("`tools` must be a list.", "tools")
    return [_function_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]


def _function_tool(tool: Any, param: str) -> FunctionTool:
    if not isinstance(tool, dict):
        raise _invalid(f"{param} must be an object.", param)
    kind = tool.get("type")
    if kind == "custom":
        # A custom tool's input is free-form text (optionally a grammar); the other upstreams' tools
        # take a JSON object, so the model would be asked for something else.
        raise _invalid(
            f"{param}: custom (free-form) tools are available only on OpenAI routes; use a function tool.", param
        )
    if kind != "function":
        # web_search, file_search, code_interpreter, computer_use, image_generation, mcp, shell...:
        # OpenAI runs these itself; this model's upstream cannot.
        raise InvalidRequest(
            f"{param}.type {kind!r}: built-in tools are available only on OpenAI routes; this model takes "
            "function tools only.",
            param=param,
            code="tool_not_supported",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{param}.name must be a non-empty string.", f"{param}.name")
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise _invalid(f"{param}.description must be a string.", f"{param}.description")
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise _invalid(f"{param}.parameters must be a JSON schema object.", f"{param}.parameters")
    return FunctionTool(name, description, parameters)


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: str  # "auto" | "none" | "required" | "function"
    name: str | None = None  # the function, for mode "function"


def tool_choice(body: dict) -> ToolChoice | None:
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return ToolChoice(choice)
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid("tool_choice.name must be a non-empty string.", "tool_choice.name")
        return ToolChoice("function", name)
    # allowed_tools, hosted tool types, mcp, custom: not carried.
    raise _invalid(
        "`tool_choice` must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...} for this model.",
        "tool_choice",
    )


@dataclass(frozen=True, slots=True)
class TextFormat:
    kind: str  # "json_object" | "json_schema"
    schema: dict | None  # the client's own schema object (json_schema): copy it before sending it on


def text_format(body: dict) -> TextFormat | None:
    """`text.format`; None for plain text."""
    value = (body.get("text") or {}).get("format")
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise _invalid("`text.format` must be an object with a `type`.", "text.format")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return TextFormat(kind, None)
    if kind == "json_schema":
        if not isinstance(value.get("schema"), dict):
            raise _invalid("text.format.schema must be a JSON schema object.", "text.format.schema")
        return TextFormat(kind, value["schema"])
    raise _invalid(f"text.format.type {kind!r} is not supported (text, json_object, json_schema).", "text.format.type")


# ---------------------------------------------------------------------------------------------
# Request: input items
# ---------------------------------------------------------------------------------------------

# The input item types a translation can carry. `item_reference` points into OpenAI's storage;
# the others are calls and outputs of built-in tools, which no other upstream runs.
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
ROLES = ("user", "assistant", "system", "developer")


@dataclass(frozen=True, slots=True)
class Item:
    param: str  # where it stands in the client's body: "input", "input[3]"
    type: str  # one of ITEM_TYPES
    data: dict  # the client's item: read it, never change it


def input_items(body: dict) -> list[Item]:
    """`input` as a list of items: a string is one user message."""
    value = body.get("input")
    if isinstance(value, str):
        return [Item("input", "message", {"type": "message", "role": "user", "content": value})]
    if not isinstance(value, list) or not value:
        raise _invalid("`input` must be a string or a non-empty list of input items.", "input")
    items = []
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _invalid(f"{param} must be an object.", param)
        # EasyInputMessage may leave `type` out.
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "item_reference":
            raise _invalid(
                f"{param}: `item_reference` points at an item stored by OpenAI, which this model's upstream "
                "cannot read; send the item itself.",
                param,
            )
        if kind not in ITEM_TYPES:
            raise _invalid(
                f"{param}.type {kind!r} is not supported for this model (supported: {', '.join(ITEM_TYPES)}).", param
            )
        items.append(Item(param, str(kind), item))
    return items


def message_role(item: Item) -> str:
    role = item.data.get("role")
    if role not in ROLES:
        raise _invalid(f"{item.param}.role must be one of {', '.join(ROLES)}.", f"{item.param}.role")
    return str(role)


def content_parts(content: Any, param: str, *, role: str) -> list[tuple[str, dict]]:
    """(param, part) for each content part of a message; a string is one text part."""
    if isinstance(content, str):
        kind = "output_text" if role == "assistant" else "input_text"
        return [(param, {"type": kind, "text": content})]
    if not isinstance(content, list):
        raise _invalid(f"{param} must be a string or a list of content parts.", param)
    parts = []
    for j, part in enumerate(content):
        part_param = f"{param}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _invalid(f"{part_param} must be an object with a `type`.", part_param)
        parts.append((part_param, part))
    return parts


def unsupported_part(part: dict, param: str, supported: list[str] | tuple[str, ...]) -> InvalidRequest:
    return _invalid(
        f"{param}.type {part.get('type')!r} is not supported here for this model (supported: {', '.join(supported)}).",
        f"{param}.type",
    )


def text_of(part: dict, param: str) -> str:
    """The text of an input_text / output_text part, or the refusal of a refusal part."""
    return part_text(part, param, "refusal" if part.get("type") == "refusal" else "text")


def image_url(part: dict, param: str) -> str:
    """The URL (http(s) or data:) of an input_image part. A `file_id` lives in OpenAI's storage."""
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        if part.get("file_id") is not None:
            raise _invalid(
                f"{param}.file_id points at a file stored by OpenAI, which this model's upstream cannot read; "
                "send the image as `image_url` (an http(s) URL or a base64 data URL).",
                f"{param}.file_id",
            )
        raise _invalid(f"{param}.image_url must be a URL string.", f"{param}.image_url")
    return url


@dataclass(frozen=True, slots=True)
class Pdf:
    data: str  # base64
    filename: str | None


def input_pdf(part: dict, param: str) -> Pdf:
    """An input_file part, which must carry a PDF inline (`file_data`, a data URL)."""
    file_data = part.get("file_data")
    if not isinstance(file_data, str):
        # file_id is in OpenAI's storage; file_url would need the upstream to fetch and sniff it.
        raise _invalid(
            f"{param}: this model takes files only as `file_data`, a PDF data URL (data:application/pdf;base64,...).",
            param,
        )
    param = f"{param}.file_data"
    inline = data_url(file_data, param)
    if inline is None or inline[0] != "application/pdf":
        raise _invalid(f"{param} must be a PDF data URL (data:application/pdf;base64,...).", param)
    filename = part.get("filename")
    return Pdf(inline[1], filename if isinstance(filename, str) and filename else None)


@dataclass(frozen=True, slots=True)
class FunctionCall:
    call_id: str
    name: str
    arguments: dict


def function_call(item: Item) -> FunctionCall:
    data, param = item.data, item.param
    call_id, name, arguments = data.get("call_id"), data.get("name"), data.get("arguments")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{param}.call_id must be a non-empty string.", f"{param}.call_id")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{param}.name must be a non-empty string.", f"{param}.name")
    if not isinstance(arguments, str):
        raise _invalid(f"{param}.arguments must be a string of JSON.", f"{param}.arguments")
    try:
        # "" is what a client accumulates for a call with no arguments: the empty object.
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _invalid(f"{param}.arguments must be a JSON object.", f"{param}.arguments")
    return FunctionCall(call_id, name, parsed)


@dataclass(frozen=True, slots=True)
class FunctionOutput:
    call_id: str
    name: str | None  # newer clients send the function's name along
    output: str | list[tuple[str, dict]]  # text, or (param, part) of input_text / input_image parts


def function_output(item: Item) -> FunctionOutput:
    data, param = item.data, item.param
    call_id, name, output = data.get("call_id"), data.get("name"), data.get("output")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{param}.call_id must be a non-empty string.", f"{param}.call_id")
    name = name if isinstance(name, str) and name else None
    if isinstance(output, str):
        return FunctionOutput(call_id, name, output)
    if not isinstance(output, list):
        raise _invalid(f"{param}.output must be a string or a list of content parts.", f"{param}.output")
    return FunctionOutput(call_id, name, content_parts(output, f"{param}.output", role="tool"))


@dataclass(frozen=True, slots=True)
class ReasoningInput:
    text: str  # the summary texts, joined
    encrypted_content: str | None


def reasoning_input(item: Item) -> ReasoningInput:
    summary = item.data.get("summary")
    if summary is None:
        summary = []
    if not isinstance(summary, list):
        raise _invalid(f"{item.param}.summary must be a list.", f"{item.param}.summary")
    texts = [part_text(p, f"{item.param}.summary[{k}]") if isinstance(p, dict) else "" for k, p in enumerate(summary)]
    encrypted = item.data.get("encrypted_content")
    return ReasoningInput("".join(texts), encrypted if isinstance(encrypted, str) and encrypted else None)


# ---------------------------------------------------------------------------------------------
# Reply: the response object and its items
# ---------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage(*, input_tokens: int, cached: int, cache_write: int, output_tokens: int, reasoning_tokens: int) -> dict:
    """Responses usage. input_tokens INCLUDE cached reads and cache writes (OpenAI's convention)."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": cache_write},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def _echo_tools(request: dict) -> list[dict]:
    tools = request.get("tools")
    if not isinstance(tools, list):
        return []
    out = []
    for tool in tools:
        if isinstance(tool, dict):
            echoed = {"type": "function", "name": tool.get("name"), "description": tool.get("description")}
            echoed["parameters"] = copy.deepcopy(tool.get("parameters"))
            echoed["strict"] = tool.get("strict")
            out.append(echoed)
    return out


def _echo_reasoning(request: dict) -> dict:
    value = request.get("reasoning")
    value = value if isinstance(value, dict) else {}
    return {"effort": value.get("effort"), "summary": value.get("summary")}


def _default(request: dict, name: str, default: Any) -> Any:
    value = request.get(name)
    return default if value is None else copy.deepcopy(value)


def response_object(
    request: dict,
    *,
    response_id: str,
    created_at: int,
    status: str,
    reason: str | None,
    output: list[dict],
    usage: dict | None,
) -> dict:
    """A Responses `response` object that echoes the client's request as OpenAI does."""
    out = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "model": request.get("model") or "",  # the client's name for it, not the upstream's
        "output": copy.deepcopy(output),
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": _echo_reasoning(request),
        "store": False,
        "temperature": _default(request, "temperature", 1.0),
        "text": _default(request, "text", {"format": {"type": "text"}}),
        "tool_choice": _default(request, "tool_choice", "auto"),
        "tools": _echo_tools(request),
        "top_p": _default(request, "top_p", 1.0),
        "truncation": _default(request, "truncation", "disabled"),
        "usage": usage,
        "metadata": _default(request, "metadata", {}),
    }
    if status == "completed":
        out["completed_at"] = int(time.time())
    return out


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


# ---------------------------------------------------------------------------------------------
# Reply: the builder, for streams and whole replies alike
# ---------------------------------------------------------------------------------------------


class Reply:
    """One Responses reply being built, item by item, and the stream events that build it.

    An upstream translation calls `start()` once, then `text()`, `thinking()`, `call()` +
    `arguments()` as output arrives (each opens the item it needs, closing the one before, so an
    upstream with explicit block ends calls `close()` and one without need not), and `finish()` at
    the end, whose `response.completed` / `response.incomplete` event is always the last. Every
    method returns the events it produced, each numbered by `sequence_number` from 0.
    """

    def __init__(self, request: dict) -> None:
        self.request = request
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.sequence = 0
        self.output: list[dict] = []  # the closed items
        self.item: dict | None = None  # the open item
        self.pieces: list[str] = []  # the open item's text or arguments so far
        self.started = False
        self.final: dict | None = None  # the finished response object

    def _event(self, kind: str, **fields: Any) -> dict:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _where(self) -> dict:
        assert self.item is not None
        return {"item_id": self.item["id"], "output_index": len(self.output)}

    def _response(self, status: str, reason: str | None = None, usage: dict | None = None) -> dict:
        return response_object(
            self.request,
            response_id=self.id,
            created_at=self.created_at,
            status=status,
            reason=reason,
            output=self.output,
            usage=usage,
        )

    def start(self) -> list[dict]:
        if self.started:
            return []
        self.started = True
        response = self._response("in_progress")
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=copy.deepcopy(response)),
        ]

    def _open(self, item: dict) -> list[dict]:
        out = self.close()
        self.item, self.pieces = item, []
        return [
            *out,
            self._event("response.output_item.added", output_index=len(self.output), item=copy.deepcopy(item)),
        ]

    def open_message(self) -> list[dict]:
        item = {"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        out = self._open(item)
        part = _text_part("")
        return [*out, self._event("response.content_part.added", **self._where(), content_index=0, part=part)]

    def open_reasoning(self) -> list[dict]:
        return self._open({"id": new_id("rs"), "type": "reasoning", "summary": []})

    def text(self, delta: str) -> list[dict]:
        out = [] if self._is_open("message") else self.open_message()
        if not delta:
            return out
        self.pieces.append(delta)
        event = self._event("response.output_text.delta", **self._where(), content_index=0, delta=delta, logprobs=[])
        return [*out, event]

    def thinking(self, delta: str) -> list[dict]:
        out = [] if self._is_open("reasoning") else self.open_reasoning()
        if not delta:
            return out
        if not self.pieces:  # the summary part opens with its first text
            part = {"type": "summary_text", "text": ""}
            out.append(
                self._event("response.reasoning_summary_part.added", **self._where(), summary_index=0, part=part)
            )
        self.pieces.append(delta)
        return [
            *out,
            self._event("response.reasoning_summary_text.delta", **self._where(), summary_index=0, delta=delta),
        ]

    def seal(self, encrypted_content: str) -> None:
        """What the open reasoning item's upstream needs to take it back (its `encrypted_content`)."""
        if self._is_open("reasoning"):
            assert self.item is not None
            self.item["encrypted_content"] = encrypted_content

    def call(self, call_id: str, name: str) -> list[dict]:
        item = {
            "id": new_id("fc"),
            "type": "function_call",
            "status": "in_progress",
            "call_id": call_id,
            "name": name,
            "arguments": "",
        }
        return self._open(item)

    def arguments(self, delta: str) -> list[dict]:
        if not delta or not self._is_open("function_call"):
            return []
        self.pieces.append(delta)
        return [self._event("response.function_call_arguments.delta", **self._where(), delta=delta)]

    def refusal(self, text: str) -> list[dict]:
        """A whole message item holding one refusal part."""
        item: dict = {
            "id": new_id("msg"),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        out = self._open(item)
        where = {**self._where(), "content_index": 0}
        out += [
            self._event("response.content_part.added", **where, part={"type": "refusal", "refusal": ""}),
            self._event("response.refusal.delta", **where, delta=text),
            self._event("response.refusal.done", **where, refusal=text),
            self._event("response.content_part.done", **where, part={"type": "refusal", "refusal": text}),
        ]
        item["content"] = [{"type": "refusal", "refusal": text}]
        item["status"] = "completed"
        out.append(self._event("response.output_item.done", output_index=len(self.output), item=copy.deepcopy(item)))
        self.output.append(item)
        self.item = None
        return out

    def _is_open(self, kind: str) -> bool:
        return self.item is not None and self.item["type"] == kind

    def close(self) -> list[dict]:
        """Closes the open item, if any, with its done events."""
        item = self.item
        if item is None:
            return []
        text = "".join(self.pieces)
        where = self._where()
        out = []
        if item["type"] == "message":
            part = _text_part(text)
            out += [
                self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]),
                self._event("response.content_part.done", **where, content_index=0, part=copy.deepcopy(part)),
            ]
            item["content"] = [part]
        elif item["type"] == "reasoning" and text:
            part = {"type": "summary_text", "text": text}
            out += [
                self._event("response.reasoning_summary_text.done", **where, summary_index=0, text=text),
                self._event("response.reasoning_summary_part.done", **where, summary_index=0, part=dict(part)),
            ]
            item["summary"] = [part]
        elif item["type"] == "function_call":
            # "" would not parse as the arguments object a client's json.loads expects.
            arguments = text or "{}"
            out.append(
                self._event("response.function_call_arguments.done", **where, arguments=arguments, name=item["name"])
            )
            item["arguments"] = arguments
        if "status" in item:
            item["status"] = "completed"
        out.append(
            self._event("response.output_item.done", output_index=where["output_index"], item=copy.deepcopy(item))
        )
        self.output.append(item)
        self.item, self.pieces = None, []
        return out

    def finish(self, *, reason: str | None, usage: dict) -> list[dict]:
        """The last events: `response.completed`, or `response.incomplete` when there is a reason.
        The whole response object stays in `final` (what a non-stream reply is)."""
        if self.final is not None:
            return []
        out = self.start() + self.close()
        self.final = self._response("incomplete" if reason else "completed", reason, usage)
        kind = "response.incomplete" if reason else "response.completed"
        return [*out, self._event(kind, response=copy.deepcopy(self.final))]


def convert_parts(parts: list[tuple[str, dict]], kinds: dict[str, PartConverter]) -> list[dict]:
    """Each (param, part) through the converter of its type; a type the upstream cannot take is a
    400 naming the part."""
    out = []
    for param, part in parts:
        convert = kinds.get(part["type"])
        if convert is None:
            raise unsupported_part(part, param, list(kinds))
        converted = convert(part, param)
        if converted is not None:
            out.append(converted)
    return out
