"""Upstream providers by route provider: one module per upstream wire format (see base.py).

A route names a provider ("openai", "anthropic", "gemini"); a provider may speak several wire
formats (OpenAI: Chat Completions, Responses, Images), one adapter each. endpoints/served.py
picks, for a client format, the adapter that speaks it (bytes pass through untouched) or else the first one a
translation joins it to (translate/). Adding a provider is one module here (URL, auth, SSE
framing, usage normalisation, errors, probe) plus, when its wire format is new, the translation
pairs to the client formats.
"""

from __future__ import annotations

from usage.gateway.providers.anthropic import AnthropicProvider
from usage.gateway.providers.base import Provider
from usage.gateway.providers.gemini import GeminiProvider
from usage.gateway.providers.openai import (
    OpenAIImageEditsProvider,
    OpenAIImagesProvider,
    OpenAIProvider,
    OpenAIResponsesProvider,
)

# The first adapter of each provider is its primary one: probes and token counting use it.
PROVIDERS: dict[str, tuple[Provider, ...]] = {
    "openai": (OpenAIProvider(), OpenAIResponsesProvider(), OpenAIImagesProvider(), OpenAIImageEditsProvider()),
    "anthropic": (AnthropicProvider(),),
    "gemini": (GeminiProvider(),),
}


def provider_for(name: str) -> Provider | None:
    adapters = PROVIDERS.get(name)
    return adapters[0] if adapters else None


def adapters_of(name: str) -> tuple[Provider, ...]:
    return PROVIDERS.get(name, ())
