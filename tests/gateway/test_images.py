"""POST /v1/images/generations and /v1/images/edits end to end (issue 10, Deliver 2): the official
openai SDK → the live gateway → the fake upstream (gpt-image's b64_json, Gemini's inline image).
The answer always gives a URL that downloads the stored image; billed per image × n plus the
prompt, one usage row per request, proven against PostgreSQL."""

from __future__ import annotations

import base64
from decimal import Decimal

import httpx
import openai
import pytest

from billing import money, services
from billing.models import Hold
from openbili.fake_upstream.server import PNG_B64
from tests.factories import AccountFactory, CatalogModelFactory, make_visible_model
from tests.gateway.support import assert_ledger, assert_sdk_error, rejected, row_cost

PNG = base64.b64decode(PNG_B64)
GPT_IMAGE = "gpt-image-2"
GEMINI_IMAGE = "gemini-3.1-flash-image-preview"
GPT_IMAGE_PRICES = {"input_per_mtok": Decimal("5.00"), "per_image": Decimal("0.04")}
GEMINI_IMAGE_PRICES = {
    "input_per_mtok": Decimal("0.30"),
    "output_per_mtok": Decimal("2.50"),
    "per_image": Decimal("0.039"),
}


@pytest.fixture
def images(gateway):
    gpt = CatalogModelFactory(
        name=GPT_IMAGE, kind="image", owned_by="openai", context_window=32_768, max_output_tokens=8192
    )
    make_visible_model(gpt, prices=GPT_IMAGE_PRICES, base_url=gateway.upstream.url + "/v1")
    gemini = CatalogModelFactory(
        name=GEMINI_IMAGE, kind="image", owned_by="google", context_window=65_536, max_output_tokens=32_768
    )
    make_visible_model(
        gemini,
        prices=GEMINI_IMAGE_PRICES,
        base_url=gateway.upstream.url,
        provider="gemini",
        upstream_model="gemini-image-up",
    )
    gateway.refresh()
    return gateway


def download(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)


def test_gpt_image_answers_with_urls_that_download_the_png_and_bills_per_image(images):
    images.upstream.script(tokens={"prompt": 12})
    raw = images.openai().images.with_raw_response.generate(model=GPT_IMAGE, prompt="A red fox", n=2, size="1024x1024")
    result = raw.parse()
    assert len(result.data) == 2
    urls = [item.url for item in result.data]
    assert all(url.startswith(images.url + "/v1/images/files/") for url in urls) and len(set(urls)) == 2
    assert all(item.b64_json is None for item in result.data)  # asked for nothing but the URL
    for url in urls:
        got = download(url)
        assert got.status_code == 200 and got.content == PNG and got.headers["content-type"] == "image/png"
    call = images.upstream.last_request
    assert (call["path"], call["json"]["model"], call["json"]["n"]) == ("/v1/images/generations", GPT_IMAGE, 2)
    row = images.row(raw.headers["x-request-id"])
    assert (row.billing_result, row.status, row.endpoint, row.image_count) == (
        "billed",
        200,
        "/v1/images/generations",
        2,
    )
    assert (row.input_tokens, row.output_tokens) == (12, 0)  # image tokens are billed per image
    expected = money.usage_cost(money.Prices(**GPT_IMAGE_PRICES), money.TokenUsage(input_tokens=12, images=2))
    assert row.cost_usd == row_cost(row) == expected == Decimal("0.08006")
    assert_ledger(images.account.pk, spent=expected)
    hold = Hold.objects.get(pk=row.hold_id)
    assert hold.amount >= 2 * GPT_IMAGE_PRICES["per_image"]  # the hold covered both images


def test_b64_json_is_returned_beside_the_url_when_asked_for(images):
    result = images.openai().images.generate(model=GPT_IMAGE, prompt="A fox", response_format="b64_json")
    item = result.data[0]
    assert item.b64_json == PNG_B64 and download(item.url).content == PNG


def test_a_gemini_image_model_answers_through_the_images_endpoint(images):
    images.upstream.script(tokens={"prompt": 8})
    raw = images.openai().images.with_raw_response.generate(model=GEMINI_IMAGE, prompt="A blue whale", size="1536x1024")
    result = raw.parse()
    assert download(result.data[0].url).content == PNG
    call = images.upstream.last_request
    assert call["path"] == "/v1beta/models/gemini-image-up:generateContent"
    config = call["json"]["generationConfig"]
    assert config["responseModalities"] == ["TEXT", "IMAGE"] and config["imageConfig"]["aspectRatio"] == "3:2"
    row = images.row(raw.headers["x-request-id"])
    assert (row.billing_result, row.provider, row.image_count, row.input_tokens) == ("billed", "gemini", 1, 8)
    assert row.output_tokens == 0  # the image's own tokens are in per_image
    assert (
        row.cost_usd
        == row_cost(row)
        == money.usage_cost(money.Prices(**GEMINI_IMAGE_PRICES), money.TokenUsage(input_tokens=8, images=1))
    )


