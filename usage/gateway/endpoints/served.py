"""Which entry points a model serves — the one answer `/v1/models` shows and the lifecycle enforces
— and which adapter of a route answers a client format.

A route answers a client format when an adapter of its provider speaks that format (pass-through)
or a translation joins the two (translate/). The model's kind narrows it: a chat model serves the
text endpoints; an image model serves the image endpoints, and chat too when a route of its can
answer chat (Gemini's image models generate images inside a chat answer).
"""

from __future__ import annotations

from openbili.core.errors import ModelNotSupported
from usage.gateway.providers import adapters_of, provider_for
from usage.gateway.providers.base import Provider
from usage.gateway.state import ModelInfo, RouteInfo
from usage.gateway.translate import Translation, translation_for

# Every client format with an endpoint, in /v1/models order, and its paths.
PATHS = {
    "chat": ("/v1/chat/completions",),
    "messages": ("/v1/messages", "/v1/messages/count_tokens"),
    "responses": ("/v1/responses",),
    "images": ("/v1/images/generations",),
    "image_edits": ("/v1/images/edits",),
}
TEXT_FORMATS = ("chat", "messages", "responses")


def adapter_for(provider: str, fmt: str) -> tuple[Provider, Translation | None] | None:
    """The adapter of `provider` that answers client format `fmt` and the translation between
    them (None: the same format, bytes pass through); None when none can. Pass-through first."""
    adapters = adapters_of(provider)
    for adapter in adapters:
        if adapter.wire == fmt:
            return adapter, None
    for adapter in adapters:
        translation = translation_for(fmt, adapter.wire)
        if translation is not None:
            return adapter, translation
    return None


def _answers(route: RouteInfo, fmt: str, kind: str) -> bool:
    if kind == "image":  # the provider says which formats its image models answer (Provider.image_formats)
        primary = provider_for(route.provider)
        if primary is None or fmt not in primary.image_formats:
            return False
    elif fmt not in TEXT_FORMATS:
        return False
    return adapter_for(route.provider, fmt) is not None


def formats_served(model: ModelInfo) -> tuple[str, ...]:
    return tuple(fmt for fmt in PATHS if any(_answers(route, fmt, model.kind) for route in model.routes))


def endpoints_served(model: ModelInfo) -> list[str]:
    return [path for fmt in formats_served(model) for path in PATHS[fmt]]


def require_served(model: ModelInfo, fmt: str, path: str) -> None:
    """400 model_not_supported_for_endpoint (its usage row like any refusal) when `model` does not
    serve the client format `fmt`: e.g. an image model on /v1/messages, a chat model on
    /v1/images/generations."""
    if fmt not in formats_served(model):
        where = ", ".join(endpoints_served(model)) or "no endpoint yet"
        message = f"The model '{model.name}' is not served on {path} (it serves: {where})."
        raise ModelNotSupported(message, param="model")
