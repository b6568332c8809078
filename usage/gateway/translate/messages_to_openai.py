"""Anthropic Messages client → OpenAI Chat Completions upstream.

E.g. Claude Code pointed at a GPT model. Pure: no I/O, the client's body is never mutated (the
output shares no mutable structure with it), and anything Chat cannot carry raises
`InvalidRequest` naming the offending `param` instead of being dropped silently. The few things
that *are* dropped say why where they are dropped: caching hints and earlier turns' thinking.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from openbili.core.errors import InvalidRequest, UpstreamError
from usage.gateway.providers.base import Event

# Chat finish_reason → Messages stop_reason. Chat does not say whether (or which) stop sequence
# matched: a stop sequence ends as "stop" → "end_turn", with stop_sequence null.
STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# thinking.budget_tokens → reasoning_effort: the first row whose bound the budget is under, else
# "high". Anthropic's smallest budget (1024) is "low"; Claude Code's usual 31999 is "high".
BUDGET_EFFORT = ((4096, "low"), (16384, "medium"))
MOST_EFFORT = "high"
# `{"type": "adaptive"}` leaves the depth of thinking to the model; "medium" is what OpenAI's
# reasoning models do when nobody chooses (their default effort).
ADAPTIVE_EFFORT = "medium"
# output_config.effort → reasoning_effort. "high" is the top level every OpenAI reasoning model
# accepts ("xhigh" exists only on some), so Anthropic's two levels above it land there.
EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}

TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}
MAX_STOP_SEQUENCES = 4  # OpenAI rejects more
# Messages keeps text blocks apart; Chat's system and assistant content are taken as one string
# (what every Chat-compatible upstream accepts), so the blocks become paragraphs.
SEPARATOR = "\n\n"
# Chat tool messages have no error flag: the failure is said in the text, where the model reads it.
TOOL_ERROR_PREFIX = "Error: "
PDF = "application/pdf"
PDF_FILENAME = "document.pdf"  # Chat file parts want a name; Messages documents have none
# Features that change what the upstream does and that Chat has no way to ask for.
NOT_CARRIED = {
    "service_tier": "Anthropic's service tiers",
    "container": "Anthropic's code-execution containers",
    "mcp_servers": "Anthropic's MCP connector",
    "top_k": "top_k sampling",
}
# Anthropic does not feed earlier turns' thinking to the model either: "previous thinking blocks
# are automatically stripped from the context window calculation by the Anthropic API and are not
# part of the conversation history that the model 'sees' for subsequent turns"
# (https://docs.anthropic.com/en/docs/build-with-claude/context-windows). Chat could not carry
# them anyway: their signatures only verify with Anthropic.
DROPPED_ASSISTANT_BLOCKS = {"thinking", "redacted_thinking"}
# `cache_control` (on blocks, tools, the system prompt or the body) is never copied: it is a hint
# to Anthropic's prompt cache, OpenAI caches prompt prefixes automatically, the output is the same.


def request(body: dict, *, max_output_tokens: int) -> dict:
    """A Messages request → a Chat Completions request, without `model` and `stream_options`
    (the provider's business)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    for name, feature in NOT_CARRIED.items():
        if body.get(name) not in (None, []):
            raise InvalidRequest(f"`{name}`: {feature} cannot be used with this model.", param=name)
    out: dict[str, Any] = {"messages": _system(body.get("system")) + _messages(body.get("messages"))}
    out["max_completion_tokens"] = _max_tokens(body.get("max_tokens"), max_output_tokens)
    if body.get("stream") is True:
        out["stream"] = True
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = _number(body[name], name)
    stop = _stop(body.get("stop_sequences"))
    if stop:
        out["stop"] = stop
    user = _user_id(body.get("metadata"))
    if user is not None:
        out["user"] = user
    out |= _tools(body.get("tools"), body.get("tool_choice"))
    output_config = {} if body.get("output_config") is None else _object(body["output_config"], "output_config")
    effort = _effort(body.get("thinking"), output_config)
    if effort:
        out["reasoning_effort"] = effort
    if output_config.get("format") is not None:
        out["response_format"] = _response_format(output_config["format"])
    return out


# --- request: messages ---------------------------------------------------------------------


def _system(value: object) -> list[dict]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value
    else:
        text = SEPARATOR.join(_text(block, param) for param, block in _blocks(value, "system", only={"text"}))
    return [{"role": "system", "content": text}] if text else []


def _messages(value: object) -> list[dict]:
    messages = _list(value, "messages")
    if not messages:
        raise InvalidRequest("`messages` must hold at least one message.", param="messages")
    out: list[dict] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        message = _object(message, where)
        role = message.get("role")
        turn = TURNS.get(role) if isinstance(role, str) else None
        if turn is None:
            raise InvalidRequest("`role` must be 'user' or 'assistant'.", param=f"{where}.role")
        out += turn(message.get("content"), where)
    return out


def _user_turn(content: object, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    # Chat wants a tool message right after the assistant's tool calls, before anything else the
    # user says; and tool messages carry text only, so images of a tool result follow (in order)
    # in the user message, ahead of the user's own blocks.
    tool_messages: list[dict] = []
    images: list[dict] = []
    parts: list[dict] = []
    for param, block in _blocks(content, f"{where}.content"):
        if block["type"] == "tool_result":
            message, tool_images = _tool_result(block, param)
            tool_messages.append(message)
            images += tool_images
        else:
            parts.append(_part(USER_PARTS, block, param))
    user = images + parts
    return tool_messages + ([{"role": "user", "content": user}] if user else [])


def _assistant_turn(content: object, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    texts: list[str] = []
    calls: list[dict] = []
    for param, block in _blocks(content, f"{where}.content"):
        kind = block["type"]
        if kind == "text":
            texts.append(_text(block, param))
        elif kind == "tool_use":
            calls.append(_tool_call(block, param))
        elif kind not in DROPPED_ASSISTANT_BLOCKS:
            raise _unsupported(kind, param)
    if not texts and not calls:  # thinking only: nothing the model would see
        return []
    # A last assistant turn (Anthropic's "prefill") is carried as is: Chat models answer after it
    # rather than continue it, but the client still gets a reply instead of an error.
    message: dict[str, Any] = {"role": "assistant", "content": SEPARATOR.join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


TURNS: dict[str, Callable[[object, str], list[dict]]] = {"user": _user_turn, "assistant": _assistant_turn}


def _text_part(block: dict, param: str) -> dict:
    return {"type": "text", "text": _text(block, param)}


def _image_part(block: dict, param: str) -> dict:
    source = _object(block.get("source"), f"{param}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = _string(source.get("media_type"), f"{param}.source.media_type")
        url = f"data:{media_type};base64,{_string(source.get('data'), f'{param}.source.data')}"
    elif kind == "url":
        url = _string(source.get("url"), f"{param}.source.url")
    else:  # "file" (Anthropic's Files API) exists only at Anthropic
        raise InvalidRequest("An image source must be 'base64' or 'url' for this model.", param=f"{param}.source.type")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict, param: str) -> dict:
    # title and context are descriptive metadata for citations; Chat has no place for them.
    citations = block.get("citations")
    if isinstance(citations, dict) and citations.get("enabled"):
        raise InvalidRequest("Citations cannot be used with this model.", param=f"{param}.citations")
    source = _object(block.get("source"), f"{param}.source")
    kind = source.get("type")
    if kind == "text":
        return {"type": "text", "text": _string(source.get("data"), f"{param}.source.data")}
    if kind == "base64":
        if source.get("media_type") != PDF:
            raise InvalidRequest(f"A base64 document must be '{PDF}'.", param=f"{param}.source.media_type")
        data = _string(source.get("data"), f"{param}.source.data")
        return {"type": "file", "file": {"filename": PDF_FILENAME, "file_data": f"data:{PDF};base64,{data}"}}
    # "url", "file" and "content" sources: Chat file parts take inline data only.
    raise InvalidRequest("A document source must be 'base64' (PDF) or 'text' for this model.", param=f"{param}.source")


USER_PARTS: dict[str, Callable[[dict, str], dict]] = {
    "text": _text_part,
    "image": _image_part,
    "document": _document_part,
}
TOOL_RESULT_PARTS: dict[str, Callable[[dict, str], dict]] = {"text": _text_part, "image": _image_part}


def _tool_result(block: dict, param: str) -> tuple[dict, list[dict]]:
    call_id = _string(block.get("tool_use_id"), f"{param}.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    images: list[dict] = []
    if isinstance(content, str):
        texts.append(content)
    elif content is not None:
        for item_param, item in _blocks(content, f"{param}.content"):
            part = _part(TOOL_RESULT_PARTS, item, item_param)
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
    text = SEPARATOR.join(texts)
    if block.get("is_error") is True:
        text = TOOL_ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _tool_call(block: dict, param: str) -> dict:
    arguments = _object(block.get("input"), f"{param}.input")
    return {
        "id": _string(block.get("id"), f"{param}.id"),
        "type": "function",
        # ensure_ascii=False: the model reads back the characters it wrote, not \\u escapes.
        "function": {
            "name": _string(block.get("name"), f"{param}.name"),
            "arguments": json.dumps(arguments, ensure_ascii=False),
        },
    }


def _part(table: dict[str, Callable[[dict, str], dict]], block: dict, param: str) -> dict:
    convert = table.get(block["type"])
    if convert is None:
        raise _unsupported(block["type"], param)
    return convert(block, param)


def _unsupported(kind: str, param: str) -> InvalidRequest:
    # server_tool_use, web_search_tool_result, search_result, container_upload, ...: Anthropic-only
    # features, or a block in a turn whose role cannot hold it.
    return InvalidRequest(f"A '{kind}' content block cannot be sent to this model here.", param=param)


# --- request: tools, sampling, reasoning -----------------------------------------------------


def _tools(tools_value: object, choice_value: object) -> dict:
    functions = [_function(tool, f"tools[{i}]") for i, tool in enumerate(_list(tools_value or [], "tools"))]
    out: dict[str, Any] = {"tools": functions} if functions else {}
    if choice_value is None:
        return out
    choice = _object(choice_value, "tool_choice")
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise InvalidRequest("`tool_choice.type` must be 'auto', 'any', 'tool' or 'none'.", param="tool_choice.type")
    if not functions:
        if kind in ("any", "tool"):
            raise InvalidRequest("`tool_choice` asks for a tool but `tools` is empty.", param="tool_choice")
        return out  # Chat rejects a tool_choice without tools; "auto" and "none" mean the same then
    if kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": _string(choice.get("name"), "tool_choice.name")}}
    else:
        out["tool_choice"] = TOOL_CHOICE[kind]
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


def _function(value: object, param: str) -> dict:
    tool = _object(value, param)
    kind = tool.get("type")
    if kind not in (None, "custom"):  # web_search_*, bash_*, text_editor_*, computer_*, code_execution_*, ...
        raise InvalidRequest(f"The Anthropic server tool '{kind}' cannot be used with this model.", param=param)
    function: dict[str, Any] = {"name": _string(tool.get("name"), f"{param}.name")}
    if tool.get("description") is not None:
        function["description"] = _string(tool["description"], f"{param}.description")
    function["parameters"] = copy.deepcopy(_object(tool.get("input_schema"), f"{param}.input_schema"))
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _effort(thinking_value: object, output_config: dict) -> str | None:
    effort = None
    if thinking_value is not None:
        thinking = _object(thinking_value, "thinking")
        kind = thinking.get("type")
        if kind == "enabled":
            budget = _integer(thinking.get("budget_tokens"), "thinking.budget_tokens")
            effort = next((level for bound, level in BUDGET_EFFORT if budget < bound), MOST_EFFORT)
        elif kind == "adaptive":
            effort = ADAPTIVE_EFFORT
        elif kind != "disabled":
            raise InvalidRequest("`thinking.type` must be 'enabled', 'adaptive' or 'disabled'.", param="thinking.type")
    if output_config.get("effort") is not None:  # the client's explicit effort wins over a budget
        requested = output_config["effort"]
        effort = EFFORT.get(requested) if isinstance(requested, str) else None  # a list is no dict key
        if effort is None:
            raise InvalidRequest(
                f"`output_config.effort` must be one of {sorted(EFFORT)}.", param="output_config.effort"
            )
    return effort


def _response_format(value: object) -> dict:
    fmt = _object(value, "output_config.format")
    if fmt.get("type") != "json_schema":
        raise InvalidRequest("`output_config.format.type` must be 'json_schema'.", param="output_config.format.type")
    schema = copy.deepcopy(_object(fmt.get("schema"), "output_config.format.schema"))
    # Anthropic's structured outputs always conform to the schema: that is OpenAI's strict mode.
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}


def _max_tokens(value: object, limit: int) -> int:
    if value is None:  # the endpoint requires max_tokens; the bound stays explicit regardless
        return limit
    # max_completion_tokens, not max_tokens: OpenAI's reasoning models reject max_tokens.
    return min(_integer(value, "max_tokens"), limit)


def _stop(value: object) -> list[str]:
    stop = [_string(item, f"stop_sequences[{i}]") for i, item in enumerate(_list(value or [], "stop_sequences"))]
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(
            f"This model takes at most {MAX_STOP_SEQUENCES} stop sequences, not {len(stop)}.", param="stop_sequences"
        )
    return stop


def _user_id(value: object) -> str | None:
    if value is None:
        return None
    user_id = _object(value, "metadata").get("user_id")
    return None if user_id is None else _string(user_id, "metadata.user_id")


# --- request: shapes ---------------------------------------------------------------------------


def _blocks(value: object, where: str, *, only: set[str] | None = None) -> list[tuple[str, dict]]:
    """The content blocks of `value` with their params; each an object with a string `type`."""
    out = []
    for j, block in enumerate(_list(value, where)):
        param = f"{where}[{j}]"
        block = _object(block, param)
        kind = block.get("type")
        if not isinstance(kind, str):
            raise InvalidRequest("A content block needs a string `type`.", param=f"{param}.type")
        if only is not None and kind not in only:
            raise _unsupported(kind, param)
        out.append((param, block))
    return out


def _text(block: dict, param: str) -> str:
    return _string(block.get("text"), f"{param}.text")


def _object(value: object, param: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidRequest(f"`{param}` must be an object.", param=param)
    return value


def _list(value: object, param: str) -> list:
    if not isinstance(value, list):
        raise InvalidRequest(f"`{param}` must be an array.", param=param)
    return value


def _string(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"`{param}` must be a string.", param=param)
    return value


def _integer(value: object, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"`{param}` must be a positive integer.", param=param)
    return value


def _number(value: object, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"`{param}` must be a number.", param=param)
    return value


# --- response ----------------------------------------------------------------------------------


def response(data: dict, *, request: dict | None = None) -> dict:
    """A `chat.completion` → a Messages `message`."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError("The upstream's reply has no choices.")
    choice = choices[0]
    message = _inner(choice, "message")
    content: list[dict] = []
    reasoning = _reasoning(message)
    if reasoning:
        # No signature: only Anthropic can sign, and this block never goes back upstream (earlier
        # turns' thinking is dropped on the way in).
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for call in message.get("tool_calls") or []:
        if isinstance(call, dict):
            content.append(_tool_use(call))
    return {
        "id": _message_id(data.get("id")),
        "type": "message",
        "role": "assistant",
        "model": data.get("model") or "",
        "content": content,
        "stop_reason": _stop_reason(choice.get("finish_reason"), refused=bool(refusal)),
        "stop_sequence": None,
        "usage": _usage(data.get("usage")),
    }


def _tool_use(call: dict) -> dict:
    function = _inner(call, "function")
    return {
        "type": "tool_use",
        "id": call.get("id") or "",
        "name": function.get("name") or "",
        "input": _tool_input(function.get("arguments")),
    }


def _tool_input(arguments: object) -> dict:
    """Chat arguments are a string the model wrote; Messages input is an object. Arguments that are
    not a JSON object (empty, cut by max_tokens, malformed) become `{}`: the call still reaches the
    client, whose tool then reports the missing arguments as a tool error that the model reads
    and corrects — the same recovery as for any schema-invalid call, instead of failing a reply
    that was already generated and billed."""
    if not isinstance(arguments, str):
        return {}
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _stop_reason(finish_reason: object, *, refused: bool) -> str:
    # A refusal arrives with finish_reason "stop"; Messages clients (Claude Code among them) tell a
    # refusal from an answer by stop_reason.
    if refused:
        return "refusal"
    return STOP.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def _usage(value: object) -> dict:
    """OpenAI counts cached tokens inside prompt_tokens; Anthropic reports them beside input_tokens.
    OpenAI's automatic cache has no write charge, hence cache_creation_input_tokens 0."""
    prompt, cached, completion = _token_counts(value)
    return {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": completion,
    }


def _token_counts(value: object) -> tuple[int, int, int]:
    usage = value if isinstance(value, dict) else {}
    details = _inner(usage, "prompt_tokens_details")
    prompt = _count(usage.get("prompt_tokens"))
    cached = min(_count(details.get("cached_tokens")), prompt)
    return prompt, cached, _count(usage.get("completion_tokens"))


def _inner(data: dict, name: str) -> dict:
    """An upstream reply's nested object, {} when absent or not one (read leniently: the reply was
    already generated and billed)."""
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _reasoning(message: dict) -> str:
    # vLLM, DeepSeek and others send `reasoning_content`, OpenRouter `reasoning`; some send both,
    # with the same text, so only the first is taken.
    for name in ("reasoning_content", "reasoning"):
        text = message.get(name)
        if isinstance(text, str) and text:
            return text
    return ""


def _message_id(completion_id: object) -> str:
    return "msg_" + (completion_id.removeprefix("chatcmpl-") if isinstance(completion_id, str) else "")


# --- stream ------------------------------------------------------------------------------------

BLOCK_START: dict[str, dict] = {
    "text": {"type": "text", "text": ""},
    "thinking": {"type": "thinking", "thinking": "", "signature": ""},
}


class Stream:
    """Chat chunks → Messages events.

    Chat streams interleave nothing: reasoning, then text, then tool calls one after another, each
    tool call's arguments in pieces under its `index`. Each run becomes one content block, closed
    when the next starts. Usage arrives last on Chat streams (after the finish_reason, in a chunk
    with no choices), so the finish is held until the `[DONE]` terminator and reported there, in
    `message_delta`; `message_start` carries zeros. `message_stop` is the endpoint's to send.
    """

    def __init__(self, *, client_wants_usage: bool, request: dict | None = None) -> None:
        del client_wants_usage  # Messages streams always carry usage
        self._started = False
        self._done = False
        self._open: str | None = None  # the kind of the open block: "text", "thinking", "tool_use"
        self._index = -1  # the latest block's index
        self._tools: dict[object, int] = {}  # Chat tool-call index → its block's index
        self._last_tool: object = None
        self._finish: str | None = None
        self._refused = False
        self._usage: object = None

    def feed(self, event: Event) -> list[dict]:
        if self._done:
            return []
        if event.final:
            self._done = True
            return self._start({}) + self._close() + [self._message_delta()]
        chunk = event.data
        # Comments, keep-alives and error events carry nothing to translate (the lifecycle handles
        # an upstream error event itself).
        if not isinstance(chunk, dict) or "error" in chunk:
            return []
        out = self._start(chunk)
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            if isinstance(choice.get("delta"), dict):
                out += self._delta(choice["delta"])
            if isinstance(choice.get("finish_reason"), str):
                self._finish = choice["finish_reason"]
        return out

    def _start(self, chunk: dict) -> list[dict]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": _message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model") or "",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [{"type": "message_start", "message": message}]

    def _delta(self, delta: dict) -> list[dict]:
        out: list[dict] = []
        reasoning = _reasoning(delta)
        if reasoning:
            out += self._write("thinking", {"type": "thinking_delta", "thinking": reasoning})
        for name in ("content", "refusal"):
            text = delta.get(name)
            if isinstance(text, str) and text:
                out += self._write("text", {"type": "text_delta", "text": text})
                self._refused |= name == "refusal"
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                out += self._tool_call(call)
        return out

    def _write(self, kind: str, delta: dict) -> list[dict]:
        out = [] if self._open == kind else self._close() + self._begin(kind, dict(BLOCK_START[kind]))
        return [*out, {"type": "content_block_delta", "index": self._index, "delta": delta}]

    def _tool_call(self, call: dict) -> list[dict]:
        # Keyed by Chat's `index`; a few compatible upstreams omit it and send each call whole,
        # with its id.
        key = call.get("index") if isinstance(call.get("index"), int) else call.get("id") or self._last_tool
        function = _inner(call, "function")
        out: list[dict] = []
        if key not in self._tools:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or f"call_{len(self._tools)}",
                "name": function.get("name") or "",
                "input": {},
            }
            out += self._close() + self._begin("tool_use", block)
            self._tools[key] = self._index
        self._last_tool = key
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append({"type": "content_block_delta", "index": self._tools[key], "delta": delta})
        return out

    def _begin(self, kind: str, block: dict) -> list[dict]:
        self._index += 1
        self._open = kind
        return [{"type": "content_block_start", "index": self._index, "content_block": block}]

    def _close(self) -> list[dict]:
        if self._open is None:
            return []
        self._open = None
        return [{"type": "content_block_stop", "index": self._index}]

    def _message_delta(self) -> dict:
        prompt, cached, completion = _token_counts(self._usage)
        return {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(self._finish, refused=self._refused), "stop_sequence": None},
            # The SDK's accumulator (anthropic.lib.streaming._messages.accumulate_event) takes
            # input_tokens and cache_read_input_tokens from message_delta when present, over the
            # zeros of message_start: get_final_message().usage ends right.
            "usage": {"output_tokens": completion, "input_tokens": prompt - cached, "cache_read_input_tokens": cached},
        }
