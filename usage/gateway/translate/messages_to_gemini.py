"""Anthropic Messages client → Gemini API upstream (generateContent, streamGenerateContent?alt=sse).

E.g. Claude Code pointed at a Gemini model. Pure: no I/O, the client's body is never mutated (the
output shares no mutable structure with it), and anything Gemini cannot carry raises
`InvalidRequest` naming the client's `param`. Reuses chat_to_gemini (finish reasons, image types,
thinking budgets, JSON schema output) and messages_to_openai (the Messages readers, stop reasons)
rather than restating them.

| Messages                                 | Gemini                                                     |
| ---------------------------------------- | ---------------------------------------------------------- |
| `system` (string or text blocks)         | `systemInstruction.parts`                                  |
| user / assistant turns                   | `contents` user / model (same-role neighbours join)        |
| text block                               | text part (empty ones dropped: Gemini refuses them)        |
| image: base64 / url                      | `inlineData` / `fileData` (MIME type from the URL, or 400) |
| document: base64 PDF / url PDF / text    | `inlineData` / `fileData` application/pdf / text part      |
| tool_use                                 | `functionCall` {id, name, args}                            |
| tool_result (text, images, is_error)     | `functionResponse` {id, name, response: {output or error}} |
|                                          | (images follow as parts of the same user turn)             |
| thinking block signed `gemini:` (ours)   | thought part with its `thoughtSignature`, or the signature |
|                                          | of the function call after it (see "Thought signatures")   |
| thinking (Anthropic's) / redacted        | dropped: only Anthropic can read them                      |
| max_tokens, temperature, top_p, top_k    | maxOutputTokens, temperature, topP, topK                   |
| stop_sequences (at most 5)               | stopSequences                                              |
| tools (custom, input_schema)             | functionDeclarations (parametersJsonSchema, as given)      |
| tool_choice auto / any / tool / none     | functionCallingConfig AUTO / ANY / ANY+allowed / NONE      |
| thinking enabled / adaptive / disabled   | thinkingBudget (+includeThoughts) / dynamic / budget 0     |
| output_config.effort (no budget given)   | thinkingBudget (chat_to_gemini.THINKING_BUDGET)            |
| output_config.format (or output_format)  | responseMimeType application/json + responseJsonSchema     |

Refused (400, naming the param): server tools (web_search, bash, text_editor, computer, code
execution, ...), `disable_parallel_tool_use` (Gemini may always call several tools at once),
more than 5 stop sequences, Files API and other sources Gemini cannot read, GIF images,
citations, server-tool blocks, `container`, `mcp_servers`, `context_management`, `inference_geo`.

Dropped on purpose, because they do not change the output: `cache_control` markers anywhere (a
hint to Anthropic's prompt cache; Gemini caches implicitly), `metadata.user_id` (Gemini has no
end-user field), `service_tier`, `speed`, `diagnostics`, `stream` (the provider's URL decides),
`strict` on tools (Gemini's JSON-schema parameters have no switch), a document's `title` and
`context` (citation metadata), `citations` on earlier assistant text.

Replies: candidate 0 only (Messages has one answer). `stop_sequence` is always null and a matched
stop sequence ends as `end_turn`: Gemini says STOP without naming the sequence. Safety-like finish
reasons and a blocked prompt end as `refusal`. Usage: input = prompt + tool-use prompt − cached,
cache_read = cached, cache_creation = 0 (Gemini's implicit cache has no write), output =
candidates + thoughts (the provider's usage_from_gemini).

Thought signatures: Gemini 3 refuses a conversation whose function calls come back without the
`thoughtSignature` they were sent with. The only field a Messages client returns untouched is a
thinking block's `signature`, so a Gemini signature travels there, prefixed `gemini:`:
- a thought part becomes a thinking block (consecutive thoughts join until one is signed), signed
  with the thought's signature if it had one, else "" (unsigned; dropped on the way back);
- a signature on a function call becomes an empty thinking block right before its tool_use;
  on the way back an empty signed block gives its signature to the next part of the turn;
- a signature on a text part is dropped: Gemini checks signatures only on function calls of the
  current turn, and a text answer ends the turn; carrying it would put a thinking block first
  in plain answers, where naive clients read content[0].text.
A tool_use with no Gemini signature before it (a conversation begun on another model, or a client
that strips thinking blocks) gets the placeholder Google documents for history the model did not
write, on the first call of each model turn, so Gemini 3 still answers.
"""

