"""POST /v1/images/generations and POST /v1/images/edits: the OpenAI Images client format.

The answer always gives `data[].url`. Image upstreams answer with the image itself (gpt-image's
`b64_json`, Gemini's inline bytes, which translate/images_to_gemini.py turns into `b64_json`), so
`deliver` stores each image (usage/images.py: Django storage, behind an unguessable capability URL
that expires) and puts its URL in the answer; `b64_json` stays only when the client asked for it
(`response_format: "b64_json"`). An upstream that answers with URLs of its own is passed on.

The hold covers `n` images at the per-image price, plus the prompt (and input images, on edits)
at the input price and, for models that also write text (Gemini), the output limit.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from email import policy
from email.parser import BytesParser
from typing import Any

from openbili.core.errors import InvalidRequest, OpenbiliError, UpstreamError
from usage import images as image_store
from usage.gateway.endpoints.base import IMAGE_TOKENS, TEMPLATE_TOKENS, Endpoint, Parsed, model_name
from usage.gateway.errors import openai_error_body
from usage.gateway.providers.openai.images import FilePart
from usage.gateway.state import ModelInfo

MAX_IMAGES = 10  # OpenAI's own bound on `n`
MAX_PROMPT_CHARS = 32000  # gpt-image's (dall-e-3 takes 4,000, dall-e-2 1,000: their upstream says so)
MAX_INPUT_IMAGES = 16
EDIT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})  # what gpt-image edits take
FIELD = re.compile(r"[a-z_]{1,40}(\[\])?")  # form field names: OpenAI's are lower-case words
CHOICES = {
    "response_format": ("url", "b64_json"),
    "output_format": ("png", "jpeg", "webp"),
    "background": ("transparent", "opaque", "auto"),
    "quality": ("auto", "low", "medium", "high", "standard", "hd"),
    "moderation": ("auto", "low"),
    "input_fidelity": ("low", "high"),
}


def _check_fields(body: dict) -> int:
    """Validate the fields both image endpoints share; returns n."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("'prompt' is required and must be a non-empty string.", param="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"'prompt' is longer than {MAX_PROMPT_CHARS} characters.", param="prompt")
    n = body.get("n", 1)
    n = 1 if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise InvalidRequest(f"'n' must be an integer between 1 and {MAX_IMAGES}.", param="n")
    for name, allowed in CHOICES.items():
        value = body.get(name)
        if value is not None and value not in allowed:
            raise InvalidRequest(f"'{name}' must be one of: {', '.join(allowed)}.", param=name)
    size = body.get("size")
    if size is not None and (not isinstance(size, str) or len(size) > 20):
        raise InvalidRequest("'size' must be a string such as '1024x1024' or 'auto'.", param="size")
    compression = body.get("output_compression")
    if compression is not None and (isinstance(compression, bool) or not isinstance(compression, int)):
        raise InvalidRequest("'output_compression' must be an integer from 0 to 100.", param="output_compression")
    if body.get("stream") not in (None, False) or body.get("partial_images") is not None:
        raise InvalidRequest("Streaming partial images is not available yet; omit 'stream'.", param="stream")
    return n


class ImagesEndpoint(Endpoint):
    fmt = "images"
    path = "/v1/images/generations"

    def validate(self, body: dict) -> Parsed:
        model = model_name(body)
        n = _check_fields(body)
        return Parsed(model=model, stream=False, max_tokens=None, wants_usage=False, images_out=n)

    def clamp(self, body: dict, parsed: Parsed, model: ModelInfo) -> int | None:
        return None  # no output limit in this format: the model's own bounds the text output

    def input_bound(self, raw: bytes, parsed: Parsed, model: ModelInfo) -> int:
        # The prompt's bytes, not the request's: an edit's image files are counted per image.
        prompt = self.bound_bytes(raw)
        return min(prompt + TEMPLATE_TOKENS + IMAGE_TOKENS * parsed.images, model.context_window)

    def bound_bytes(self, raw: bytes) -> int:
        return len(raw)

    def prompt_bytes(self, raw: bytes, body: dict) -> int:
        return len(str(body.get("prompt", "")).encode())  # an edit's files are counted per image

    async def deliver(self, call: Any, data: dict | None, out: bytes | None) -> bytes:
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            return await super().deliver(call, data, out)
        wants_b64 = call.body.get("response_format") == "b64_json"
        stored: list[tuple[dict, bytes, str]] = []
        for item in data["data"]:
            encoded = item.get("b64_json") if isinstance(item, dict) else None
            if not isinstance(encoded, str):
                continue  # an upstream URL (or nothing): passed on as it came
            try:
                image = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise UpstreamError("The upstream returned an image that is not valid base64.") from None
            content_type = image_store.sniff(image)
            if content_type is None:
                raise UpstreamError("The upstream returned an image of an unknown type.")
            stored.append((item, image, content_type))
        if stored:
            ctx = call.ctx
            urls = await image_store.save_images(
                call.state,
                account_id=ctx.key.account_id,
                request_id=ctx.request_id,
                images=[(image, content_type) for _, image, content_type in stored],
                base_url=image_store.public_base_url(ctx.scope),
            )
            for (item, _, _), url in zip(stored, urls, strict=True):
                item["url"] = url
                if not wants_b64:
                    del item["b64_json"]
        return json.dumps(data).encode()

    def error_body(self, error: OpenbiliError, *, request_id: str, trace_id: str) -> bytes:
        return json.dumps(openai_error_body(error, request_id=request_id, trace_id=trace_id)).encode()


