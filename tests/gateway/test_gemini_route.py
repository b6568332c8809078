"""Chat completions on a Gemini route, end to end: the official openai SDK → the live gateway →
the chat → Gemini translation → the fake upstream's native generateContent / streamGenerateContent
(issue 10, Deliver 3). Billed from Gemini's usageMetadata, one row per request."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from billing import money
from tests.factories import CatalogModelFactory, make_visible_model
from tests.gateway.support import assert_ledger, assert_sdk_error, rejected, row_cost
from usage.models import UsageRecord

GEMINI = "gemini-2.5-flash"
PRICES = {
    "input_per_mtok": Decimal("0.30"),
    "output_per_mtok": Decimal("2.50"),
    "cached_input_per_mtok": Decimal("0.03"),
}
HELLO = [{"role": "user", "content": "Hello from Openbili"}]


@pytest.fixture
def gemini(gateway):
    model = CatalogModelFactory(name=GEMINI, owned_by="google", context_window=1_048_576, max_output_tokens=65_536)
    make_visible_model(
        model, prices=PRICES, base_url=gateway.upstream.url, provider="gemini", upstream_model="gemini-up"
    )
    gateway.refresh()
    return gateway


def test_chat_on_a_gemini_route_is_translated_and_billed(gemini):
    gemini.upstream.script(tokens={"prompt": 12, "completion": 7})
    raw = gemini.openai().chat.completions.with_raw_response.create(model=GEMINI, messages=HELLO, max_tokens=50)
    completion = raw.parse()
    assert completion.choices[0].message.content and completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 7)
    call = gemini.upstream.last_request
    assert call["path"] == "/v1beta/models/gemini-up:generateContent"
    assert call["headers"]["x-goog-api-key"] == "upstream-test-secret"
    assert call["json"]["contents"] == [{"role": "user", "parts": [{"text": "Hello from Openbili"}]}]
    assert call["json"]["generationConfig"]["maxOutputTokens"] == 50
    row = gemini.row(raw.headers["x-request-id"])
    assert (row.billing_result, row.status, row.provider) == ("billed", 200, "gemini")
    assert (row.input_tokens, row.output_tokens) == (12, 7)
    assert (
        row.cost_usd
        == row_cost(row)
        == money.usage_cost(money.Prices(**PRICES), money.TokenUsage(input_tokens=12, output_tokens=7))
    )
    assert_ledger(gemini.account.pk, spent=row.cost_usd)


def test_a_stream_on_a_gemini_route_ends_with_done_and_is_billed(gemini):
    gemini.upstream.script(tokens={"prompt": 9, "completion": 5})
    stream = gemini.openai().chat.completions.with_raw_response.create(
        model=GEMINI, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 5)
    assert gemini.upstream.last_request["path"] == "/v1beta/models/gemini-up:streamGenerateContent"
    row = gemini.row(stream.headers["x-request-id"])
    assert (row.billing_result, row.input_tokens, row.output_tokens) == ("billed", 9, 5)
    assert row.output_reached_client and row.cost_usd == row_cost(row) > 0
    assert_ledger(gemini.account.pk, spent=row.cost_usd)


def test_gemini_rate_limits_reach_the_client_as_429_with_retry_after(gemini):
    gemini.upstream.script(status=429, retry_after=7)
    with pytest.raises(openai.RateLimitError) as caught:
        gemini.openai().chat.completions.create(model=GEMINI, messages=HELLO)
    request_id = assert_sdk_error(caught.value, status=429, code="upstream_rate_limited")
    assert caught.value.response.headers["retry-after"] == "7"
    rejected_row = UsageRecord.objects.get(request_id=request_id)
    assert (rejected_row.status, rejected_row.billing_result) == (429, "not_billed")
    assert_ledger(gemini.account.pk, spent=0)


def test_messages_on_a_gemini_only_model_is_not_served_yet(gemini):
    response = gemini.post("/v1/messages", json={"model": GEMINI, "max_tokens": 10, "messages": HELLO})
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["code"] == "model_not_supported_for_endpoint"
    rejected(gemini, body["request_id"], 400, "invalid_request", "model_not_supported_for_endpoint")


def test_the_gemini_model_lists_its_endpoints(gemini):
    model = gemini.openai().models.retrieve(GEMINI)
    assert model.model_extra["endpoints"] == ["/v1/chat/completions"]