from __future__ import annotations

import copy
import json
import mimetypes
import uuid
from typing import Any

import usage.gateway.translate.messages_to_openai as messages
from openbili.core.errors import InvalidRequest
from usage.gateway.providers.base import Event
from usage.gateway.providers.gemini import usage_from_gemini
from usage.gateway.translate.chat_request import invalid as _invalid
from usage.gateway.translate.chat_to_gemini import (
    IMAGE_TYPES,
    THINKING_BUDGET,
    UNCARRIABLE,
    _candidate_parts,
    _finish,
    _response_format,
    _tool_config,
    sign_calls,
)

SIGNATURE_PREFIX = "gemini:"  # marks a thinking block's signature as Gemini's, not Anthropic's
PDF = "application/pdf"
MAX_STOP_SEQUENCES = 5  # Gemini's limit (GenerationConfig.stopSequences)
SEPARATOR = "\n\n"  # the text blocks of one tool result become one output string
# Features that change what the upstream does and that Gemini has no way to ask for.
NOT_CARRIED = {
    "container": "Anthropic's code-execution containers",
    "mcp_servers": "Anthropic's MCP connector",
    "context_management": "Anthropic's context editing",
    "inference_geo": "Choosing the inference region",
}
# output_config.effort → a chat_to_gemini.THINKING_BUDGET level (Anthropic's "max" is the top one).
EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
THINKING_BLOCK = {"type": "thinking", "thinking": "", "signature": ""}
TEXT_BLOCK = {"type": "text", "text": ""}


# --- request ---------------------------------------------------------------------------------


