"""Fake LLM upstream (OpenAI, Anthropic, Gemini wire formats) for tests, the offline demo and benchmarks.

Standalone: no Django imports. See ``server`` for the endpoints, scenarios and token formula.
"""

from openbili.fake_upstream.server import (
    DEFAULT_CHUNKS,
    PNG_B64,
    PNG_BYTES,
    FakeUpstream,
    Scenario,
    UpstreamState,
    count_words,
    make_app,
    serve,
)

__all__ = [
    "DEFAULT_CHUNKS",
    "PNG_B64",
    "PNG_BYTES",
    "FakeUpstream",
    "Scenario",
    "UpstreamState",
    "count_words",
    "make_app",
    "serve",
]