def test_an_edit_sends_the_image_as_multipart_and_is_billed(images):
    images.upstream.script(tokens={"prompt": 30})
    raw = images.openai().images.with_raw_response.edit(
        model=GPT_IMAGE, image=("fox.png", PNG, "image/png"), prompt="Make it blue", n=1
    )
    result = raw.parse()
    assert download(result.data[0].url).content == PNG
    call = images.upstream.last_request
    assert call["path"] == "/v1/images/edits"
    assert "multipart/form-data" in call["headers"]["content-type"]
    row = images.row(raw.headers["x-request-id"])
    assert (row.endpoint, row.billing_result, row.image_count, row.input_tokens) == (
        "/v1/images/edits",
        "billed",
        1,
        30,
    )


def test_an_edit_without_an_image_or_of_a_non_image_is_a_400(images):
    fields = {"model": (None, GPT_IMAGE), "prompt": (None, "x")}
    response = images.post("/v1/images/edits", files=fields)  # multipart, but no image part
    assert response.status_code == 400 and response.json()["error"]["param"] == "image"
    response = images.post("/v1/images/edits", data={"model": GPT_IMAGE, "prompt": "x"})  # not multipart at all
    assert response.status_code == 400 and "multipart/form-data" in response.json()["error"]["message"]
    response = images.post(
        "/v1/images/edits", data={"model": GPT_IMAGE, "prompt": "x"}, files={"image": ("a.txt", b"hello", "text/plain")}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "image"
    assert not images.upstream.requests


@pytest.mark.parametrize(
    ("model", "body", "param", "code"),
    [
        (GPT_IMAGE, {"n": 11}, "n", "invalid_request"),
        (GPT_IMAGE, {"prompt": ""}, "prompt", "invalid_request"),
        (GPT_IMAGE, {"response_format": "gif"}, "response_format", "invalid_request"),
        (GPT_IMAGE, {"stream": True}, "stream", "invalid_request"),
        ("gpt-5", {}, "model", "model_not_supported_for_endpoint"),
    ],
)
def test_bad_image_requests_are_400s_with_their_row(images, model, body, param, code):
    response = images.post("/v1/images/generations", json={"model": model, "prompt": "A fox"} | body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    rejected(images, response.headers["x-request-id"], 400, "invalid_request", code)
    assert not images.upstream.requests


def test_what_gemini_cannot_do_is_a_400_naming_the_field(images):
    with pytest.raises(openai.BadRequestError) as caught:
        images.openai().images.generate(model=GEMINI_IMAGE, prompt="A fox", n=2)
    request_id = assert_sdk_error(caught.value, status=400, code="invalid_request", param="n")
    assert images.row(request_id).billing_result == "not_billed"


def test_an_image_model_is_not_served_on_chat_unless_its_route_answers_chat(images):
    with pytest.raises(openai.BadRequestError) as caught:
        images.openai().chat.completions.create(model=GPT_IMAGE, messages=[{"role": "user", "content": "Hi"}])
    assert_sdk_error(caught.value, status=400, code="model_not_supported_for_endpoint", param="model")
    listed = {m.id: m.model_extra["endpoints"] for m in images.openai().models.list().data}
    assert listed[GPT_IMAGE] == ["/v1/images/generations", "/v1/images/edits"]
    assert listed[GEMINI_IMAGE] == ["/v1/chat/completions", "/v1/images/generations"]


def test_an_upstream_failure_is_not_billed_and_stores_nothing(images):
    images.upstream.script(status=400, message="Your prompt was rejected", error_code="content_policy_violation")
    with pytest.raises(openai.BadRequestError) as caught:
        images.openai().images.generate(model=GPT_IMAGE, prompt="A fox")
    row = images.row(assert_sdk_error(caught.value, status=400, code="invalid_request"))
    assert (row.billing_result, row.cost_usd, row.image_count) == ("not_billed", 0, 0)
    assert_ledger(images.account.pk, spent=Decimal(0))


def test_an_account_that_cannot_pay_for_n_images_gets_a_402(images):
    poor = AccountFactory(credit=Decimal("0.05"))
    _, secret = services.key_create(account=poor, name="poor")
    with pytest.raises(openai.APIStatusError) as caught:
        images.openai(key=secret).images.generate(model=GPT_IMAGE, prompt="A fox", n=2)  # 2 × $0.04 > $0.05
    assert caught.value.status_code == 402
    assert not images.upstream.requests
    # one image it can pay for
    images.openai(key=secret).images.generate(model=GPT_IMAGE, prompt="A fox", n=1)
