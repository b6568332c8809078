"""Translation between a client wire format and a different upstream wire format.

Pure functions, no I/O, one module per (client format, upstream format) pair. Each module
provides:

- `request(body, *, max_output_tokens) -> dict`: the client's request body → the upstream's.
  Never mutates `body` (a retry to another route starts again from the client's original). The
  upstream model name, stream usage options and auth are the provider's business, not this one's.
  Anything that cannot be carried across raises `InvalidRequest` (400, naming the `param`),
  never a silent drop.
- `response(data, *, request) -> dict`: a non-stream upstream reply (parsed JSON) → the client's
  reply. `request` is the client's (clamped) body, for formats whose replies echo it (a Responses
  object repeats its instructions, tools and settings; the images endpoint its output format);
  the others ignore it.
- `Stream(client_wants_usage=..., request=...)`: a small state machine; `feed(event)` takes one upstream
  `providers.base.Event` (the terminator included, flagged `final`) and returns the client-format
  events it produces, as dicts, in order. The endpoint encodes them for the wire, and sends the
  client format's own terminator (`[DONE]`, `message_stop`) itself, after the bill is settled.

When the formats match there is no translation at all: the lifecycle passes bytes through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from usage.gateway.providers.base import Event


class StreamTranslator(Protocol):
    def feed(self, event: Event) -> list[dict]: ...


@dataclass(frozen=True, slots=True)
class Translation:
    client: str
    upstream: str
    request: Callable[..., dict]
    response: Callable[..., dict]
    stream: Callable[..., StreamTranslator]


def translation_for(client: str, upstream: str) -> Translation | None:
    """None when the formats match: pass-through."""
    if client == upstream:
        return None
    return TRANSLATIONS.get((client, upstream))


def _load() -> dict[tuple[str, str], Translation]:
    from usage.gateway.translate import (
        chat_to_anthropic,
        chat_to_gemini,
        images_to_gemini,
        messages_to_gemini,
        messages_to_openai,
        responses_to_anthropic,
        responses_to_gemini,
    )

    pairs = {}
    for module, client, upstream in (
        (chat_to_anthropic, "chat", "messages"),
        (messages_to_openai, "messages", "chat"),
        (chat_to_gemini, "chat", "gemini"),
        (images_to_gemini, "images", "gemini"),
        (messages_to_gemini, "messages", "gemini"),
        (responses_to_anthropic, "responses", "messages"),
        (responses_to_gemini, "responses", "gemini"),
    ):
        pairs[client, upstream] = Translation(client, upstream, module.request, module.response, module.Stream)
    return pairs


TRANSLATIONS: dict[tuple[str, str], Translation] = _load()
