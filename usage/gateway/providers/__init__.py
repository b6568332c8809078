"""Upstream providers by route provider: one module per upstream wire format (see base.py).

Adding a provider is one module here (URL, auth, SSE framing, usage normalisation, errors, probe)
plus, when its wire format is new, the translation pairs to the client formats (translate/).
Gemini arrives with its issue; until then its routes fail their probe and their models stay
hidden (CONTRACT §4).
"""

from __future__ import annotations

from usage.gateway.providers.anthropic import AnthropicProvider
from usage.gateway.providers.base import Provider
from usage.gateway.providers.openai import OpenAIProvider

PROVIDERS: dict[str, Provider] = {provider.name: provider for provider in (OpenAIProvider(), AnthropicProvider())}


def provider_for(name: str) -> Provider | None:
    return PROVIDERS.get(name)