def request(body: dict, *, max_output_tokens: int) -> dict:
    """A Messages request → a Gemini GenerateContentRequest (the model and stream-or-not are in
    the URL: the provider's business)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    for name, feature in NOT_CARRIED.items():
        if body.get(name) not in (None, []):
            raise _invalid(f"`{name}`: {feature} cannot be used with this model.", name)
    out: dict[str, Any] = {"contents": _contents(body.get("messages"))}
    system = _system(body.get("system"))
    if system:
        out["systemInstruction"] = {"parts": system}
    out |= _tools(body.get("tools"), body.get("tool_choice"))
    out["generationConfig"] = _generation_config(body, max_output_tokens)
    return out


def _system(value: object) -> list[dict]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"text": value}] if value else []
    blocks = messages._blocks(value, "system", only={"text"})
    return [{"text": text} for param, block in blocks if (text := messages._text(block, param))]


def _contents(value: object) -> list[dict]:
    turns = messages._list(value, "messages")
    if not turns:
        raise _invalid("`messages` must hold at least one message.", "messages")
    contents: list[dict] = []
    names: dict[str, str] = {}  # tool_use id → function name (a functionResponse needs the name)
    for i, message in enumerate(turns):
        where = f"messages[{i}]"
        message = messages._object(message, where)
        role = message.get("role")
        if role == "user":
            role, parts = "user", _user_parts(message.get("content"), where, names)
        elif role == "assistant":
            role, parts = "model", _model_parts(message.get("content"), where, names)
        else:
            raise _invalid("`role` must be 'user' or 'assistant'.", f"{where}.role")
        if not parts:
            if role == "model":
                continue  # thinking only, or an empty prefill: nothing the model would see
            raise _invalid(f"`{where}.content` is empty (this model rejects empty messages).", f"{where}.content")
        # Anthropic joins consecutive same-role turns; Gemini wants them alternating.
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"] += parts
        else:
            contents.append({"role": role, "parts": parts})
    sign_calls(contents)  # Gemini 3 checks the first function call of each step
    return contents


def _user_parts(content: object, where: str, names: dict[str, str]) -> list[dict]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    responses: list[dict] = []
    media: list[dict] = []
    parts: list[dict] = []
    for param, block in messages._blocks(content, f"{where}.content"):
        if block["type"] == "tool_result":
            response, tool_media = _tool_result(block, param, names)
            responses.append(response)
            media += tool_media
        elif (part := _part(USER_PARTS, block, param)) is not None:
            parts.append(part)
    # Function responses first, as Gemini pairs them with the calls; a result's images after them.
    return responses + media + parts


def _model_parts(content: object, where: str, names: dict[str, str]) -> list[dict]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict] = []
    pending: str | None = None  # a function call's signature, carried by the block before it
    for param, block in messages._blocks(content, f"{where}.content"):
        kind = block["type"]
        if kind in ("thinking", "redacted_thinking"):
            thought = _thought(block, param)
            if thought is not None and "text" in thought:
                parts.append(thought)
            elif thought is not None:
                pending = thought["thoughtSignature"]
            continue
        if kind == "text":
            part = _text_part(block, param)
            if part is None:
                continue
        elif kind == "tool_use":
            part = _function_call(block, param)
            names[part["functionCall"]["id"]] = part["functionCall"]["name"]
        else:
            raise messages._unsupported(kind, param)
        if pending is not None:
            part["thoughtSignature"] = pending
            pending = None
        parts.append(part)
    return parts


def _thought(block: dict, param: str) -> dict | None:
    """A thinking block this translation wrote → its Gemini part (without `text` when it only
    carries the next call's signature); None for Anthropic's thinking, which only Anthropic can
    read (and which Anthropic does not feed back to the model either)."""
    signature = block.get("signature")
    if block["type"] != "thinking" or not isinstance(signature, str) or not signature.startswith(SIGNATURE_PREFIX):
        return None
    thought = {"thoughtSignature": signature.removeprefix(SIGNATURE_PREFIX)}
    text = messages._string(block.get("thinking"), f"{param}.thinking")
    return {"text": text, "thought": True, **thought} if text else thought


def _function_call(block: dict, param: str) -> dict:
    call_id = messages._string(block.get("id"), f"{param}.id")
    if not call_id:
        raise _invalid(f"`{param}.id` must not be empty.", f"{param}.id")
    name = messages._string(block.get("name"), f"{param}.name")
    args = copy.deepcopy(messages._object(block.get("input"), f"{param}.input"))
    # Gemini 3 gives and matches call ids; older models ignore one they did not give.
    return {"functionCall": {"id": call_id, "name": name, "args": args}}


def _tool_result(block: dict, param: str, names: dict[str, str]) -> tuple[dict, list[dict]]:
    call_id = messages._string(block.get("tool_use_id"), f"{param}.tool_use_id")
    if call_id not in names:
        raise _invalid(
            f"`{param}.tool_use_id` {call_id!r} answers no tool_use of an earlier assistant message "
            "(this model needs the tool's name, which only that tool_use gives).",
            f"{param}.tool_use_id",
        )
    content = block.get("content")
    texts: list[str] = []
    media: list[dict] = []
    if isinstance(content, str):
        texts.append(content)
    elif content is not None:
        for item_param, item in messages._blocks(content, f"{param}.content"):
            part = _part(TOOL_RESULT_PARTS, item, item_param)
            if part is not None and "text" in part:
                texts.append(part["text"])
            elif part is not None:
                media.append(part)
    # The documented keys of FunctionResponse.response: "output", or "error" for a failed call.
    key = "error" if block.get("is_error") is True else "output"
    response = {"id": call_id, "name": names[call_id], "response": {key: SEPARATOR.join(texts)}}
    return {"functionResponse": response}, media


def _part(table: dict, block: dict, param: str) -> dict | None:
    convert = table.get(block["type"])
    if convert is None:
        raise messages._unsupported(block["type"], param)
    return convert(block, param)


def _text_part(block: dict, param: str) -> dict | None:
    text = messages._text(block, param)
    return {"text": text} if text else None  # Gemini refuses an empty text part


def _image_part(block: dict, param: str) -> dict:
    source = messages._object(block.get("source"), f"{param}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = messages._string(source.get("media_type"), f"{param}.source.media_type")
        if media_type not in IMAGE_TYPES:
            raise _invalid(
                f"Image type {media_type!r} is not supported by this model (png, jpeg, webp, heic, heif).",
                f"{param}.source.media_type",
            )
        return {"inlineData": {"mimeType": media_type, "data": _data(source, param)}}
    if kind == "url":
        url = _url(source, param)
        guessed, _ = mimetypes.guess_type(url.split("?", 1)[0].split("#", 1)[0], strict=False)
        if guessed not in IMAGE_TYPES:
            # Gemini's fileData wants a MIME type; a wrong guess would be a vaguer upstream error.
            raise _invalid(
                "The image type cannot be told from this URL (.png, .jpg, .webp, .heic or .heif); "
                "send the image as base64.",
                f"{param}.source.url",
            )
        return {"fileData": {"mimeType": guessed, "fileUri": url}}
    # "file" (Anthropic's Files API) exists only at Anthropic.
    raise _invalid("An image source must be 'base64' or 'url' for this model.", f"{param}.source.type")


def _document_part(block: dict, param: str) -> dict | None:
    citations = block.get("citations")
    if isinstance(citations, dict) and citations.get("enabled"):
        raise _invalid("Citations cannot be used with this model.", f"{param}.citations")
    source = messages._object(block.get("source"), f"{param}.source")
    kind = source.get("type")
    if kind == "text":
        text = messages._string(source.get("data"), f"{param}.source.data")
        return {"text": text} if text else None
    if kind == "base64":
        if source.get("media_type") != PDF:
            raise _invalid(f"A base64 document must be '{PDF}'.", f"{param}.source.media_type")
        return {"inlineData": {"mimeType": PDF, "data": _data(source, param)}}
    if kind == "url":  # Anthropic's URL documents are PDFs
        return {"fileData": {"mimeType": PDF, "fileUri": _url(source, param)}}
    raise _invalid("A document source must be 'base64', 'url' or 'text' for this model.", f"{param}.source.type")


def _data(source: dict, param: str) -> str:
    return messages._string(source.get("data"), f"{param}.source.data")


def _url(source: dict, param: str) -> str:
    url = messages._string(source.get("url"), f"{param}.source.url")
    if not url.startswith(("https://", "http://")):
        raise _invalid("The URL must be http(s): Gemini fetches it itself.", f"{param}.source.url")
    return url


USER_PARTS = {"text": _text_part, "image": _image_part, "document": _document_part}
TOOL_RESULT_PARTS = USER_PARTS  # Anthropic allows text, images and documents in a tool result


# --- request: tools, generation config ---------------------------------------------------------


def _tools(tools: object, choice: object) -> dict:
    # messages_to_openai reads tools and tool_choice (server tools refused, schemas copied);
    # its Chat shapes then become Gemini's.
    chat = messages._tools(tools, choice)
    if chat.get("parallel_tool_calls") is False:
        raise _invalid(UNCARRIABLE["parallel_tool_calls"][1], "tool_choice.disable_parallel_tool_use")
    out: dict[str, Any] = {}
    if chat.get("tools"):
        out["tools"] = [{"functionDeclarations": [_declaration(tool["function"]) for tool in chat["tools"]]}]
    if chat.get("tool_choice") is not None:
        out["toolConfig"] = _tool_config(chat["tool_choice"])
    return out


def _declaration(function: dict) -> dict:
    # `parameters` is already the translation's own copy; `strict` has no Gemini counterpart.
    out = {"name": function["name"]}
    if "description" in function:
        out["description"] = function["description"]
    return out | {"parametersJsonSchema": function["parameters"]}


def _generation_config(body: dict, max_output_tokens: int) -> dict:
    max_tokens = messages._max_tokens(body.get("max_tokens"), max_output_tokens)
    config: dict[str, Any] = {"maxOutputTokens": max_tokens}
    for name, field in (("temperature", "temperature"), ("top_p", "topP")):
        if body.get(name) is not None:
            config[field] = messages._number(body[name], name)
    if body.get("top_k") is not None:
        config["topK"] = messages._integer(body["top_k"], "top_k")
    stop = _stop(body.get("stop_sequences"))
    if stop:
        config["stopSequences"] = stop
    output_config = (
        {} if body.get("output_config") is None else messages._object(body["output_config"], "output_config")
    )
    output_format = output_config.get("format")
    if output_format is None:
        output_format = body.get("output_format")  # the structured-outputs beta's spelling
    if output_format is not None:
        # Anthropic's format → Chat's json_schema (messages_to_openai) → Gemini's (chat_to_gemini).
        config |= _response_format(messages._response_format(output_format))
    thinking = _thinking(body.get("thinking"), output_config.get("effort"), max_tokens)
    if thinking:
        config["thinkingConfig"] = thinking
    return config


def _stop(value: object) -> list[str]:
    items = messages._list(value or [], "stop_sequences")
    stop = [messages._string(item, f"stop_sequences[{i}]") for i, item in enumerate(items)]
    if len(stop) > MAX_STOP_SEQUENCES:
        raise _invalid(
            f"This model takes at most {MAX_STOP_SEQUENCES} stop sequences, not {len(stop)}.", "stop_sequences"
        )
    return stop


def _thinking(value: object, effort: object, max_tokens: int) -> dict:
    """thinking (+ output_config.effort) → thinkingConfig. An explicit budget wins over an effort;
    thoughts are shown (includeThoughts) only when the client asked for thinking and did not ask
    for it `omitted`. Without either field, the model's own default stands."""
    thinking = {} if value is None else messages._object(value, "thinking")
    kind = thinking.get("type")
    if kind not in (None, "enabled", "adaptive", "disabled"):
        raise _invalid("`thinking.type` must be 'enabled', 'adaptive' or 'disabled'.", "thinking.type")
    if kind == "disabled":
        # Models that cannot stop thinking (2.5 Pro, 3 Pro) refuse budget 0 upstream, as for Chat.
        return {"thinkingBudget": 0}
    config: dict[str, Any] = {}
    if kind == "enabled":
        config["thinkingBudget"] = min(
            messages._integer(thinking.get("budget_tokens"), "thinking.budget_tokens"), max_tokens
        )
    elif effort is not None:
        level = EFFORT.get(effort) if isinstance(effort, str) else None
        if level is None:
            raise _invalid(f"`output_config.effort` must be one of {', '.join(EFFORT)}.", "output_config.effort")
        config["thinkingBudget"] = min(THINKING_BUDGET[level], max_tokens)
    if kind is not None and thinking.get("display") != "omitted":
        config["includeThoughts"] = True
    return config


# --- response ----------------------------------------------------------------------------------


def response(data: dict, *, request: dict) -> dict:
    """A Gemini GenerateContentResponse → a Messages `message`, named with the client's model."""
    candidate = _first_candidate(data)
    content = _content(_candidate_parts(candidate)) if candidate is not None else []
    return {
        "id": _message_id(data.get("responseId")),
        "type": "message",
        "role": "assistant",
        "model": request.get("model") or "",
        "content": content,
        "stop_reason": _stop_reason(data, candidate, called=any(b["type"] == "tool_use" for b in content)),
        "stop_sequence": None,
        "usage": _usage(data.get("usageMetadata")),
    }


def _first_candidate(data: dict) -> dict | None:
    # One candidate is asked for (no candidateCount): the first, if a proxy sent more.
    candidates = data.get("candidates")
    first = candidates[0] if isinstance(candidates, list) and candidates else None
    return first if isinstance(first, dict) and first.get("index", 0) in (0, None) else None


def _content(parts: list[dict]) -> list[dict]:
    blocks: list[dict] = []
    for part in parts:
        signature = part.get("thoughtSignature")
        signature = signature if isinstance(signature, str) and signature else None
        text = part.get("text")
        if part.get("thought") is True:
            if not text and not signature:
                continue
            last = blocks[-1] if blocks else None
            if last is None or last["type"] != "thinking" or last["signature"]:
                last = dict(THINKING_BLOCK)
                blocks.append(last)
            last["thinking"] += text if isinstance(text, str) else ""
            if signature:
                last["signature"] = SIGNATURE_PREFIX + signature  # a signed thought ends the run
        elif isinstance(part.get("functionCall"), dict):
            if signature:
                blocks.append(THINKING_BLOCK | {"signature": SIGNATURE_PREFIX + signature})
            blocks.append(_tool_use(part["functionCall"]))
        elif isinstance(text, str) and text:  # a text part's signature is dropped (module docstring)
            if blocks and blocks[-1]["type"] == "text":
                blocks[-1]["text"] += text
            else:
                blocks.append({"type": "text", "text": text})
        # inlineData, executableCode, codeExecutionResult: never asked for (no image modality, no
        # code-execution tool is ever sent), and a Messages reply has no block for them.
    return blocks


def _tool_use(call: dict) -> dict:
    call_id = call.get("id")
    args = call.get("args")
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else _new_id("toolu_"),
        "name": call.get("name") if isinstance(call.get("name"), str) else "",
        "input": args if isinstance(args, dict) else {},
    }


