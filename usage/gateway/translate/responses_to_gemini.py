"""A client speaking the OpenAI Responses API, an upstream speaking the Gemini API (generateContent).

- `request()`: a Responses request body → a `GenerateContentRequest` (the model and stream-or-not
  are in the URL: the provider's business).
- `response()`: a `GenerateContentResponse` → a Responses `response` object.
- `Stream`: `streamGenerateContent?alt=sse` chunks → Responses stream events.

Kept: `input` (a string, or messages of every role with text, images by URL or data URL and PDF
data URLs; function_call and function_call_output items with text output); `instructions` and
system/developer messages (hoisted, in order, into `systemInstruction`); `max_output_tokens` (→
maxOutputTokens, clamped to the model's limit); temperature (0–2), top_p; function `tools` (name,
description, parameters as parametersJsonSchema); `tool_choice` (→ functionCallingConfig);
`text.format` json_object / json_schema (→ responseMimeType application/json +
responseJsonSchema, as chat_to_gemini does for response_format); `reasoning.effort` (→
thinkingConfig.thinkingBudget, as chat_to_gemini maps reasoning_effort) and `reasoning.summary`
(→ includeThoughts: thought summaries reach the client as `reasoning` items).

Refused (400 naming the param): what needs OpenAI's stored state (previous_response_id,
conversation, prompt, background, store: true); built-in and custom (free-form) tools, and
tool_choice other than auto/none/required/function; `text.verbosity` other than medium; `include`
message.output_text.logprobs; top_logprobs; file_id images and files; input_file other than a PDF
data URL; images in a function_call_output; a function_call_output whose call is not in `input`
and that names no function (Gemini's functionResponse needs the name); item_reference and every
built-in tool's items.

Dropped on purpose: `reasoning` input items (Gemini does not show earlier turns' thoughts to the
model, and this translation writes no encrypted content: Gemini's thoughtSignature is not carried,
as in chat_to_gemini); `parallel_tool_calls: false` (Gemini cannot be told to call one tool at a
time: the reply may hold several function_call items, which every Responses client handles);
`metadata`, `user` / `safety_identifier` (Gemini has no end-user field), `service_tier`,
`stream_options`, `prompt_cache_key` / `prompt_cache_retention` (Gemini caches implicitly),
`max_tool_calls`, `truncation` (an over-long input fails upstream either way), `strict` on
function tools and on json_schema, the schema's `name`, image `detail`, a message's `phase` /
`status` / `id`, an input_file's `filename`. The reply: `store: false`; finishReason MAX_TOKENS →
`incomplete` (max_output_tokens), SAFETY / RECITATION / BLOCKLIST / PROHIBITED_CONTENT / SPII and
the image filters, and a blocked prompt → `incomplete` (content_filter), as OpenAI reports a
content filter; generated images, code execution parts and candidates after the first (never
asked for) are not carried.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import usage.gateway.translate.responses_request as rr
from usage.gateway.providers.base import Event
from usage.gateway.providers.gemini import usage_from_gemini
from usage.gateway.translate.chat_request import invalid as _invalid
from usage.gateway.translate.chat_to_gemini import (
    FINISH,
    TOOL_CHOICE,
    _candidate_parts,
    _new_call_id,
    _response_format,
    image_from_url,
    sign_calls,
)
from usage.gateway.translate.chat_to_gemini import THINKING_BUDGET as CHAT_THINKING_BUDGET

# reasoning.effort → thinkingBudget, as for Chat's reasoning_effort; "max" (Responses only) is
# the top of the Pro range, like xhigh.
THINKING_BUDGET: dict[str, int] = {**CHAT_THINKING_BUDGET, "max": 32768}


# ---------------------------------------------------------------------------------------------
# Request: content
# ---------------------------------------------------------------------------------------------


def _text(part: dict, param: str) -> dict | None:
    text = rr.text_of(part, param)
    return {"text": text} if text else None  # an empty part carries nothing


def _image(part: dict, param: str) -> dict:
    # `detail` has no generateContent counterpart (mediaResolution is per request, not per image).
    return image_from_url(rr.image_url(part, param), f"{param}.image_url")


def _file(part: dict, param: str) -> dict:
    # `filename` has no Part counterpart (inlineData.displayName is Vertex-only): dropped.
    return {"inlineData": {"mimeType": "application/pdf", "data": rr.input_pdf(part, param).data}}


PARTS: dict[str, dict[str, rr.PartConverter]] = {
    "user": {"input_text": _text, "input_image": _image, "input_file": _file},
    "model": {"output_text": _text, "input_text": _text, "refusal": _text},
    "system": {"input_text": _text},
    "tool": {"input_text": _text},  # functionResponse.response is an object: text only here
}
ROLES = {"user": "user", "assistant": "model", "system": "system", "developer": "system"}


# ---------------------------------------------------------------------------------------------
# Request: input items → systemInstruction parts and contents
# ---------------------------------------------------------------------------------------------


class _Conversation:
    """Builds (systemInstruction parts, contents) item by item; remembers each call's function name,
    which Gemini's functionResponse needs and a function_call_output may not give."""

    def __init__(self) -> None:
        self.system: list[dict] = []
        self.contents: list[dict] = []
        self.names: dict[str, str] = {}

    def add(self, item: rr.Item) -> None:
        if item.type == "reasoning":
            return  # dropped: see the module docstring
        role, parts = self.ITEMS[item.type](self, item)
        if role == "system":
            # One systemInstruction per request: system and developer messages are hoisted there
            # from wherever they stand in the conversation, in order, after `instructions`.
            self.system += parts
            return
        if not parts:
            raise _invalid(f"{item.param} has no content (this model rejects empty messages).", f"{item.param}.content")
        if self.contents and self.contents[-1]["role"] == role:
            # Turns alternate user / model: a message and its function calls are one model turn;
            # consecutive function outputs (and a user message after them) are one user turn.
            self.contents[-1]["parts"] += parts
        else:
            self.contents.append({"role": role, "parts": parts})

    def _message(self, item: rr.Item) -> tuple[str, list[dict]]:
        role = ROLES[rr.message_role(item)]
        parts = rr.content_parts(item.data.get("content"), f"{item.param}.content", role=rr.message_role(item))
        return role, rr.convert_parts(parts, PARTS[role])

    def _call(self, item: rr.Item) -> tuple[str, list[dict]]:
        call = rr.function_call(item)
        self.names[call.call_id] = call.name
        return "model", [{"functionCall": {"name": call.name, "args": call.arguments}}]

    def _output(self, item: rr.Item) -> tuple[str, list[dict]]:
        result = rr.function_output(item)
        name = result.name or self.names.get(result.call_id)
        if name is None:
            raise _invalid(
                f"{item.param}.call_id {result.call_id!r} answers no function_call earlier in `input` (this model "
                "needs the function's name, which only that call gives, or `name` on this item).",
                f"{item.param}.call_id",
            )
        if isinstance(result.output, str):
            text = result.output
        else:
            text = "".join(p["text"] for p in rr.convert_parts(result.output, PARTS["tool"]))
        # Gemini's response is an object; a Responses function output is text: wrapped, never parsed.
        return "user", [{"functionResponse": {"name": name, "response": {"result": text}}}]

    ITEMS: dict[str, Callable[[_Conversation, rr.Item], tuple[str, list[dict]]]] = {
        "message": _message,
        "function_call": _call,
        "function_call_output": _output,
    }


