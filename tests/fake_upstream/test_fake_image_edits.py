"""POST /v1/images/edits on the fake upstream: multipart in, the generations answer out, OpenAI's
400s for a missing image or prompt and for files that are no image, scenarios as everywhere."""

from __future__ import annotations

import base64
import json
import urllib.request

import aiohttp
import openai
import pytest

from openbili.fake_upstream import PNG_BYTES

PNG = ("square.png", PNG_BYTES, "image/png")
WEBP = ("photo.webp", b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp")
TEXT = ("notes.txt", b"not an image", "text/plain")
BEARER = {"Authorization": "Bearer sk-test"}
EDIT_IMAGE_TOKENS = 194
HIGH_FIDELITY_EXTRA = 4160


def oai(fake, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-test", max_retries=0, **kw)


async def post_form(fake, fields: dict, files: list[tuple[str, tuple[str, bytes, str]]], headers=BEARER):
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        form.add_field(name, value)
    for name, (filename, data, content_type) in files:
        form.add_field(name, data, filename=filename, content_type=content_type)
    async with aiohttp.ClientSession() as s, s.post(fake.url + "/v1/images/edits", data=form, headers=headers) as r:
        return r.status, json.loads(await r.read())


# --------------------------------------------------------------------------------------------------
# Success through the SDK
# --------------------------------------------------------------------------------------------------


def test_edit_one_image_answers_like_generations_with_image_input_tokens(fake_upstream):
    r = oai(fake_upstream).images.edit(model="gpt-image-1", image=PNG, prompt="make it blue", quality="low")

    assert len(r.data) == 1
    assert base64.b64decode(r.data[0].b64_json) == PNG_BYTES
    assert r.data[0].url is None
    assert (r.background, r.output_format, r.quality, r.size) == ("opaque", "png", "low", "1024x1024")
    assert r.usage.input_tokens == 3 + EDIT_IMAGE_TOKENS
    assert r.usage.input_tokens_details.text_tokens == 3
    assert r.usage.input_tokens_details.image_tokens == EDIT_IMAGE_TOKENS
    assert r.usage.output_tokens == 272
    assert r.usage.total_tokens == 3 + EDIT_IMAGE_TOKENS + 272


def test_edit_records_form_fields_and_file_metadata_not_bytes(fake_upstream):
    oai(fake_upstream).images.edit(model="gpt-image-1", image=PNG, prompt="make it blue", n=1, user="u-1")

    rec = fake_upstream.last_request
    assert rec["path"] == "/v1/images/edits"
    assert rec["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert rec["json"] is None
    assert rec["form"] == {"model": "gpt-image-1", "prompt": "make it blue", "n": "1", "user": "u-1"}
    assert rec["files"] == [
        {"field": "image", "filename": "square.png", "content_type": "image/png", "size": len(PNG_BYTES)}
    ]


def test_edit_several_images_with_mask_and_high_fidelity(fake_upstream):
    r = oai(fake_upstream).images.edit(
        model="gpt-image-1",
        image=[PNG, WEBP],
        mask=("mask.png", PNG_BYTES, "image/png"),
        prompt="put both in one room",
        n=2,
        size="1536x1024",
        quality="medium",
        background="transparent",
        output_format="webp",
        input_fidelity="high",
    )

    assert len(r.data) == 2
    assert (r.background, r.output_format, r.quality, r.size) == ("transparent", "webp", "medium", "1536x1024")
    image_tokens = 2 * (EDIT_IMAGE_TOKENS + HIGH_FIDELITY_EXTRA)  # the mask is not counted
    assert r.usage.input_tokens_details.image_tokens == image_tokens
    assert r.usage.input_tokens_details.text_tokens == 5
    assert r.usage.input_tokens == 5 + image_tokens
    assert r.usage.output_tokens == 2 * 1584
    files = fake_upstream.last_request["files"]
    assert [(f["field"], f["filename"], f["content_type"]) for f in files] == [
        ("image[]", "square.png", "image/png"),
        ("image[]", "photo.webp", "image/webp"),
        ("mask", "mask.png", "image/png"),
    ]


def test_only_dall_e_2_gives_a_url(fake_upstream):
    client = oai(fake_upstream)
    r = client.images.edit(model="dall-e-2", image=PNG, prompt="x", response_format="url")
    url = r.data[0].url
    assert url.startswith(fake_upstream.url + "/files/") and url.endswith(".png")
    with urllib.request.urlopen(url) as resp:
        assert resp.read() == PNG_BYTES
    assert r.background is None  # the GPT image fields belong to GPT image models

    r = client.images.edit(model="gpt-image-1", image=PNG, prompt="x", response_format="url")
    assert r.data[0].url is None
    assert base64.b64decode(r.data[0].b64_json) == PNG_BYTES


async def test_json_body_with_image_urls(fake_upstream):
    body = {"model": "gpt-image-1.5", "prompt": "a b", "images": [{"image_url": "data:image/png;base64,AAAA"}]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(fake_upstream.url + "/v1/images/edits", json=body, headers=BEARER) as r,
    ):
        assert r.status == 200
        usage = (await r.json())["usage"]
    assert usage["input_tokens_details"] == {"text_tokens": 2, "image_tokens": EDIT_IMAGE_TOKENS}


# --------------------------------------------------------------------------------------------------
# OpenAI's 400s
# --------------------------------------------------------------------------------------------------


async def test_missing_image_is_400_naming_the_param(fake_upstream):
    status, body = await post_form(fake_upstream, {"model": "gpt-image-1", "prompt": "x"}, [])
    assert status == 400
    assert body == {
        "error": {
            "message": "Missing required parameter: 'image'.",
            "type": "invalid_request_error",
            "param": "image",
            "code": "missing_required_parameter",
        }
    }


async def test_missing_prompt_is_400_naming_the_param(fake_upstream):
    status, body = await post_form(fake_upstream, {"model": "gpt-image-1"}, [("image", PNG)])
    assert status == 400
    assert body["error"]["param"] == "prompt"
    assert body["error"]["code"] == "missing_required_parameter"
    assert body["error"]["message"] == "Missing required parameter: 'prompt'."


async def test_image_sent_as_text_is_an_invalid_type(fake_upstream):
    status, body = await post_form(fake_upstream, {"model": "gpt-image-1", "prompt": "x", "image": "abc"}, [])
    assert status == 400
    assert body["error"]["code"] == "invalid_type"
    assert body["error"]["param"] == "image"


def test_non_image_file_is_400(fake_upstream):
    with pytest.raises(openai.BadRequestError) as exc:
        oai(fake_upstream).images.edit(model="gpt-image-1", image=TEXT, prompt="x")

    assert exc.value.status_code == 400
    assert exc.value.body == {
        "message": "Invalid file 'image': unsupported mimetype ('text/plain'). "
        "Supported file formats are 'image/jpeg', 'image/png', and 'image/webp'.",
        "type": "invalid_request_error",
        "param": "image",
        "code": None,
    }


async def test_mask_must_be_png_and_dall_e_2_takes_png_only(fake_upstream):
    jpeg = ("m.jpg", b"\xff\xd8\xff", "image/jpeg")
    status, body = await post_form(
        fake_upstream, {"model": "gpt-image-1", "prompt": "x"}, [("image", PNG), ("mask", jpeg)]
    )
    assert status == 400
    assert body["error"]["param"] == "mask"

    status, body = await post_form(fake_upstream, {"model": "dall-e-2", "prompt": "x"}, [("image", jpeg)])
    assert status == 400
    assert body["error"]["message"].endswith("Supported file formats are 'image/png'.")


async def test_invalid_n_is_400(fake_upstream):
    status, body = await post_form(
        fake_upstream, {"model": "gpt-image-1", "prompt": "x", "n": "none"}, [("image", PNG)]
    )
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"


# --------------------------------------------------------------------------------------------------
# Auth and scenarios, as for the other handlers
# --------------------------------------------------------------------------------------------------


async def test_missing_bearer_is_401(fake_upstream):
    status, body = await post_form(fake_upstream, {"prompt": "x"}, [("image", PNG)], headers={})
    assert status == 401
    assert body["error"]["message"].startswith("You didn't provide an API key.")


def test_scenario_api_key_and_status_injection(fake_upstream):
    fake_upstream.script(path="/images/edits", api_key="sk-right")
    with pytest.raises(openai.AuthenticationError):
        oai(fake_upstream).images.edit(model="gpt-image-1", image=PNG, prompt="x")

    fake_upstream.script(model="gpt-image-1", status=429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as exc:
        oai(fake_upstream).images.edit(model="gpt-image-1", image=PNG, prompt="x")
    assert exc.value.response.headers["retry-after"] == "3"
    assert exc.value.body["code"] == "rate_limit_exceeded"


def test_scenario_no_usage_and_token_override(fake_upstream):
    fake_upstream.script(path="/images/edits", no_usage=True)
    r = oai(fake_upstream).images.edit(model="gpt-image-1", image=PNG, prompt="x")
    assert r.usage is None
    assert len(r.data) == 1

    fake_upstream.script(path="/images/edits", tokens={"prompt": 1000, "completion": 7})
    r = oai(fake_upstream).images.edit(model="gpt-image-1", image=PNG, prompt="x")
    assert r.usage.input_tokens == 1000
    assert r.usage.input_tokens_details.image_tokens == EDIT_IMAGE_TOKENS
    assert r.usage.input_tokens_details.text_tokens == 1000 - EDIT_IMAGE_TOKENS
    assert r.usage.output_tokens == 7


def test_scenario_cut_and_slow_first_byte(fake_upstream):
    fake_upstream.script(path="/images/edits", cut_after_chunks=0)
    with pytest.raises(openai.APIConnectionError):
        oai(fake_upstream).images.edit(model="gpt-image-1", image=PNG, prompt="x")

    fake_upstream.script(path="/images/edits", delay_first_byte_ms=2000)
    with pytest.raises(openai.APITimeoutError):
        oai(fake_upstream, timeout=0.3).images.edit(model="gpt-image-1", image=PNG, prompt="x")


def test_scenario_error_body_carrying_usage(fake_upstream):
    fake_upstream.script(path="/images/edits", status=500, usage={"input_tokens": 9, "output_tokens": 0})
    with pytest.raises(openai.InternalServerError) as exc:
        oai(fake_upstream).images.edit(model="gpt-image-1", image=PNG, prompt="x")
    assert json.loads(exc.value.response.content)["usage"] == {"input_tokens": 9, "output_tokens": 0}


async def test_malformed_multipart_is_400_not_a_crash(fake_upstream):
    headers = {**BEARER, "Content-Type": "multipart/form-data; boundary=xyz"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(fake_upstream.url + "/v1/images/edits", data=b"garbage", headers=headers) as r,
    ):
        assert r.status == 400
        assert (await r.json())["error"]["message"] == "We could not parse the form body of your request."
