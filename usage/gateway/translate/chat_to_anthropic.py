"""A client speaking OpenAI Chat Completions, an upstream speaking Anthropic Messages.

- `request()`: a Chat request body → a Messages request body (the provider adds `model`).
- `response()`: a Messages reply → a `chat.completion` object.
- `Stream`: Messages SSE events → `chat.completion.chunk` dicts.

Whatever changes the output and cannot be carried raises `InvalidRequest` naming the param; what
has no effect on the output is dropped on purpose (`IGNORED`); keys we do not know are ignored,
because OpenAI adds request fields often and refusing every new one would break current SDKs.
A JSON `null` counts as absent everywhere: SDKs and proxies send explicit nulls for unset fields.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any

from usage.gateway.providers.base import Event
from usage.gateway.translate.chat_request import (
    PartConverter,
    content_parts,
    data_url,
    function_tool,
    image_url,
    part_text,
)
from usage.gateway.translate.chat_request import invalid as _invalid
from usage.gateway.translate.chat_request import is_int as _is_int
from usage.gateway.translate.chat_request import is_number as _is_number

# Anthropic stop_reason → Chat finish_reason. pause_turn (a server tool paused a long turn) has no
# Chat counterpart; the turn did end, so "stop". Unknown future reasons also end as "stop".
FINISH = {
    "end_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
}

# Request fields with no effect on the generated output that Anthropic lacks: dropped on purpose.
# seed: best-effort determinism only; store / metadata: OpenAI's stored completions; service_tier:
# OpenAI's own capacity tiers; stream_options: the provider always asks for usage and the endpoint
# decides whether the client sees it; safety_identifier / prompt_cache_key / prompt_cache_retention:
# OpenAI-side abuse tracking and cache routing hints. (`user` is carried, as metadata.user_id.)
IGNORED = frozenset(
    {
        "seed",
        "store",
        "metadata",
        "service_tier",
        "stream_options",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)


def _never(_value: Any) -> bool:
    return False


# Request fields that change the output and that Anthropic cannot do: accepted only at their
# no-op value (the predicate), otherwise refused with the message. Never a silent drop.
UNCARRIABLE: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v == 1, "`n` must be 1 for this model: its upstream returns one choice per request."),
    "logprobs": (lambda v: v is False, "`logprobs` is not available for this model."),
    "top_logprobs": (lambda v: v == 0, "`top_logprobs` is not available for this model."),
    "response_format": (
        lambda v: v == {"type": "text"},
        "`response_format` other than text (JSON mode, JSON schema) is not available for this model "
        "on /v1/chat/completions; use /v1/messages or describe the format in the prompt.",
    ),
    "modalities": (
        lambda v: isinstance(v, list) and all(m == "text" for m in v),
        "This model produces text only; `modalities` may only contain 'text'.",
    ),
    "audio": (_never, "Audio output is not available for this model."),
    "prediction": (_never, "Predicted outputs (`prediction`) are not available for this model."),
    "presence_penalty": (lambda v: v == 0, "`presence_penalty` is not available for this model; omit it or send 0."),
    "frequency_penalty": (lambda v: v == 0, "`frequency_penalty` is not available for this model; omit it or send 0."),
    "logit_bias": (lambda v: v == {}, "`logit_bias` is not available for this model."),
    "web_search_options": (_never, "Web search (`web_search_options`) is not available for this model."),
    "verbosity": (lambda v: v == "medium", "`verbosity` is not available for this model; omit it."),
    "functions": (_never, "The legacy `functions` parameter is not supported; use `tools`."),
    "function_call": (_never, "The legacy `function_call` parameter is not supported; use `tool_choice`."),
}

# reasoning_effort → extended-thinking budget in tokens (None: no thinking). OpenAI's efforts have
# no token meaning; these start at Anthropic's minimum budget and grow about 3x per step, the
# range Anthropic's docs suggest. The budget is capped below max_tokens, which it counts against.
THINKING_BUDGET: dict[str, int | None] = {
    "none": None,
    "minimal": None,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
}
THINKING_MIN_BUDGET = 1024  # Anthropic rejects smaller budgets

# Chat tool_choice strings → Anthropic tool_choice. A named function is {"type": "tool", ...}.
TOOL_CHOICE = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}

# The image types Anthropic accepts; anything else would be an upstream 400 with a vaguer message.
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

EMPTY_SCHEMA = {"type": "object", "properties": {}}  # Anthropic requires input_schema


# ---------------------------------------------------------------------------------------------
# Request: content parts
# ---------------------------------------------------------------------------------------------


def _text_part(part: dict, param: str) -> dict | None:
    text = part_text(part, param)
    # Anthropic rejects empty text blocks; an empty part carries nothing, so it is left out.
    return {"type": "text", "text": text} if text else None


def _refusal_part(part: dict, param: str) -> dict | None:
    refusal = part_text(part, param, "refusal")
    return {"type": "text", "text": refusal} if refusal else None


def _image_part(part: dict, param: str) -> dict:
    # `detail` has no Anthropic counterpart: Claude always sees the image at its own resolution.
    url = image_url(part, param)
    param = f"{param}.image_url.url"
    inline = data_url(url, param)
    if inline is not None:
        media_type, data = inline
        if media_type not in IMAGE_TYPES:
            raise _invalid(f"{param}: image type {media_type!r} is not supported (jpeg, png, gif, webp).", param)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _invalid(f"{param} must be an http(s) URL or a base64 data URL.", param)


def _file_part(part: dict, param: str) -> dict:
    file = part.get("file")
    if not isinstance(file, dict):
        raise _invalid(f"{param}.file must be an object.", f"{param}.file")
    file_data = file.get("file_data")
    if not isinstance(file_data, str):
        # file_id points into OpenAI's file storage, which this upstream cannot read.
        raise _invalid(f"{param}.file.file_data (a PDF data URL) is required for this model.", f"{param}.file")
    param = f"{param}.file.file_data"
    inline = data_url(file_data, param)
    if inline is None or inline[0] != "application/pdf":
        raise _invalid(f"{param} must be a PDF data URL (data:application/pdf;base64,...).", param)
    block: dict = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": inline[1]}}
    filename = file.get("filename")
    if isinstance(filename, str) and filename:
        block["title"] = filename  # the model sees the name on OpenAI too
    return block


# Which Chat content parts each role may carry, and the Anthropic block each becomes.
# input_audio (and any other part) has no Anthropic input: refused by name.
USER_PARTS: dict[str, PartConverter] = {"text": _text_part, "image_url": _image_part, "file": _file_part}
ASSISTANT_PARTS: dict[str, PartConverter] = {"text": _text_part, "refusal": _refusal_part}
TEXT_PARTS: dict[str, PartConverter] = {"text": _text_part}


def _blocks(content: Any, kinds: dict[str, PartConverter], param: str) -> list[dict]:
    return content_parts(content, kinds, param, text=lambda text: {"type": "text", "text": text})


# ---------------------------------------------------------------------------------------------
# Request: messages
# ---------------------------------------------------------------------------------------------


def _tool_use(call: Any, param: str) -> dict:
    if not isinstance(call, dict):
        raise _invalid(f"{param} must be an object.", param)
    if call.get("type", "function") != "function":
        raise _invalid(f"{param}.type must be 'function' for this model.", f"{param}.type")
    call_id, function = call.get("id"), call.get("function")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{param}.id must be a non-empty string.", f"{param}.id")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise _invalid(f"{param}.function.name must be a string.", f"{param}.function.name")
    arguments = function.get("arguments")
    param = f"{param}.function.arguments"
    if not isinstance(arguments, str):
        raise _invalid(f"{param} must be a string of JSON.", param)
    try:
        # "" is what a client accumulates for a call with no arguments: the empty object.
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _invalid(f"{param} must be a JSON object (Anthropic tool input is an object).", param)
    return {"type": "tool_use", "id": call_id, "name": function["name"], "input": parsed}


def _system(message: dict, param: str) -> tuple[str, list[dict]]:
    return "system", _blocks(message.get("content"), TEXT_PARTS, f"{param}.content")


def _user(message: dict, param: str) -> tuple[str, list[dict]]:
    # `name` has no Anthropic counterpart; it only labels the speaker.
    return "user", _blocks(message.get("content"), USER_PARTS, f"{param}.content")


def _assistant(message: dict, param: str) -> tuple[str, list[dict]]:
    content = message.get("content")
    # content may be null when the turn is only tool calls.
    blocks = [] if content is None else _blocks(content, ASSISTANT_PARTS, f"{param}.content")
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise _invalid(f"{param}.tool_calls must be a list.", f"{param}.tool_calls")
        blocks += [_tool_use(call, f"{param}.tool_calls[{k}]") for k, call in enumerate(calls)]
    if message.get("function_call") is not None:
        raise _invalid("The legacy `function_call` is not supported; use `tool_calls`.", f"{param}.function_call")
    if message.get("audio") is not None:
        raise _invalid("Audio from an earlier turn cannot be sent to this model.", f"{param}.audio")
    return "assistant", blocks


def _tool(message: dict, param: str) -> tuple[str, list[dict]]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{param}.tool_call_id must be a non-empty string.", f"{param}.tool_call_id")
    content = message.get("content")
    text = "".join(b["text"] for b in _blocks(content, TEXT_PARTS, f"{param}.content"))
    return "user", [{"type": "tool_result", "tool_use_id": call_id, "content": text}]


# Chat role → (Anthropic role, blocks). Tool results travel in a user turn on Anthropic.
ROLES: dict[str, Callable[[dict, str], tuple[str, list[dict]]]] = {
    "system": _system,
    "developer": _system,
    "user": _user,
    "assistant": _assistant,
    "tool": _tool,
}


def _messages(messages: Any) -> tuple[list[dict], list[dict]]:
    """(system blocks, Anthropic messages)."""
    if not isinstance(messages, list) or not messages:
        raise _invalid("`messages` must be a non-empty list of message objects.", "messages")
    system: list[dict] = []
    turns: list[dict] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid(f"{param} must be an object.", param)
        role = message.get("role")
        if role == "function":
            raise _invalid("The legacy `function` role is not supported; use `tool` messages.", f"{param}.role")
        convert = ROLES.get(role) if isinstance(role, str) else None  # a list is no dict key
        if convert is None:
            raise _invalid(f"{param}.role {role!r} is not a valid role.", f"{param}.role")
        anthropic_role, blocks = convert(message, param)
        if anthropic_role == "system":
            # Anthropic has one top-level system prompt: system and developer messages are hoisted
            # there from wherever they stand in the conversation, in order.
            system += blocks
            continue
        if not blocks:
            raise _invalid(f"{param} has no content (this model rejects empty messages).", f"{param}.content")
        if turns and turns[-1]["role"] == anthropic_role:
            # Anthropic wants user and assistant to alternate: consecutive tool results, or a
            # user message after tool results, join the previous turn.
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    if not turns:
        raise _invalid("`messages` must contain at least one user or assistant message.", "messages")
    return system, turns


# ---------------------------------------------------------------------------------------------
# Request: tools, sampling, limits
# ---------------------------------------------------------------------------------------------


def _tool_def(tool: Any, param: str) -> dict:
    function = function_tool(tool, param)
    out: dict = {"name": function.name}
    if function.description is not None:
        out["description"] = function.description
    # A copy: the upstream body must share nothing with the client's (a retry starts from it).
    out["input_schema"] = copy.deepcopy(function.parameters if function.parameters is not None else EMPTY_SCHEMA)
    return out


def _tool_choice(choice: Any) -> dict:
    if isinstance(choice, str) and choice in TOOL_CHOICE:
        return dict(TOOL_CHOICE[choice])
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("function", {}).get("name") if isinstance(choice.get("function"), dict) else None
        if isinstance(name, str) and name:
            return {"type": "tool", "name": name}
        raise _invalid("tool_choice.function.name must be a non-empty string.", "tool_choice.function.name")
    raise _invalid(
        "`tool_choice` must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}.",
        "tool_choice",
    )


def _stop(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise _invalid("`stop` must be a string or a list of strings.", "stop")


def _max_tokens(body: dict, max_output_tokens: int) -> int:
    """The smaller of the client's limits, clamped to the model's output limit (its default)."""
    asked = []
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise _invalid(f"`{name}` must be a positive integer.", name)
        asked.append(value)
    return min([*asked, max_output_tokens])


def _thinking(body: dict, max_tokens: int) -> dict | None:
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in THINKING_BUDGET:
        raise _invalid(f"`reasoning_effort` must be one of {', '.join(THINKING_BUDGET)}.", "reasoning_effort")
    budget = THINKING_BUDGET[effort]
    if budget is None:
        return None
    budget = min(budget, max_tokens - 1)  # the budget counts against max_tokens and must stay below it
    if budget < THINKING_MIN_BUDGET:
        limit = next(
            (n for n in ("max_completion_tokens", "max_tokens") if body.get(n) is not None), "reasoning_effort"
        )
        raise _invalid(
            f"reasoning_effort={effort!r} needs at least {THINKING_MIN_BUDGET + 1} output tokens on this model "
            f"(a thinking budget of {THINKING_MIN_BUDGET} plus the answer); raise `{limit}` or omit reasoning_effort.",
            limit,
        )
    # Anthropic refuses these with thinking on: say so now, naming the client's own param.
    temperature, top_p, choice = body.get("temperature"), body.get("top_p"), body.get("tool_choice")
    if temperature is not None and temperature != 1:
        raise _invalid("With reasoning_effort, this model accepts only temperature 1 (or none).", "temperature")
    if top_p is not None and not 0.95 <= top_p <= 1:
        raise _invalid("With reasoning_effort, this model accepts top_p only between 0.95 and 1.", "top_p")
    if choice == "required" or isinstance(choice, dict):
        raise _invalid("With reasoning_effort, this model cannot be forced to call a tool; use 'auto'.", "tool_choice")
    return {"type": "enabled", "budget_tokens": budget}


def request(body: dict, *, max_output_tokens: int) -> dict:
    """A Chat Completions request body → an Anthropic Messages request body (without `model`)."""
    for name, (harmless, message) in UNCARRIABLE.items():
        value = body.get(name)
        if value is not None and not harmless(value):
            raise _invalid(message, name)

    system, messages = _messages(body.get("messages"))
    max_tokens = _max_tokens(body, max_output_tokens)
    out: dict = {"max_tokens": max_tokens, "messages": messages}
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    if body.get("stream") is True:
        out["stream"] = True

    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("`tools` must be a list.", "tools")
        if tools:
            out["tools"] = [_tool_def(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is not None:
        tool_choice = _tool_choice(choice)
        if "tools" in out:  # without tools it has nothing to choose from (Anthropic refuses it alone)
            out["tool_choice"] = tool_choice
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _invalid("`parallel_tool_calls` must be a boolean.", "parallel_tool_calls")
    if parallel is False and "tools" in out:
        tool_choice = out.setdefault("tool_choice", {"type": "auto"})
        if tool_choice["type"] != "none":  # nothing to run in parallel when no tool may be called
            tool_choice["disable_parallel_tool_use"] = True

    stop = body.get("stop")
    if stop is not None and (sequences := _stop(stop)):
        out["stop_sequences"] = sequences
    temperature = body.get("temperature")
    if temperature is not None:
        if not _is_number(temperature) or temperature < 0:
            raise _invalid("`temperature` must be a number.", "temperature")
        if temperature > 1:
            raise _invalid(
                "`temperature` must be between 0 and 1 for this model (Anthropic's range; OpenAI's 1 to 2 has "
                "no equivalent).",
                "temperature",
            )
        out["temperature"] = temperature
    top_p = body.get("top_p")
    if top_p is not None:
        if not _is_number(top_p) or not 0 <= top_p <= 1:
            raise _invalid("`top_p` must be a number between 0 and 1.", "top_p")
        out["top_p"] = top_p
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise _invalid("`user` must be a string.", "user")
        out["metadata"] = {"user_id": user}
    thinking = _thinking(body, max_tokens)
    if thinking is not None:
        out["thinking"] = thinking
    return out


# ---------------------------------------------------------------------------------------------
# Response
# ---------------------------------------------------------------------------------------------


def _usage(usage: dict) -> dict:
    """Anthropic usage → OpenAI's convention, where cached reads and cache writes are prompt tokens."""
    cache_read = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + cache_read + (usage.get("cache_creation_input_tokens") or 0)
    completion = usage.get("output_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read},
    }


