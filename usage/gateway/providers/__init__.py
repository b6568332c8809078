"""Upstream adapters by route provider. Anthropic and Gemini adapters arrive with their issue;
until then their routes fail their probe and their models stay hidden (CONTRACT §4)."""

from __future__ import annotations

from usage.gateway.providers.base import Adapter
from usage.gateway.providers.openai import OpenAIAdapter

ADAPTERS: dict[str, Adapter] = {"openai": OpenAIAdapter()}


def adapter_for(provider: str) -> Adapter | None:
    return ADAPTERS.get(provider)
