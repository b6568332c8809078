"""A client speaking OpenAI Chat Completions, an upstream speaking the Gemini API (generateContent).

- `request()`: a Chat request body → a `GenerateContentRequest` (the model and stream-or-not are in
  the URL: the provider's business).
- `response()`: a `GenerateContentResponse` → a `chat.completion` object.
- `Stream`: `streamGenerateContent?alt=sse` chunks → `chat.completion.chunk` dicts.

As in chat_to_anthropic: whatever changes the output and cannot be carried raises `InvalidRequest`
naming the param; what has no effect on the output is dropped on purpose (`IGNORED`); keys we do
not know are ignored; a JSON `null` counts as absent everywhere.

Wire shapes: ai.google.dev/api/generate-content (GenerateContentRequest / Response, Candidate,
FinishReason, UsageMetadata), ai.google.dev/api/caching#Content (Part: text, inlineData, fileData,
functionCall, functionResponse, thought), ai.google.dev/gemini-api/docs/function-calling
(functionDeclarations with `parametersJsonSchema`, toolConfig.functionCallingConfig),
ai.google.dev/gemini-api/docs/structured-output (`responseJsonSchema`),
ai.google.dev/gemini-api/docs/thinking (thinkingConfig), ai.google.dev/gemini-api/docs/file-input-methods
(external http(s) URLs as fileData.fileUri).
"""

from __future__ import annotations

import copy
import json
import mimetypes
import time
import uuid
from collections.abc import Callable
from typing import Any

from usage.gateway.providers.base import Event
from usage.gateway.providers.gemini import usage_from_gemini
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

# Gemini FinishReason → Chat finish_reason. A candidate that called a function ends with STOP; it
# becomes "tool_calls" where the reply is built. MALFORMED_FUNCTION_CALL / UNEXPECTED_TOOL_CALL /
# TOO_MANY_TOOL_CALLS, LANGUAGE, NO_IMAGE, OTHER and unknown future reasons: the turn did end and
# Chat has nothing nearer, so "stop".
FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}

# Request fields with no effect on the generated output that Gemini lacks: dropped on purpose.
# store / metadata: OpenAI's stored completions; service_tier: OpenAI's capacity tiers;
# stream_options: the endpoint decides whether the client sees usage (Gemini always sends it);
# user / safety_identifier: OpenAI-side abuse tracking (Gemini has no end-user field);
# prompt_cache_key / prompt_cache_retention: OpenAI cache routing (Gemini caches implicitly);
# stream: streaming is chosen by the provider's URL, not the body.
IGNORED = frozenset(
    {
        "store",
        "metadata",
        "service_tier",
        "stream_options",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "stream",
    }
)


def _never(_value: Any) -> bool:
    return False


# Request fields that change the output and that this translation cannot carry: accepted only at
# their no-op value (the predicate), otherwise refused with the message. Never a silent drop.
# (Gemini has responseLogprobs, but its logprobsResult is not translated to Chat's shape yet.)
UNCARRIABLE: dict[str, tuple[Callable[[Any], bool], str]] = {
    "logprobs": (lambda v: v is False, "`logprobs` is not available for this model."),
    "top_logprobs": (lambda v: v == 0, "`top_logprobs` is not available for this model."),
    "audio": (_never, "Audio output is not available for this model."),
    "prediction": (_never, "Predicted outputs (`prediction`) are not available for this model."),
    "logit_bias": (lambda v: v == {}, "`logit_bias` is not available for this model."),
    "web_search_options": (_never, "Web search (`web_search_options`) is not available for this model."),
    "verbosity": (lambda v: v == "medium", "`verbosity` is not available for this model; omit it."),
    "parallel_tool_calls": (
        lambda v: v is True,
        "`parallel_tool_calls: false` is not available for this model: it may always call several tools at once.",
    ),
    "functions": (_never, "The legacy `functions` parameter is not supported; use `tools`."),
    "function_call": (_never, "The legacy `function_call` parameter is not supported; use `tool_choice`."),
}

