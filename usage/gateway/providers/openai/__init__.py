"""OpenAI-compatible upstreams (OpenAI, Azure-style proxies, vLLM, the fake and demo upstream).

One route speaks several OpenAI wire formats, one module each: Chat Completions (chat.py, the
format every OpenAI-compatible server has), the Responses API (responses.py) and Images
(images.py: generations, and edits as multipart). They share the base URL, the bearer auth and
the error mapping; the lifecycle picks the one that speaks the client's own format, so that each
of those endpoints passes through untouched.
"""

from usage.gateway.providers.openai.chat import OpenAIProvider, OpenAIReader, usage_from_openai
from usage.gateway.providers.openai.images import OpenAIImageEditsProvider, OpenAIImagesProvider
from usage.gateway.providers.openai.responses import OpenAIResponsesProvider, ResponsesReader

__all__ = [
    "OpenAIImageEditsProvider",
    "OpenAIImagesProvider",
    "OpenAIProvider",
    "OpenAIReader",
    "OpenAIResponsesProvider",
    "ResponsesReader",
    "usage_from_openai",
]