def _finish(stop_reason: Any) -> str:
    return FINISH.get(stop_reason, "stop")


def response(data: dict, *, request: dict | None = None) -> dict:
    """An Anthropic Messages reply → a `chat.completion` object."""
    texts, thoughts, calls = [], [], []
    for block in data.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "thinking":
            thoughts.append(block.get("thinking", ""))
        elif kind == "tool_use":
            function = {"name": block.get("name", ""), "arguments": json.dumps(block.get("input", {}))}
            calls.append({"id": block.get("id", ""), "type": "function", "function": function})
        # redacted_thinking is encrypted: nothing a Chat client can read.
    message: dict = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if thoughts:
        # Chat has no field for reasoning; `reasoning_content` is the widely used extension.
        message["reasoning_content"] = "".join(thoughts)
    return {
        "id": data.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": data.get("model", ""),
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(data.get("stop_reason"))}
        ],
        "usage": _usage(data.get("usage") or {}),
    }


# ---------------------------------------------------------------------------------------------
# Stream
# ---------------------------------------------------------------------------------------------


USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


class Stream:
    """Anthropic Messages stream events → `chat.completion.chunk` dicts.

    Anthropic numbers content blocks across text, thinking and tool use; Chat numbers tool calls
    alone, from 0, so each tool_use block gets the next tool-call index. The `[DONE]` terminator
    and stream errors are the endpoint's and the lifecycle's business.
    """

    def __init__(self, *, client_wants_usage: bool, request: dict | None = None) -> None:
        self.client_wants_usage = client_wants_usage
        self.id = ""
        self.model = ""
        self.created = int(time.time())
        self.usage: dict = {}
        self.tool_index: dict[int, int] = {}  # Anthropic block index → Chat tool-call index

    def feed(self, event: Event) -> list[dict]:
        data = event.data
        if not isinstance(data, dict):
            return []
        handler = self.EVENTS.get(data.get("type") or event.name)
        return handler(self, data) if handler else []

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def _take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.usage.update({k: usage[k] for k in USAGE_FIELDS if usage.get(k) is not None})

    def _message_start(self, data: dict) -> list[dict]:
        message = data.get("message") or {}
        self.id = message.get("id", "")
        self.model = message.get("model", "")
        self._take_usage(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, data: dict) -> list[dict]:
        block = data.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use":
            index = self.tool_index[data.get("index", -1)] = len(self.tool_index)
            call = {"index": index, "id": block.get("id"), "type": "function"}
            call["function"] = {"name": block.get("name"), "arguments": ""}
            return [self._chunk({"tool_calls": [call]})]
        # text and thinking blocks start empty; should one ever start with content, pass it on.
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if kind == "thinking" and block.get("thinking"):
            return [self._chunk({"reasoning_content": block["thinking"]})]
        return []

    def _block_delta(self, data: dict) -> list[dict]:
        delta = data.get("delta") or {}
        kind = delta.get("type")
        # Empty pieces carry nothing (Anthropic opens tool input with partial_json ""): no chunk.
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if kind == "input_json_delta" and delta.get("partial_json") and data.get("index") in self.tool_index:
            call = {"index": self.tool_index[data["index"]], "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # signature_delta (thinking's seal), citations_delta: nothing Chat can carry

    def _message_delta(self, data: dict) -> list[dict]:
        # output_tokens here are cumulative; newer API versions repeat input and cache counts too.
        self._take_usage(data.get("usage"))
        stop_reason = (data.get("delta") or {}).get("stop_reason")
        if stop_reason is None:  # "one or more message_delta": only the one that ends the turn finishes it
            return []
        return [self._chunk({}, _finish(stop_reason))]

    def _message_stop(self, data: dict) -> list[dict]:
        if not self.client_wants_usage:
            return []
        return [
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": _usage(self.usage),
            }
        ]

    # Anthropic event type → handler. ping, content_block_stop and error produce nothing (an
    # error is the lifecycle's: it ends the client's stream with its own error event).
    EVENTS: dict[str, Callable[[Stream, dict], list[dict]]] = {
        "message_start": _message_start,
        "content_block_start": _block_start,
        "content_block_delta": _block_delta,
        "message_delta": _message_delta,
        "message_stop": _message_stop,
    }