# reasoning_effort → thinkingConfig.thinkingBudget in tokens. OpenAI's efforts have no token
# meaning; "none" turns thinking off (budget 0; models that cannot stop thinking, such as 2.5 Pro,
# refuse it upstream), the others grow about 3x per step within the ranges the thinking docs give
# (Flash 0–24576, Pro 128–32768). With thinking on, thought summaries are asked for
# (includeThoughts) and reach the client as `reasoning_content`. The budget never exceeds
# maxOutputTokens.
THINKING_BUDGET: dict[str, int] = {
    "none": 0,
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
}

# Chat tool_choice strings → functionCallingConfig.mode. A named function is ANY + allowedFunctionNames.
TOOL_CHOICE = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

# Chat modalities → responseModalities. Audio output is a different API (Live / TTS models).
MODALITIES = {"text": "TEXT", "image": "IMAGE"}

# Image types Gemini reads (image-understanding docs); anything else would be a vaguer upstream 400.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})
AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mp3"}  # Chat input_audio.format → MIME type


def _new_call_id() -> str:
    """A Chat tool-call id for a Gemini functionCall that has none (the Gemini API omits `id`)."""
    return f"call_{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------------------------------------
# Request: content parts
# ---------------------------------------------------------------------------------------------


def _text_part(part: dict, param: str) -> dict | None:
    text = part_text(part, param)
    return {"text": text} if text else None  # an empty part carries nothing


def _refusal_part(part: dict, param: str) -> dict | None:
    refusal = part_text(part, param, "refusal")
    return {"text": refusal} if refusal else None


def _image_part(part: dict, param: str) -> dict:
    # `detail` has no generateContent counterpart (mediaResolution is per request, not per image).
    return image_from_url(image_url(part, param), f"{param}.image_url.url")