def _conversation(body: dict) -> tuple[list[dict], list[dict]]:
    conversation = _Conversation()
    instructions = rr.instructions(body)
    if instructions:
        conversation.system.append({"text": instructions})
    for item in rr.input_items(body):
        conversation.add(item)
    if not conversation.contents:
        raise _invalid("`input` must contain at least one user or assistant message.", "input")
    sign_calls(conversation.contents)  # Gemini 3 refuses an unsigned first function call of a turn
    return conversation.system, conversation.contents


# ---------------------------------------------------------------------------------------------
# Request: tools, generation config
# ---------------------------------------------------------------------------------------------


def _tools(body: dict, out: dict) -> None:
    declarations = []
    for tool in rr.function_tools(body):
        declaration: dict = {"name": tool.name}
        if tool.description is not None:
            declaration["description"] = tool.description
        if tool.parameters is not None:
            # parametersJsonSchema takes JSON Schema as it is (as in chat_to_gemini). A copy.
            declaration["parametersJsonSchema"] = copy.deepcopy(tool.parameters)
        declarations.append(declaration)
    if declarations:
        out["tools"] = [{"functionDeclarations": declarations}]
    choice = rr.tool_choice(body)
    if choice is not None and declarations:  # without tools there is nothing to choose from
        if choice.mode == "function":
            config = {"mode": "ANY", "allowedFunctionNames": [choice.name]}
        else:
            config = {"mode": TOOL_CHOICE[choice.mode]}
        out["toolConfig"] = {"functionCallingConfig": config}
    rr.parallel_tool_calls(body)  # checked, not carried: see the module docstring


def _thinking(body: dict, max_tokens: int) -> dict | None:
    reasoning = rr.reasoning(body)
    if reasoning.effort is None:
        # A summary asked for without an effort: the model's own thinking, summarised.
        return {"includeThoughts": True} if reasoning.summary else None
    budget = min(THINKING_BUDGET[reasoning.effort], max_tokens)
    if not budget:
        return {"thinkingBudget": 0}
    config: dict = {"thinkingBudget": budget}
    if reasoning.summary:
        config["includeThoughts"] = True
    return config


def _generation_config(body: dict, max_output_tokens: int) -> dict:
    max_tokens = rr.max_output_tokens(body, max_output_tokens)
    config: dict = {"maxOutputTokens": max_tokens}
    temperature = rr.number(body, "temperature", 0, 2)
    if temperature is not None:
        config["temperature"] = temperature
    top_p = rr.number(body, "top_p", 0, 1)
    if top_p is not None:
        config["topP"] = top_p
    text_format = rr.text_format(body)
    if text_format is not None:
        # Chat's response_format in Responses clothes: the same Gemini fields, written once there.
        chat_format: dict = {"type": text_format.kind}
        if text_format.schema is not None:
            chat_format["json_schema"] = {"schema": text_format.schema}
        config |= _response_format(chat_format)
    thinking = _thinking(body, max_tokens)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    return config


