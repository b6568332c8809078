"""The OpenAI Images wire format: `POST /images/generations` (JSON) and `POST /images/edits`
(multipart/form-data: image files and a prompt).

Billing: an image is priced per image (the catalog's per_image), so the image's own output tokens
are not billed as tokens (gpt-image reports them as `output_tokens`); the prompt, and on edits the
input images, are input tokens at the input price, as the catalog says. The answer's `data`
items count the images.
"""

from __future__ import annotations

import dataclasses
import json
import uuid

from billing.money import TokenUsage
from usage.gateway.providers.base import Reply, UpstreamCall
from usage.gateway.providers.openai.chat import OpenAIProvider, api_url, json_headers, json_reply, usage_from_openai


@dataclasses.dataclass(frozen=True, slots=True)
class FilePart:
    """One uploaded file of a multipart request, as the edits endpoint read it."""

    filename: str
    content_type: str
    data: bytes


def count_images(data: dict) -> int:
    items = data.get("data")
    return sum(1 for item in items if isinstance(item, dict)) if isinstance(items, list) else 0


def images_usage(data: dict) -> TokenUsage | None:
    """The reported usage with the images counted (None: none reported; the lifecycle estimates
    the prompt and keeps Reply.images)."""
    usage = usage_from_openai(data.get("usage"))
    if usage is None:
        return None
    return dataclasses.replace(usage, output_tokens=0, reasoning_tokens=0, images=count_images(data))


class OpenAIImagesProvider(OpenAIProvider):
    wire = "images"
    path = "/images/generations"

    def call(self, body, *, route, stream, client_headers):
        body["model"] = route.upstream_model
        return UpstreamCall("POST", api_url(route, self.path), json_headers(route.secret), json.dumps(body).encode())

    def reply(self, raw):
        data = json_reply(raw)
        if data is None:
            return Reply(data=None, usage=None)
        # No output_bytes: a missing usage's output is not estimated from base64 (an image is
        # billed per image, counted here either way).
        return Reply(data=data, usage=images_usage(data), images=count_images(data))


class OpenAIImageEditsProvider(OpenAIImagesProvider):
    wire = "image_edits"
    path = "/images/edits"

    def call(self, body, *, route, stream, client_headers):
        body["model"] = route.upstream_model
        boundary = uuid.uuid4().hex
        headers = json_headers(route.secret)
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        return UpstreamCall("POST", api_url(route, self.path), headers, encode_multipart(body, boundary))


def encode_multipart(fields: dict, boundary: str) -> bytes:
    """multipart/form-data of string fields and FilePart values (a list: one part each, `name[]`
    when there are several, as the OpenAI SDK sends several images)."""
    out: list[bytes] = []
    for name, value in fields.items():
        values = value if isinstance(value, list) else [value]
        field = _header_safe(f"{name}[]" if isinstance(value, list) and len(value) > 1 else name)
        for item in values:
            out.append(f"--{boundary}\r\n".encode())
            if isinstance(item, FilePart):
                filename = _header_safe(item.filename)
                out.append(
                    f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                    f"Content-Type: {item.content_type}\r\n\r\n".encode()
                )
                out.append(item.data)
            else:
                text = item if isinstance(item, str) else json.dumps(item)
                out.append(f'Content-Disposition: form-data; name="{field}"\r\n\r\n'.encode())
                out.append(text.encode())
            out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def _header_safe(value: str) -> str:
    """A value for a quoted Content-Disposition parameter: no quote, no line break."""
    return value.replace('"', "%22").replace("\r", "").replace("\n", "")