def image_from_url(url: str, param: str) -> dict:
    """An image part from a data URL (inlineData) or an http(s) URL (fileData), for every
    translation to Gemini."""
    inline = data_url(url, param)
    if inline is not None:
        media_type, data = inline
        if media_type not in IMAGE_TYPES:
            raise _invalid(f"{param}: image type {media_type!r} is not supported (png, jpeg, webp, heic, heif).", param)
        return {"inlineData": {"mimeType": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        # Gemini fetches public and signed http(s) URLs itself (file-input-methods, "External
        # URLs"). The MIME type is optional there; it is given when the URL's extension tells it.
        file_data = {"fileUri": url}
        guessed, _ = mimetypes.guess_type(url.split("?", 1)[0].split("#", 1)[0], strict=False)
        if guessed in IMAGE_TYPES:
            file_data = {"mimeType": guessed, "fileUri": url}
        return {"fileData": file_data}
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
    # `filename` has no Part counterpart (inlineData.displayName is Vertex-only): dropped.
    return {"inlineData": {"mimeType": "application/pdf", "data": inline[1]}}


def _audio_part(part: dict, param: str) -> dict:
    audio = part.get("input_audio")
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise _invalid(f"{param}.input_audio.data must be a base64 string.", f"{param}.input_audio.data")
    audio_format = audio.get("format")
    media_type = AUDIO_FORMATS.get(audio_format) if isinstance(audio_format, str) else None
    if media_type is None:
        raise _invalid(f"{param}.input_audio.format must be 'wav' or 'mp3'.", f"{param}.input_audio.format")
    return {"inlineData": {"mimeType": media_type, "data": audio["data"]}}


USER_PARTS: dict[str, PartConverter] = {
    "text": _text_part,
    "image_url": _image_part,
    "file": _file_part,
    "input_audio": _audio_part,
}
ASSISTANT_PARTS: dict[str, PartConverter] = {"text": _text_part, "refusal": _refusal_part}
TEXT_PARTS: dict[str, PartConverter] = {"text": _text_part}


def _parts(content: Any, kinds: dict[str, PartConverter], param: str) -> list[dict]:
    return content_parts(content, kinds, param, text=lambda text: {"text": text})


# ---------------------------------------------------------------------------------------------
# Request: messages
# ---------------------------------------------------------------------------------------------


def _function_call(call: Any, param: str) -> tuple[str, dict]:
    """(the Chat call id, the Gemini functionCall part)."""
    if not isinstance(call, dict):
        raise _invalid(f"{param} must be an object.", param)
    if call.get("type", "function") != "function":
        raise _invalid(f"{param}.type must be 'function' for this model.", f"{param}.type")
    call_id, function = call.get("id"), call.get("function")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{param}.id must be a non-empty string.", f"{param}.id")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise _invalid(f"{param}.function.name must be a non-empty string.", f"{param}.function.name")
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
        raise _invalid(f"{param} must be a JSON object (Gemini function arguments are an object).", param)
    return call_id, {"functionCall": {"name": function["name"], "args": parsed}}


def _messages(messages: Any) -> tuple[list[dict], list[dict]]:
    """(systemInstruction parts, contents)."""
    if not isinstance(messages, list) or not messages:
        raise _invalid("`messages` must be a non-empty list of message objects.", "messages")
    system: list[dict] = []
    contents: list[dict] = []
    names: dict[str, str] = {}  # Chat tool-call id → function name (functionResponse needs the name)
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid(f"{param} must be an object.", param)
        role = message.get("role")
        if role in ("system", "developer"):
            # One systemInstruction per request: system and developer messages are hoisted there
            # from wherever they stand in the conversation, in order.
            system += _parts(message.get("content"), TEXT_PARTS, f"{param}.content")
            continue
        if role == "user":
            # `name` has no Gemini counterpart; it only labels the speaker.
            gemini_role: str = "user"
            parts = _parts(message.get("content"), USER_PARTS, f"{param}.content")
        elif role == "assistant":
            content = message.get("content")
            parts = [] if content is None else _parts(content, ASSISTANT_PARTS, f"{param}.content")
            calls = message.get("tool_calls")
            if calls is not None:
                if not isinstance(calls, list):
                    raise _invalid(f"{param}.tool_calls must be a list.", f"{param}.tool_calls")
                for k, call in enumerate(calls):
                    call_id, part = _function_call(call, f"{param}.tool_calls[{k}]")
                    names[call_id] = part["functionCall"]["name"]
                    parts.append(part)
            if message.get("function_call") is not None:
                raise _invalid(
                    "The legacy `function_call` is not supported; use `tool_calls`.", f"{param}.function_call"
                )
            if message.get("audio") is not None:
                raise _invalid("Audio from an earlier turn cannot be sent to this model.", f"{param}.audio")
            gemini_role = "model"
        elif role == "tool":
            answered = message.get("tool_call_id")
            if not isinstance(answered, str) or not answered:
                raise _invalid(f"{param}.tool_call_id must be a non-empty string.", f"{param}.tool_call_id")
            if answered not in names:
                raise _invalid(
                    f"{param}.tool_call_id {answered!r} answers no tool call of an earlier assistant message "
                    "(this model needs the function's name, which only that call gives).",
                    f"{param}.tool_call_id",
                )
            text = "".join(p["text"] for p in _parts(message.get("content"), TEXT_PARTS, f"{param}.content"))
            # Gemini's response is an object; Chat's tool result is text: wrapped, never parsed.
            gemini_role = "user"
            parts = [{"functionResponse": {"name": names[answered], "response": {"result": text}}}]
        elif role == "function":
            raise _invalid("The legacy `function` role is not supported; use `tool` messages.", f"{param}.role")
        else:
            raise _invalid(f"{param}.role {role!r} is not a valid role.", f"{param}.role")
        if not parts:
            raise _invalid(f"{param} has no content (this model rejects empty messages).", f"{param}.content")
        if contents and contents[-1]["role"] == gemini_role:
            # Turns alternate user / model: consecutive tool results (one user turn answering a
            # parallel call, as the function-calling docs show), or a user message after them, join.
            contents[-1]["parts"] += parts
        else:
            contents.append({"role": gemini_role, "parts": parts})
    if not contents:
        raise _invalid("`messages` must contain at least one user or assistant message.", "messages")
    sign_calls(contents)
    return system, contents


# Google's documented stand-in for a thought signature the client could not send back: Gemini 3
# refuses a model turn whose first function call is unsigned, and a Chat client has no field to
# return Gemini's own signature in.
FOREIGN_SIGNATURE = "skip_thought_signature_validator"


def sign_calls(contents: list[dict]) -> None:
    """Give the first function call of each model turn a thought signature if it has none."""
    for content in contents:
        if content["role"] != "model":
            continue
        call = next((part for part in content["parts"] if "functionCall" in part), None)
        if call is not None and "thoughtSignature" not in call:
            call["thoughtSignature"] = FOREIGN_SIGNATURE


# ---------------------------------------------------------------------------------------------
# Request: tools, generation config
# ---------------------------------------------------------------------------------------------


def _declaration(tool: Any, param: str) -> dict:
    function = function_tool(tool, param)
    out: dict = {"name": function.name}
    if function.description is not None:
        out["description"] = function.description
    if function.parameters is not None:
        # parametersJsonSchema takes JSON Schema as it is (`parameters` takes an OpenAPI subset that
        # would need a lossy conversion). `strict` has no counterpart. A copy: nothing is shared.
        out["parametersJsonSchema"] = copy.deepcopy(function.parameters)
    return out


def _tool_config(choice: Any) -> dict:
    if isinstance(choice, str) and choice in TOOL_CHOICE:
        return {"functionCallingConfig": {"mode": TOOL_CHOICE[choice]}}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
        raise _invalid("tool_choice.function.name must be a non-empty string.", "tool_choice.function.name")
    raise _invalid(
        "`tool_choice` must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}.",
        "tool_choice",
    )


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


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_number(value) or not low <= value <= high:
        raise _invalid(f"`{name}` must be a number between {low:g} and {high:g}.", name)
    return value


def _response_format(value: Any) -> dict:
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise _invalid("`response_format` must be an object with a `type`.", "response_format")
    kind = value["type"]
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _invalid(
                "response_format.json_schema.schema must be a JSON schema object.", "response_format.json_schema"
            )
        # responseJsonSchema takes JSON Schema as it is; `name` and `strict` have no counterpart.
        return {"responseMimeType": "application/json", "responseJsonSchema": copy.deepcopy(schema)}
    raise _invalid(
        f"response_format.type {kind!r} is not supported (text, json_object, json_schema).", "response_format.type"
    )


def _modalities(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise _invalid("`modalities` must be a non-empty list of strings.", "modalities")
    unknown = [m for m in value if m not in MODALITIES]
    if unknown:
        raise _invalid(
            f"`modalities` may only contain 'text' and 'image' for this model (got {unknown[0]!r}).", "modalities"
        )
    return [MODALITIES[m] for m in dict.fromkeys(value)]


def _generation_config(body: dict, max_output_tokens: int) -> dict:
    max_tokens = _max_tokens(body, max_output_tokens)
    config: dict = {"maxOutputTokens": max_tokens}
    for name, field, low, high in (
        ("temperature", "temperature", 0, 2),
        ("top_p", "topP", 0, 1),
        ("presence_penalty", "presencePenalty", -2, 2),
        ("frequency_penalty", "frequencyPenalty", -2, 2),
    ):
        value = _number(body, name, low, high)
        if value is not None:
            config[field] = value
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _invalid("`stop` must be a string or a list of strings.", "stop")
        if stop:
            config["stopSequences"] = list(stop)
    n = body.get("n")
    if n is not None:
        if not _is_int(n) or n < 1:
            raise _invalid("`n` must be a positive integer.", "n")
        if n > 1:
            config["candidateCount"] = n
    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed):
            raise _invalid("`seed` must be an integer.", "seed")
        config["seed"] = seed
    response_format = body.get("response_format")
    if response_format is not None:
        config |= _response_format(response_format)
    modalities = body.get("modalities")
    if modalities is not None:
        config["responseModalities"] = _modalities(modalities)
    effort = body.get("reasoning_effort")
    if effort is not None:
        if not isinstance(effort, str) or effort not in THINKING_BUDGET:
            raise _invalid(f"`reasoning_effort` must be one of {', '.join(THINKING_BUDGET)}.", "reasoning_effort")
        budget = min(THINKING_BUDGET[effort], max_tokens)
        config["thinkingConfig"] = (
            {"thinkingBudget": budget, "includeThoughts": True} if budget else {"thinkingBudget": 0}
        )
    return config


def request(body: dict, *, max_output_tokens: int) -> dict:
    """A Chat Completions request body → a Gemini GenerateContentRequest (without the model)."""
    for name, (harmless, message) in UNCARRIABLE.items():
        value = body.get(name)
        if value is not None and not harmless(value):
            raise _invalid(message, name)
    system, contents = _messages(body.get("messages"))
    out: dict = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("`tools` must be a list.", "tools")
        if tools:
            out["tools"] = [
                {"functionDeclarations": [_declaration(tool, f"tools[{i}]") for i, tool in enumerate(tools)]}
            ]
    choice = body.get("tool_choice")
    if choice is not None:
        tool_config = _tool_config(choice)
        if "tools" in out:  # without tools there is nothing to choose from
            out["toolConfig"] = tool_config
    out["generationConfig"] = _generation_config(body, max_output_tokens)
    return out


# ---------------------------------------------------------------------------------------------
# Response
# ---------------------------------------------------------------------------------------------


def _usage(metadata: Any) -> dict:
    """usageMetadata → OpenAI's convention: cached tokens inside prompt_tokens, reasoning inside
    completion_tokens. Normalised once, by the provider's usage_from_gemini (tool-use prompt tokens
    count as prompt, thoughts as completion)."""
    usage = usage_from_gemini(metadata if isinstance(metadata, dict) else {})
    assert usage is not None
    prompt = usage.input_tokens + usage.cached_input_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _finish(reason: Any, *, called: bool) -> str:
    if called and reason == "STOP":
        return "tool_calls"
    return FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"


def _image(inline: dict) -> dict | None:
    # OpenRouter's shape for generated images in Chat. Served as data: URLs for now; storing them
    # behind capability URLs (as /v1/images does) is a later piece of issue 10.
    mime, data = inline.get("mimeType"), inline.get("data")
    if not isinstance(mime, str) or not mime.startswith("image/") or not isinstance(data, str):
        return None
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def _call(function_call: dict) -> dict:
    call_id = function_call.get("id")  # Vertex and some models send one; the Gemini API mostly not
    arguments = json.dumps(function_call.get("args") or {}, ensure_ascii=False)
    return {
        "id": call_id if isinstance(call_id, str) and call_id else _new_call_id(),
        "type": "function",
        "function": {"name": function_call.get("name", ""), "arguments": arguments},
    }


def _candidate_parts(candidate: dict) -> list[dict]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _choice(candidate: dict, position: int) -> dict:
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict] = []
    images: list[dict] = []
    for part in _candidate_parts(candidate):
        text = part.get("text")
        if isinstance(text, str):
            (thoughts if part.get("thought") is True else texts).append(text)
        if isinstance(part.get("functionCall"), dict):
            calls.append(_call(part["functionCall"]))
        if isinstance(part.get("inlineData"), dict) and (image := _image(part["inlineData"])) is not None:
            images.append(image)
        # thoughtSignature, executableCode, codeExecutionResult: nothing a Chat client can carry.
    message: dict = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if images:
        message["images"] = images
    if thoughts:
        # Chat has no field for reasoning; `reasoning_content` is the widely used extension.
        message["reasoning_content"] = "".join(thoughts)
    index = candidate.get("index")
    return {
        "index": index if _is_int(index) else position,
        "message": message,
        "logprobs": None,
        "finish_reason": _finish(candidate.get("finishReason"), called=bool(calls)),
    }


def _blocked_choice() -> dict:
    # A blocked prompt (promptFeedback.blockReason) has no candidates: one empty, filtered choice.
    message = {"role": "assistant", "content": None, "refusal": None}
    return {"index": 0, "message": message, "logprobs": None, "finish_reason": "content_filter"}


def response(data: dict, *, request: dict | None = None) -> dict:
    """A Gemini GenerateContentResponse → a `chat.completion` object."""
    candidates = [c for c in data.get("candidates") or [] if isinstance(c, dict)]
    choices = [_choice(candidate, i) for i, candidate in enumerate(candidates)] or [_blocked_choice()]
    response_id = data.get("responseId")
    return {
        "id": response_id if isinstance(response_id, str) and response_id else f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": data.get("modelVersion", ""),
        "choices": choices,
        "usage": _usage(data.get("usageMetadata")),
    }


# ---------------------------------------------------------------------------------------------
# Stream
# ---------------------------------------------------------------------------------------------


class Stream:
    """Gemini stream chunks → `chat.completion.chunk` dicts.

    Every chunk is a whole GenerateContentResponse holding the next parts of each candidate;
    function calls arrive whole, one part each. Gemini has no terminator event (see
    providers/gemini.GeminiReader): the finish chunk of a choice is emitted with the chunk that
    carries its finishReason, and once every candidate seen has finished (or the prompt was
    blocked) the usage chunk follows at once, when asked for — the moment the reader sets
    `completed` and the lifecycle stops reading. The usage is the latest usageMetadata (its counts
    are cumulative). The `[DONE]` terminator and stream errors are the endpoint's and the
    lifecycle's business.
    """

    def __init__(self, *, client_wants_usage: bool, request: dict | None = None) -> None:
        self.client_wants_usage = client_wants_usage
        self.id = ""
        self.model = ""
        self.created = int(time.time())
        self.usage: dict | None = None
        self.started: set[int] = set()  # choice indexes whose role chunk went out
        self.calls: dict[int, int] = {}  # choice index → tool calls so far (Chat numbers them from 0)
        self.open: set[int] = set()
        self.finished: set[int] = set()
        self.done = False

    def feed(self, event: Event) -> list[dict]:
        data = event.data
        if self.done or not isinstance(data, dict) or data.get("error") is not None:
            return []  # an error event is the lifecycle's: it ends the client's stream itself
        if not self.id:
            response_id = data.get("responseId")
            self.id = response_id if isinstance(response_id, str) and response_id else f"chatcmpl-{uuid.uuid4().hex}"
            self.created = int(time.time())
        if not self.model and isinstance(data.get("modelVersion"), str):
            self.model = data["modelVersion"]
        if isinstance(data.get("usageMetadata"), dict):
            self.usage = data["usageMetadata"]
        out: list[dict] = []
        candidates = data.get("candidates")
        if not candidates:
            feedback = data.get("promptFeedback")
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                out += self._start(0)
                out.append(self._chunk(0, {}, "content_filter"))
                self.finished.add(0)
                return out + self._end()
            return out
        for position, candidate in enumerate(candidates):
            if isinstance(candidate, dict):
                out += self._candidate(candidate, position)
        if self.finished and not self.open:
            out += self._end()
        return out

    def _chunk(self, index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def _start(self, index: int) -> list[dict]:
        if index in self.started:
            return []
        self.started.add(index)
        return [self._chunk(index, {"role": "assistant", "content": ""})]

    def _candidate(self, candidate: dict, position: int) -> list[dict]:
        given = candidate.get("index")
        index = given if isinstance(given, int) and not isinstance(given, bool) else position
        if index in self.finished:
            return []
        out = self._start(index)
        for part in _candidate_parts(candidate):
            text = part.get("text")
            if isinstance(text, str) and text:
                key = "reasoning_content" if part.get("thought") is True else "content"
                out.append(self._chunk(index, {key: text}))
            if isinstance(part.get("functionCall"), dict):
                call = _call(part["functionCall"])
                number = self.calls[index] = self.calls.get(index, -1) + 1
                out.append(self._chunk(index, {"tool_calls": [{"index": number, **call}]}))
            if isinstance(part.get("inlineData"), dict) and (image := _image(part["inlineData"])) is not None:
                out.append(self._chunk(index, {"images": [image]}))  # as OpenRouter streams them
        reason = candidate.get("finishReason")
        if reason:
            self.finished.add(index)
            self.open.discard(index)
            out.append(self._chunk(index, {}, _finish(reason, called=index in self.calls)))
        else:
            self.open.add(index)
        return out

    def _end(self) -> list[dict]:
        self.done = True
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
