"""OpenAI Images generations → Gemini generateContent with image output (Gemini's image models).

Keeps: `prompt` (one user turn), `size` as Gemini's aspect ratio (`imageConfig.aspectRatio`:
1024x1024 → 1:1, 1536x1024 → 3:2, any W×H whose ratio Gemini offers) and, above 1K pixels on the
long side, its `imageSize` (2K, 4K). The answer's inline images become `data[].b64_json` (the
images endpoint then stores them behind URLs) with OpenAI's `usage` (input tokens; output tokens
are the text the model wrote beside the image, the image itself is billed per image).

Refuses (400, naming the field): `n` above 1 (Gemini's image models answer one image per
request), `background: transparent` (they paint no alpha channel), `output_format` other than png
(they answer PNG; the gateway does not transcode). Drops: `quality`, `moderation`,
`output_compression`, `user`, and the text a model may write beside its image.
Never streamed (the endpoint refuses `stream`).
"""

from __future__ import annotations

import math
import time
from typing import Any

from openbili.core.errors import InvalidRequest, UpstreamError
from usage.gateway.providers.base import Event
from usage.gateway.providers.gemini import usage_from_gemini

# The aspect ratios Gemini's image models take (image-generation docs, imageConfig.aspectRatio).
RATIOS = frozenset({"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"})


def _image_config(size: Any) -> dict:
    if size in (None, "auto"):
        return {}
    width, _, height = str(size).partition("x")
    if not (width.isdigit() and height.isdigit()) or not int(width) or not int(height):
        raise InvalidRequest("'size' must be 'auto' or WIDTHxHEIGHT, e.g. 1024x1024.", param="size")
    w, h = int(width), int(height)
    divisor = math.gcd(w, h)
    ratio = f"{w // divisor}:{h // divisor}"
    if ratio not in RATIOS:
        offered = ", ".join(sorted(RATIOS))
        raise InvalidRequest(f"size {size}: this model offers the aspect ratios {offered}.", param="size")
    config: dict = {"aspectRatio": ratio}
    longest = max(w, h)
    if longest > 2048:
        config["imageSize"] = "4K"
    elif longest > 1024:
        config["imageSize"] = "2K"
    return config


def request(body: dict, *, max_output_tokens: int) -> dict:
    if (body.get("n") or 1) > 1:
        raise InvalidRequest("This model generates one image per request: send n=1 (or several requests).", param="n")
    if body.get("background") == "transparent":
        raise InvalidRequest("This model cannot paint a transparent background.", param="background")
    if body.get("output_format") not in (None, "png"):
        raise InvalidRequest("This model answers PNG images only.", param="output_format")
    config: dict = {"responseModalities": ["TEXT", "IMAGE"], "maxOutputTokens": max_output_tokens}
    image_config = _image_config(body.get("size"))
    if image_config:
        config["imageConfig"] = image_config
    return {"contents": [{"role": "user", "parts": [{"text": body["prompt"]}]}], "generationConfig": config}


def response(data: dict, *, request: dict | None = None) -> dict:
    images = []
    for candidate in data.get("candidates") or ():
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            inline = part.get("inlineData") if isinstance(part, dict) else None
            if not isinstance(inline, dict) or part.get("thought"):  # a thought's draft image is not the answer
                continue
            if str(inline.get("mimeType", "")).startswith("image/") and isinstance(inline.get("data"), str):
                images.append({"b64_json": inline["data"]})
    if not images:
        # Blocked (promptFeedback, IMAGE_SAFETY…: the prompt's fault, as OpenAI's 400
        # content_policy_violation) or only text: an images client has nothing to show.
        reason, blocked = _reason(data)
        if blocked:
            raise InvalidRequest(f"The model declined this prompt ({reason}).", code="content_policy_violation")
        raise UpstreamError(f"The model returned no image ({reason}).", code="no_image_generated")
    usage = usage_from_gemini(data.get("usageMetadata")) or usage_from_gemini({})
    assert usage is not None
    prompt = usage.input_tokens + usage.cached_input_tokens
    return {
        "created": int(time.time()),
        "data": images,
        "output_format": "png",
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"text_tokens": prompt, "image_tokens": 0},
            "output_tokens": usage.output_tokens,
            "total_tokens": prompt + usage.output_tokens,
        },
    }


def _reason(data: dict) -> tuple[str, bool]:
    """Why there is no image, and whether it was a safety block."""
    feedback = data.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        return f"prompt blocked: {feedback['blockReason']}", True
    for candidate in data.get("candidates") or ():
        reason = candidate.get("finishReason") if isinstance(candidate, dict) else None
        if isinstance(reason, str) and reason != "STOP":
            blocked = "SAFETY" in reason or "PROHIBITED" in reason or reason in ("BLOCKLIST", "SPII", "RECITATION")
            return f"finish reason {reason}", blocked
    return "no image part in the answer", False


class Stream:
    """Image generations are never streamed (the endpoint refuses `stream`)."""

    def __init__(self, *, client_wants_usage: bool, request: dict | None = None) -> None:
        pass

    def feed(self, event: Event) -> list[dict]:  # pragma: no cover - unreachable
        raise InvalidRequest("Streaming is not available for image generation.", param="stream")
