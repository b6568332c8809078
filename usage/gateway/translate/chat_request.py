"""Reading a Chat Completions request, for every translation from chat to another upstream format
(chat_to_anthropic, chat_to_gemini): what the client's fields must be is the client format's, and
is checked once; each translation then writes its upstream's shape. The small value checks at the
top serve every translation's request reader (Responses' and Messages' too)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from openbili.core.errors import InvalidRequest


def invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class FunctionTool:
    name: str
    description: str | None
    parameters: dict | None  # the client's own JSON schema object: copy it before sending it on


def function_tool(tool: Any, param: str) -> FunctionTool:
    """A `tools[i]` entry of type function, or a 400 naming what is wrong with it."""
    if not isinstance(tool, dict):
        raise InvalidRequest(f"{param} must be an object.", param=param)
    if tool.get("type") != "function":
        message = f"{param}.type {tool.get('type')!r} is not supported for this model (only 'function')."
        raise InvalidRequest(message, param=param)
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise InvalidRequest(f"{param}.function.name must be a non-empty string.", param=f"{param}.function.name")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest(f"{param}.function.description must be a string.", param=f"{param}.function.description")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        message = f"{param}.function.parameters must be a JSON schema object."
        raise InvalidRequest(message, param=f"{param}.function.parameters")
    return FunctionTool(function["name"], description, parameters)


def part_text(part: dict, param: str, key: str = "text") -> str:
    """The text of a `text` part (or the `refusal` of an assistant's refusal part)."""
    text = part.get(key)
    if not isinstance(text, str):
        raise InvalidRequest(f"{param}.{key} must be a string.", param=f"{param}.{key}")
    return text


def image_url(part: dict, param: str) -> str:
    """The URL of an `image_url` part (`detail` is each translation's business)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str):
        raise InvalidRequest(f"{param}.image_url.url must be a string.", param=f"{param}.image_url.url")
    return url


def data_url(url: str, param: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:` URL; None for any other URL."""
    if not url.startswith("data:"):
        return None
    header, comma, data = url[len("data:") :].partition(",")
    fields = header.split(";")
    if not comma or fields[-1] != "base64" or not fields[0]:
        raise InvalidRequest(f"{param} must be a base64 data URL (data:<media type>;base64,<data>).", param=param)
    return fields[0], data


# A reader of one Chat content part, in the upstream's shape (None: nothing to send for it).
PartConverter = Callable[[dict, str], dict | None]


def content_parts(
    content: Any, kinds: dict[str, PartConverter], param: str, *, text: Callable[[str], dict]
) -> list[dict]:
    """A Chat message's `content` in the upstream's parts: a string is one text part (`text`, none
    when empty), a list is each part through the converter of its type; a type the upstream cannot
    take is a 400 naming the part."""
    if isinstance(content, str):
        return [text(content)] if content else []
    if not isinstance(content, list):
        raise invalid(f"{param} must be a string or a list of content parts.", param)
    out = []
    for j, part in enumerate(content):
        part_param = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise invalid(f"{part_param} must be an object.", part_param)
        kind = part.get("type")
        # A type of any JSON type can come in ([...] is no dict key: a TypeError, then a 500).
        convert = kinds.get(kind) if isinstance(kind, str) else None
        if convert is None:
            raise invalid(
                f"{part_param}.type {kind!r} is not supported for this model here (supported: {', '.join(kinds)}).",
                f"{part_param}.type",
            )
        converted = convert(part, part_param)
        if converted is not None:
            out.append(converted)
    return out
