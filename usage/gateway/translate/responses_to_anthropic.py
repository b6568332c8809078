"""A client speaking the OpenAI Responses API, an upstream speaking Anthropic Messages.

- `request()`: a Responses request body → a Messages request body (the provider adds `model`).
- `response()`: a Messages reply → a Responses `response` object.
- `Stream`: Messages SSE events → Responses stream events.

Kept: `input` (a string, or messages of every role with text, images by URL or data URL and PDF
data URLs; function_call and function_call_output items, tool outputs with images too);
`instructions` and system/developer messages (hoisted, in order, into `system`);
`max_output_tokens` (→ max_tokens, clamped to the model's limit); temperature (0–1 only), top_p;
function `tools` (name, description, parameters); `tool_choice`; `parallel_tool_calls: false`
(→ disable_parallel_tool_use); `reasoning.effort` (→ a thinking budget, as chat_to_anthropic
maps reasoning_effort); `safety_identifier` / `user` (→ metadata.user_id); `stream`.

Reasoning round trip: Claude's thinking reaches the client as a `reasoning` item whose summary is
the thinking text and whose `encrypted_content` is Anthropic's signature ("anthropic.thinking."
prefix; a redacted_thinking block's data: "anthropic.redacted."), always, because Anthropic
requires the last assistant turn's thinking back during a tool loop with thinking on. Sent back
in `input`, such an item becomes the thinking block again. A reasoning item without it (or with
another upstream's encrypted content) is dropped: Anthropic does not show earlier turns' thinking
to the model anyway, and a foreign signature would only be refused.

Refused (400 naming the param): what needs OpenAI's stored state (previous_response_id,
conversation, prompt, background, store: true); built-in and custom (free-form) tools, and
tool_choice other than auto/none/required/function; `text.format` json_object / json_schema (as
chat_to_anthropic refuses response_format); `text.verbosity` other than medium; `include`
message.output_text.logprobs; top_logprobs; file_id images and files; input_file other than a PDF
data URL; item_reference and every built-in tool's items; temperature above 1.

Dropped on purpose, no effect on the output: `metadata`, `service_tier`, `stream_options`,
`prompt_cache_key` / `prompt_cache_retention`, `max_tool_calls` (counts built-in tool calls,
which are refused), `truncation` (both values: an over-long input fails upstream either way),
`strict` on function tools, `reasoning.summary` (Claude always returns its thinking, summarised),
image `detail`, a message's `phase` / `status` / `id`. The reply: `store: false`; usage reports
reasoning_tokens 0 (Anthropic counts thinking inside output_tokens and does not split it out);
`stop_reason: refusal` ends `completed`, with a closing message item holding a refusal part.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import usage.gateway.translate.responses_request as rr
from usage.gateway.providers.base import Event
from usage.gateway.translate.chat_request import data_url
from usage.gateway.translate.chat_request import invalid as _invalid
from usage.gateway.translate.chat_to_anthropic import (
    EMPTY_SCHEMA,
    IMAGE_TYPES,
    THINKING_MIN_BUDGET,
    TOOL_CHOICE,
)
from usage.gateway.translate.chat_to_anthropic import THINKING_BUDGET as CHAT_THINKING_BUDGET

# Anthropic stop_reason → Responses incomplete_details.reason (None: completed). A refusal ends the
# turn as a completed response holding a refusal part; unknown future reasons end completed too.
INCOMPLETE = {"max_tokens": "max_output_tokens", "model_context_window_exceeded": "max_output_tokens"}
# What the refusal part says: Anthropic gives no text of its own for stop_reason "refusal".
REFUSAL = "The model declined to continue this response."

# reasoning.effort → thinking budget, as for Chat's reasoning_effort; "max" (Responses only) is
# the largest budget Anthropic's docs discuss, capped below max_tokens like the others.
THINKING_BUDGET: dict[str, int | None] = {**CHAT_THINKING_BUDGET, "max": 65536}

# encrypted_content of the reasoning items this translation writes: the prefix says whose it is,
# so another upstream's encrypted content is never sent to Anthropic as a signature.
SIGNATURE = "anthropic.thinking."
REDACTED = "anthropic.redacted."


# ---------------------------------------------------------------------------------------------
# Request: content
# ---------------------------------------------------------------------------------------------


def _text(part: dict, param: str) -> dict | None:
    text = rr.text_of(part, param)
    # Anthropic rejects empty text blocks; an empty part carries nothing, so it is left out.
    return {"type": "text", "text": text} if text else None


def _image(part: dict, param: str) -> dict:
    # `detail` has no Anthropic counterpart: Claude always sees the image at its own resolution.
    url = rr.image_url(part, param)
    param = f"{param}.image_url"
    inline = data_url(url, param)
    if inline is not None:
        media_type, data = inline
        if media_type not in IMAGE_TYPES:
            raise _invalid(f"{param}: image type {media_type!r} is not supported (jpeg, png, gif, webp).", param)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _invalid(f"{param} must be an http(s) URL or a base64 data URL.", param)


def _file(part: dict, param: str) -> dict:
    pdf = rr.input_pdf(part, param)
    block: dict = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf.data}}
    if pdf.filename:
        block["title"] = pdf.filename  # the model sees the name on OpenAI too
    return block


# Which content parts each role may carry, and the Anthropic block each becomes.
PARTS: dict[str, dict[str, rr.PartConverter]] = {
    "user": {"input_text": _text, "input_image": _image, "input_file": _file},
    "assistant": {"output_text": _text, "input_text": _text, "refusal": _text},
    "system": {"input_text": _text},
    "tool": {"input_text": _text, "input_image": _image},
}


# ---------------------------------------------------------------------------------------------
# Request: input items → system blocks and turns
# ---------------------------------------------------------------------------------------------


def _message(item: rr.Item) -> tuple[str, list[dict]]:
    role = rr.message_role(item)
    kinds = PARTS["system" if role == "developer" else role]
    parts = rr.content_parts(item.data.get("content"), f"{item.param}.content", role=role)
    return ("system" if role == "developer" else role), rr.convert_parts(parts, kinds)


def _tool_use(item: rr.Item) -> tuple[str, list[dict]]:
    call = rr.function_call(item)
    return "assistant", [{"type": "tool_use", "id": call.call_id, "name": call.name, "input": call.arguments}]


def _tool_result(item: rr.Item) -> tuple[str, list[dict]]:
    result = rr.function_output(item)
    block: dict = {"type": "tool_result", "tool_use_id": result.call_id}
    if isinstance(result.output, str):
        block["content"] = result.output
    else:
        block["content"] = rr.convert_parts(result.output, PARTS["tool"])
    return "user", [block]


def _thinking(item: rr.Item) -> tuple[str, list[dict]]:
    reasoning = rr.reasoning_input(item)
    sealed = reasoning.encrypted_content or ""
    if sealed.startswith(SIGNATURE):
        return "assistant", [{"type": "thinking", "thinking": reasoning.text, "signature": sealed[len(SIGNATURE) :]}]
    if sealed.startswith(REDACTED):
        return "assistant", [{"type": "redacted_thinking", "data": sealed[len(REDACTED) :]}]
    return "assistant", []  # dropped: see the module docstring


ITEMS: dict[str, Callable[[rr.Item], tuple[str, list[dict]]]] = {
    "message": _message,
    "function_call": _tool_use,
    "function_call_output": _tool_result,
    "reasoning": _thinking,
}


def _conversation(body: dict) -> tuple[list[dict], list[dict]]:
    """(system blocks, messages)."""
    system: list[dict] = []
    instructions = rr.instructions(body)
    if instructions:
        system.append({"type": "text", "text": instructions})
    turns: list[dict] = []
    for item in rr.input_items(body):
        role, blocks = ITEMS[item.type](item)
        if role == "system":
            # Anthropic has one top-level system prompt: system and developer messages are hoisted
            # there from wherever they stand in the conversation, in order, after `instructions`.
            system += blocks
            continue
        if not blocks:
            if item.type == "reasoning":
                continue
            raise _invalid(f"{item.param} has no content (this model rejects empty messages).", f"{item.param}.content")
        if turns and turns[-1]["role"] == role:
            # Anthropic wants user and assistant to alternate: a message, its reasoning and its
            # function calls are one assistant turn; consecutive function outputs are one user turn.
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise _invalid("`input` must contain at least one user or assistant message.", "input")
    return system, turns


# ---------------------------------------------------------------------------------------------
# Request: tools, sampling, limits
# ---------------------------------------------------------------------------------------------


def _tools(body: dict, out: dict) -> None:
    tools = rr.function_tools(body)
    if tools:
        out["tools"] = [
            {"name": tool.name}
            | ({"description": tool.description} if tool.description is not None else {})
            # A copy: the upstream body must share nothing with the client's (a retry starts from it).
            | {"input_schema": copy.deepcopy(tool.parameters if tool.parameters is not None else EMPTY_SCHEMA)}
            for tool in tools
        ]
    choice = rr.tool_choice(body)
    if choice is not None and "tools" in out:  # without tools Anthropic refuses a tool_choice
        out["tool_choice"] = (
            {"type": "tool", "name": choice.name} if choice.mode == "function" else dict(TOOL_CHOICE[choice.mode])
        )
    if not rr.parallel_tool_calls(body) and "tools" in out:
        tool_choice = out.setdefault("tool_choice", {"type": "auto"})
        if tool_choice["type"] != "none":  # nothing to run in parallel when no tool may be called
            tool_choice["disable_parallel_tool_use"] = True


def _thinking_config(body: dict, max_tokens: int) -> dict | None:
    effort = rr.reasoning(body).effort
    budget = THINKING_BUDGET.get(effort) if effort is not None else None
    if budget is None:
        return None
    budget = min(budget, max_tokens - 1)  # the budget counts against max_tokens and must stay below it
    if budget < THINKING_MIN_BUDGET:
        raise _invalid(
            f"reasoning.effort={effort!r} needs at least {THINKING_MIN_BUDGET + 1} output tokens on this model "
            f"(a thinking budget of {THINKING_MIN_BUDGET} plus the answer); raise `max_output_tokens` or omit "
            "reasoning.effort.",
            "max_output_tokens",
        )
    # Anthropic refuses these with thinking on: say so now, naming the client's own param.
    temperature, top_p, choice = body.get("temperature"), body.get("top_p"), rr.tool_choice(body)
    if temperature is not None and temperature != 1:
        raise _invalid("With reasoning.effort, this model accepts only temperature 1 (or none).", "temperature")
    if top_p is not None and not 0.95 <= top_p <= 1:
        raise _invalid("With reasoning.effort, this model accepts top_p only between 0.95 and 1.", "top_p")
    if choice is not None and choice.mode in ("required", "function"):
        raise _invalid("With reasoning.effort, this model cannot be forced to call a tool; use 'auto'.", "tool_choice")
    return {"type": "enabled", "budget_tokens": budget}


def _format(body: dict) -> None:
    if rr.text_format(body) is not None:
        raise _invalid(
            "`text.format` other than text (JSON mode, JSON schema) is not available for this model on "
            "/v1/responses; use /v1/messages or describe the format in the prompt.",
            "text.format",
        )


def request(body: dict, *, max_output_tokens: int) -> dict:
    """A Responses request body → an Anthropic Messages request body (without `model`)."""
    rr.refuse_stateful(body)
    rr.refuse_uncarriable(body)
    _format(body)
    system, messages = _conversation(body)
    max_tokens = rr.max_output_tokens(body, max_output_tokens)
    out: dict = {"max_tokens": max_tokens, "messages": messages}
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    if body.get("stream") is True:
        out["stream"] = True
    _tools(body, out)
    why = " (Anthropic's range; OpenAI's 1 to 2 has no equivalent)"
    temperature = rr.number(body, "temperature", 0, 1, why)
    if temperature is not None:
        out["temperature"] = temperature
    top_p = rr.number(body, "top_p", 0, 1)
    if top_p is not None:
        out["top_p"] = top_p
    user = rr.user_id(body)
    if user is not None:
        out["metadata"] = {"user_id": user}
    thinking = _thinking_config(body, max_tokens)
    if thinking is not None:
        out["thinking"] = thinking
    return out


# ---------------------------------------------------------------------------------------------
# Response
# ---------------------------------------------------------------------------------------------


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(usage: dict) -> dict:
    """Anthropic usage → Responses usage, where cached reads and cache writes are input tokens."""
    cache_read = _count(usage.get("cache_read_input_tokens"))
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    return rr.usage(
        input_tokens=_count(usage.get("input_tokens")) + cache_read + cache_write,
        cached=cache_read,
        cache_write=cache_write,
        output_tokens=_count(usage.get("output_tokens")),
        reasoning_tokens=0,  # Anthropic counts thinking inside output_tokens, unsplit
    )


def _open_block(reply: rr.Reply, block: dict) -> list[dict]:
    """The item an Anthropic content block becomes, opened, with whatever the block starts with."""
    kind = block.get("type")
    if kind == "text":
        return reply.open_message() + reply.text(str(block.get("text") or ""))
    if kind == "thinking":
        out = reply.open_reasoning() + reply.thinking(str(block.get("thinking") or ""))
        if isinstance(block.get("signature"), str) and block["signature"]:
            reply.seal(SIGNATURE + block["signature"])
        return out
    if kind == "redacted_thinking":
        out = reply.open_reasoning()
        if isinstance(block.get("data"), str):
            reply.seal(REDACTED + block["data"])
        return out
    if kind == "tool_use":
        return reply.call(str(block.get("id") or ""), str(block.get("name") or ""))
    return reply.close()  # server tool blocks cannot occur: server tools are never sent


def _end(reply: rr.Reply, stop_reason: Any, usage: dict) -> list[dict]:
    out = reply.close()
    if stop_reason == "refusal":
        out += reply.refusal(REFUSAL)
    return out + reply.finish(reason=INCOMPLETE.get(stop_reason), usage=_usage(usage))


def response(data: dict, *, request: dict) -> dict:
    """An Anthropic Messages reply → a Responses `response` object."""
    reply = rr.Reply(request)
    reply.start()
    for block in data.get("content") or []:
        if not isinstance(block, dict):
            continue
        _open_block(reply, block)
        if block.get("type") == "tool_use":
            reply.arguments(json.dumps(block.get("input") or {}, ensure_ascii=False))
        reply.close()
    _end(reply, data.get("stop_reason"), data.get("usage") or {})
    assert reply.final is not None
    return reply.final


# ---------------------------------------------------------------------------------------------
# Stream
# ---------------------------------------------------------------------------------------------


USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


class Stream:
    """Anthropic Messages stream events → Responses stream events.

    Each Anthropic content block is one output item: text → a message, thinking → a reasoning
    item, tool_use → a function_call. `response.created` and `response.in_progress` go out with
    the first event; `response.completed` / `response.incomplete` with message_stop (the reader's
    `final` event, held back by the lifecycle until the bill is settled), and last. Usage always
    rides on it (Responses has no opt-out), so `client_wants_usage` changes nothing. An upstream
    error event produces nothing: the lifecycle ends the client's stream with its own error event.
    """

    def __init__(self, *, client_wants_usage: bool, request: dict) -> None:
        self.client_wants_usage = client_wants_usage
        self.reply = rr.Reply(request)
        self.usage: dict = {}
        self.stop_reason: Any = None

    def feed(self, event: Event) -> list[dict]:
        data = event.data
        if not isinstance(data, dict):
            return []
        kind = data.get("type") or event.name
        if kind == "error" or self.reply.final is not None:
            return []
        handler = self.EVENTS.get(kind)
        out = self.reply.start()
        return out + handler(self, data) if handler else out

    def _take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.usage.update({k: usage[k] for k in USAGE_FIELDS if usage.get(k) is not None})

    def _message_start(self, data: dict) -> list[dict]:
        self._take_usage((data.get("message") or {}).get("usage"))
        return []

    def _block_start(self, data: dict) -> list[dict]:
        block = data.get("content_block")
        return _open_block(self.reply, block) if isinstance(block, dict) else []

    def _block_delta(self, data: dict) -> list[dict]:
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return self.reply.text(str(delta.get("text") or ""))
        if kind == "thinking_delta":
            return self.reply.thinking(str(delta.get("thinking") or ""))
        if kind == "signature_delta" and isinstance(delta.get("signature"), str):
            self.reply.seal(SIGNATURE + delta["signature"])
        elif kind == "input_json_delta":
            return self.reply.arguments(str(delta.get("partial_json") or ""))
        return []  # citations_delta: only with citations turned on, which this translation never does

    def _block_stop(self, data: dict) -> list[dict]:
        return self.reply.close()

    def _message_delta(self, data: dict) -> list[dict]:
        # output_tokens here are cumulative; newer API versions repeat input and cache counts too.
        self._take_usage(data.get("usage"))
        stop_reason = (data.get("delta") or {}).get("stop_reason")
        if stop_reason is not None:
            self.stop_reason = stop_reason
        return []

    def _message_stop(self, data: dict) -> list[dict]:
        return _end(self.reply, self.stop_reason, self.usage)

    # Anthropic event type → handler; ping produces nothing.
    EVENTS: dict[str, Callable[[Stream, dict], list[dict]]] = {
        "message_start": _message_start,
        "content_block_start": _block_start,
        "content_block_delta": _block_delta,
        "content_block_stop": _block_stop,
        "message_delta": _message_delta,
        "message_stop": _message_stop,
    }
