"""Upstream providers by route provider: one module per upstream wire format (see base.py).

Adding a provider is one module here (URL, auth, SSE framing, usage normalisation, errors, probe)
plus, when its wire format is new, the translation pairs to the client formats (translate/).
Gemini (wire "gemini") is reached from chat completions through translate/chat_to_gemini.py; a
Gemini-only model serves no other client format yet (endpoints/served.py says so).
"""

from __future__ import annotations

from usage.gateway.providers.anthropic import AnthropicProvider
from usage.gateway.providers.base import Provider
from usage.gateway.providers.gemini import GeminiProvider
from usage.gateway.providers.openai import OpenAIProvider

PROVIDERS: dict[str, Provider] = {
    provider.name: provider for provider in (OpenAIProvider(), AnthropicProvider(), GeminiProvider())
}


def provider_for(name: str) -> Provider | None:
    return PROVIDERS.get(name)