def _stop_reason(data: dict, candidate: dict | None, *, called: bool) -> str:
    if candidate is None:  # no candidate: the prompt was blocked (promptFeedback.blockReason)
        feedback = data.get("promptFeedback")
        return "refusal" if isinstance(feedback, dict) and feedback.get("blockReason") else "end_turn"
    # Gemini → Chat (chat_to_gemini) → Messages (messages_to_openai): one table each way, kept once.
    return messages.STOP.get(_finish(candidate.get("finishReason"), called=called), "end_turn")


def _usage(metadata: object) -> dict:
    usage = usage_from_gemini(metadata if isinstance(metadata, dict) else {})
    assert usage is not None
    return {
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
    }


def _message_id(response_id: object) -> str:
    return "msg_" + response_id if isinstance(response_id, str) and response_id else _new_id("msg_")


def _new_id(prefix: str) -> str:
    """An id Gemini did not give (the Gemini API often omits functionCall.id; responseId too)."""
    return f"{prefix}{uuid.uuid4().hex[:24]}"


# --- stream ------------------------------------------------------------------------------------


class Stream:
    """Gemini stream chunks → Messages events.

    Each chunk is a whole GenerateContentResponse holding the next parts; thoughts and text come
    in pieces, function calls whole. Each run of one kind becomes one content block, closed when
    another starts, with the same blocks response() makes. Gemini has no terminator event: the
    chunk with candidate 0's finishReason (or a blocked prompt) ends the message with
    `message_delta` (stop reason and the final usage), where the reader sets `completed`.
    `message_start` carries the usage known so far (the prompt). `message_stop` and the error
    event are the endpoint's and the lifecycle's to send.
    """

    def __init__(self, *, client_wants_usage: bool, request: dict) -> None:
        del client_wants_usage  # Messages streams always carry usage
        self._model = request.get("model") or ""
        self._started = False
        self._done = False
        self._open: str | None = None  # the kind of the open block: "text" or "thinking"
        self._index = -1  # the latest block's index
        self._called = False
        self._usage: object = None

    def feed(self, event: Event) -> list[dict]:
        data = event.data
        # Comments, keep-alives and error chunks carry nothing to translate (the lifecycle handles
        # an upstream error itself); nothing follows the end.
        if self._done or not isinstance(data, dict) or data.get("error") is not None:
            return []
        if isinstance(data.get("usageMetadata"), dict):
            self._usage = data["usageMetadata"]
        out = self._start(data)
        candidate = _first_candidate(data)
        if candidate is None:
            feedback = data.get("promptFeedback")
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                out += self._finish(_stop_reason(data, None, called=False))
            return out
        for part in _candidate_parts(candidate):
            out += self._part(part)
        if candidate.get("finishReason"):
            out += self._finish(_stop_reason(data, candidate, called=self._called))
        return out

    def _start(self, data: dict) -> list[dict]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": _message_id(data.get("responseId")),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(self._usage),
        }
        return [{"type": "message_start", "message": message}]

    def _part(self, part: dict) -> list[dict]:
        signature = part.get("thoughtSignature")
        signature = signature if isinstance(signature, str) and signature else None
        text = part.get("text")
        text = text if isinstance(text, str) else ""
        if part.get("thought") is True:
            return self._thought(text, signature)
        if isinstance(part.get("functionCall"), dict):
            return self._call(part["functionCall"], signature)
        if text:  # a text part's signature is dropped, as in response()
            return self._write("text", {"type": "text_delta", "text": text})
        return []

    def _thought(self, text: str, signature: str | None) -> list[dict]:
        out: list[dict] = []
        if text:
            out += self._write("thinking", {"type": "thinking_delta", "thinking": text})
        if signature:
            out += [] if self._open == "thinking" else self._begin("thinking", dict(THINKING_BLOCK))
            out.append(self._delta({"type": "signature_delta", "signature": SIGNATURE_PREFIX + signature}))
            out += self._close()  # a signed thought ends the run
        return out

    def _call(self, call: dict, signature: str | None) -> list[dict]:
        self._called = True
        out = self._close()
        if signature:
            out += self._begin("thinking", dict(THINKING_BLOCK))
            out.append(self._delta({"type": "signature_delta", "signature": SIGNATURE_PREFIX + signature}))
            out += self._close()
        block = _tool_use(call)
        arguments = json.dumps(block["input"], ensure_ascii=False)  # the characters the model wrote
        out += self._begin("tool_use", block | {"input": {}})
        out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return out + self._close()

    def _write(self, kind: str, delta: dict) -> list[dict]:
        out = (
            [] if self._open == kind else self._begin(kind, dict(THINKING_BLOCK if kind == "thinking" else TEXT_BLOCK))
        )
        return [*out, self._delta(delta)]

    def _begin(self, kind: str, block: dict) -> list[dict]:
        out = self._close()
        self._index += 1
        self._open = kind
        return [*out, {"type": "content_block_start", "index": self._index, "content_block": block}]

    def _delta(self, delta: dict) -> dict:
        return {"type": "content_block_delta", "index": self._index, "delta": delta}

    def _close(self) -> list[dict]:
        if self._open is None:
            return []
        self._open = None
        return [{"type": "content_block_stop", "index": self._index}]

    def _finish(self, stop_reason: str) -> list[dict]:
        self._done = True
        # The SDK's accumulator takes input_tokens and cache_read_input_tokens from message_delta
        # when present, over message_start's: get_final_message().usage ends right.
        usage = _usage(self._usage)
        delta = {"stop_reason": stop_reason, "stop_sequence": None}
        return [*self._close(), {"type": "message_delta", "delta": delta, "usage": usage}]
