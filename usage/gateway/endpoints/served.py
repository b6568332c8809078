"""Which entry points a model serves — the one answer `/v1/models` shows and the lifecycle enforces.

A model serves a client format when one of its routes can answer it: its provider speaks that
format (pass-through) or a translation joins the two (translate/). Only chat models generate
text; an image model serves no text endpoint unless a route of its can answer chat (Gemini's image
models, once their translation lands). Images get their own endpoint with their issue.
"""

from __future__ import annotations

from openbili.core.errors import ModelNotSupported
from usage.gateway.providers import provider_for
from usage.gateway.state import ModelInfo
from usage.gateway.translate import translation_for

FORMATS = ("chat", "messages")  # every client format with an endpoint, in /v1/models order
PATHS = {"chat": ("/v1/chat/completions",), "messages": ("/v1/messages", "/v1/messages/count_tokens")}


def formats_served(model: ModelInfo) -> tuple[str, ...]:
    if model.kind != "chat":
        return ()
    wires = {provider.wire for route in model.routes if (provider := provider_for(route.provider)) is not None}
    return tuple(fmt for fmt in FORMATS if any(wire == fmt or translation_for(fmt, wire) for wire in wires))


def endpoints_served(model: ModelInfo) -> list[str]:
    return [path for fmt in formats_served(model) for path in PATHS[fmt]]


def require_served(model: ModelInfo, fmt: str, path: str) -> None:
    """400 model_not_supported_for_endpoint (its usage row like any refusal) when `model` does not
    serve the client format `fmt`: e.g. an image model on /v1/chat/completions."""
    if fmt not in formats_served(model):
        where = ", ".join(endpoints_served(model)) or "no text endpoint yet"
        message = f"The model '{model.name}' is not served on {path} (it serves: {where})."
        raise ModelNotSupported(message, param="model")