def request(body: dict, *, max_output_tokens: int) -> dict:
    """A Responses request body → a Gemini GenerateContentRequest (without the model)."""
    rr.refuse_stateful(body)
    rr.refuse_uncarriable(body)
    system, contents = _conversation(body)
    out: dict = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    _tools(body, out)
    out["generationConfig"] = _generation_config(body, max_output_tokens)
    return out


# ---------------------------------------------------------------------------------------------
# Response
# ---------------------------------------------------------------------------------------------


def _usage(metadata: Any) -> dict:
    """usageMetadata → Responses usage, normalised once by the provider's usage_from_gemini:
    tool-use prompt tokens and cached tokens count as input, thoughts as output (and reasoning)."""
    usage = usage_from_gemini(metadata if isinstance(metadata, dict) else {})
    assert usage is not None
    return rr.usage(
        input_tokens=usage.input_tokens + usage.cached_input_tokens,
        cached=usage.cached_input_tokens,
        cache_write=0,  # Gemini's implicit cache writes are not reported, nor billed
        output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )


def _reason(finish_reason: Any) -> str | None:
    """Gemini finishReason → Responses incomplete_details.reason (None: completed)."""
    if finish_reason == "MAX_TOKENS":
        return "max_output_tokens"
    if isinstance(finish_reason, str) and FINISH.get(finish_reason) == "content_filter":
        return "content_filter"
    return None


def _blocked(data: dict) -> bool:
    feedback = data.get("promptFeedback")
    return not data.get("candidates") and isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _first_candidate(data: dict) -> dict | None:
    candidates = data.get("candidates")
    if not isinstance(candidates, list):
        return None
    for position, candidate in enumerate(candidates):
        # The first candidate only: candidateCount is never asked for, Responses has one output.
        if isinstance(candidate, dict) and candidate.get("index", position) == 0:
            return candidate
    return None


def _write_parts(reply: rr.Reply, candidate: dict) -> list[dict]:
    out: list[dict] = []
    for part in _candidate_parts(candidate):
        text = part.get("text")
        if isinstance(text, str) and text:  # Gemini 3 sends "" with a lone thoughtSignature: no item
            out += reply.thinking(text) if part.get("thought") is True else reply.text(text)
        call = part.get("functionCall")
        if isinstance(call, dict):
            call_id = call.get("id")  # Vertex and some models send one; the Gemini API mostly not
            out += reply.call(
                call_id if isinstance(call_id, str) and call_id else _new_call_id(), str(call.get("name") or "")
            )
            out += reply.arguments(json.dumps(call.get("args") or {}, ensure_ascii=False))
            out += reply.close()
        # thoughtSignature, inlineData, executableCode, codeExecutionResult: not carried.
    return out


def response(data: dict, *, request: dict) -> dict:
    """A Gemini GenerateContentResponse → a Responses `response` object."""
    reply = rr.Reply(request)
    candidate = _first_candidate(data)
    if candidate is not None:
        _write_parts(reply, candidate)
    reason = (
        "content_filter" if candidate is None and _blocked(data) else _reason((candidate or {}).get("finishReason"))
    )
    reply.finish(reason=reason, usage=_usage(data.get("usageMetadata")))
    assert reply.final is not None
    return reply.final


# ---------------------------------------------------------------------------------------------
# Stream
# ---------------------------------------------------------------------------------------------


class Stream:
    """Gemini stream chunks → Responses stream events.

    Every chunk is a whole GenerateContentResponse holding the next parts of the candidate: text
    continues the open message (or opens one), a thought continues the open reasoning item, a
    function call arrives whole and is one function_call item. Gemini has no terminator event (see
    providers/gemini.GeminiReader): `response.completed` / `response.incomplete` goes out with the
    chunk whose candidate carries its finishReason (or a blocked prompt) — the moment the reader
    sets `completed` and the lifecycle stops reading — and last, with the latest usageMetadata
    (its counts are cumulative). Usage always rides on it (Responses has no opt-out), so
    `client_wants_usage` changes nothing. An error chunk produces nothing: the lifecycle ends the
    client's stream with its own error event.
    """

    def __init__(self, *, client_wants_usage: bool, request: dict) -> None:
        self.client_wants_usage = client_wants_usage
        self.reply = rr.Reply(request)
        self.usage: dict | None = None

    def feed(self, event: Event) -> list[dict]:
        data = event.data
        if self.reply.final is not None or not isinstance(data, dict) or data.get("error") is not None:
            return []
        out = self.reply.start()
        if isinstance(data.get("usageMetadata"), dict):
            self.usage = data["usageMetadata"]
        candidate = _first_candidate(data)
        if candidate is None:
            if _blocked(data):
                out += self.reply.finish(reason="content_filter", usage=_usage(self.usage))
            return out
        out += _write_parts(self.reply, candidate)
        if candidate.get("finishReason"):
            out += self.reply.finish(reason=_reason(candidate["finishReason"]), usage=_usage(self.usage))
        return out