class ImageEditsEndpoint(ImagesEndpoint):
    """Multipart: `image` (or `image[]`, up to 16 files), optional `mask`, and the same fields as a
    generation as form fields. The upload is read whole (at most max_body_bytes) and sent on."""

    fmt = "image_edits"
    path = "/v1/images/edits"
    max_body_bytes = 64 * 1024 * 1024  # OpenAI takes 50 MB per image; 64 MiB for the whole request here

    def parse(self, raw: bytes, content_type: str) -> dict:
        return parse_multipart(raw, content_type)

    def validate(self, body: dict) -> Parsed:
        parsed = super().validate(body)
        images = body.get("image")
        if not images:
            raise InvalidRequest("'image' is required: one or more image files.", param="image")
        if len(images) > MAX_INPUT_IMAGES:
            raise InvalidRequest(f"At most {MAX_INPUT_IMAGES} images may be edited at once.", param="image")
        for index, part in enumerate(images):
            sniffed = image_store.sniff(part.data)
            if sniffed not in EDIT_TYPES:
                raise InvalidRequest(f"image[{index}] must be a PNG, JPEG or WEBP file.", param="image")
            # The upstream is told what the bytes are, not what the client's part header said.
            images[index] = dataclasses.replace(part, content_type=sniffed)
        mask = body.get("mask")
        if mask is not None and (not isinstance(mask, FilePart) or image_store.sniff(mask.data) != "image/png"):
            raise InvalidRequest("'mask' must be a PNG file.", param="mask")
        if mask is not None:
            body["mask"] = dataclasses.replace(mask, content_type="image/png")
        parsed.images = len(images) + (mask is not None)
        return parsed

    def bound_bytes(self, raw: bytes) -> int:
        return 4 * MAX_PROMPT_CHARS  # the prompt is capped; the files are counted per image


def parse_multipart(raw: bytes, content_type: str) -> dict:
    """A multipart/form-data body → {field: str} with files as FilePart (`image` always a list).
    Numbers and booleans arrive as text: `n` is read back as an integer."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise InvalidRequest("This endpoint takes multipart/form-data (image files and a prompt).")
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
    )
    if not message.is_multipart():
        raise InvalidRequest("The multipart body could not be read.")
    body: dict = {}
    images: list[FilePart] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        if FIELD.fullmatch(name) is None:
            # OpenAI refuses what it does not know; and a name is written into the upstream's own
            # part headers, where a quote or a line break must never arrive.
            raise InvalidRequest(f"Unknown multipart field {name[:40]!r}.", param=name[:40])
        payload = part.get_payload(decode=True)
        payload = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None or name in ("image", "image[]", "mask"):
            file = FilePart(filename or name, part.get_content_type(), payload)
            if name in ("image", "image[]"):
                images.append(file)
            else:
                body[name] = file
            continue
        text = payload.decode("utf-8", "replace")
        body[name] = text
    if images:
        body["image"] = images
    for name in ("n", "output_compression", "partial_images"):
        if isinstance(body.get(name), str):
            try:
                body[name] = int(body[name])
            except ValueError:
                raise InvalidRequest(f"'{name}' must be an integer.", param=name) from None
    if body.get("stream") in ("false", "False"):
        body.pop("stream")
    return body


GENERATIONS = ImagesEndpoint()
EDITS = ImageEditsEndpoint()
