"""Chat completions on a Gemini route, end to end: the official openai SDK → the live gateway →
the chat → Gemini translation → the fake upstream's native generateContent / streamGenerateContent
(issue 10, Deliver 3). Billed from Gemini's usageMetadata, one row per request."""

from __future__ import annotations

import json
from decimal import Decimal

import openai
import pytest

from billing import money
from openbili.fake_upstream.server import PNG_B64
from tests.factories import CatalogModelFactory, make_visible_model
from tests.gateway.support import assert_ledger, assert_sdk_error, row_cost
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


def test_messages_on_a_gemini_route_with_the_anthropic_sdk(gemini):
    gemini.upstream.script(tokens={"prompt": 11, "completion": 6})
    raw = gemini.anthropic(timeout=20).messages.with_raw_response.create(
        model=GEMINI, max_tokens=64, system="Be brief.", messages=HELLO
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text and message.model == GEMINI
    assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == ("end_turn", 11, 6)
    call = gemini.upstream.last_request
    assert call["path"] == "/v1beta/models/gemini-up:generateContent"
    assert call["json"]["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    row = gemini.row(raw.headers["x-request-id"])
    assert (row.endpoint, row.billing_result, row.input_tokens, row.output_tokens) == ("/v1/messages", "billed", 11, 6)
    assert row.cost_usd == row_cost(row) > 0
    assert_ledger(gemini.account.pk, spent=row.cost_usd)


def test_a_messages_stream_on_a_gemini_route_accumulates_in_the_sdk(gemini):
    gemini.upstream.script(tokens={"prompt": 4, "completion": 3})
    with gemini.anthropic(timeout=20).messages.stream(model=GEMINI, max_tokens=64, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert (final.usage.input_tokens, final.usage.output_tokens) == (4, 3)
    row = UsageRecord.objects.filter(account=gemini.account, endpoint="/v1/messages").get()
    assert (row.billing_result, row.stream, row.output_reached_client) == ("billed", True, True)


def test_a_tool_call_with_an_image_in_on_a_gemini_route(gemini):
    """Chat with an image part and a tool: the image goes up as inlineData, the functionCall comes
    back as a Chat tool call the SDK parses, and the tool result goes back as a functionResponse."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "describe",
                "description": "Describe a picture",
                "parameters": {"type": "object", "properties": {"animal": {"type": "string"}}},
            },
        }
    ]
    image = "data:image/png;base64," + PNG_B64
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": image}}],
        }
    ]
    gemini.upstream.script(tool_call={"name": "describe", "arguments": {"animal": "fox"}})
    first = gemini.openai().chat.completions.create(model=GEMINI, messages=messages, tools=tools)
    call = first.choices[0].message.tool_calls[0]
    assert (first.choices[0].finish_reason, call.function.name) == ("tool_calls", "describe")
    assert json.loads(call.function.arguments) == {"animal": "fox"}
    parts = gemini.upstream.last_request["json"]["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}
    follow = [
        *messages,
        {"role": "assistant", "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "A red fox"},
    ]
    second = gemini.openai().chat.completions.create(model=GEMINI, messages=follow, tools=tools)
    assert second.choices[0].message.content
    contents = gemini.upstream.last_request["json"]["contents"]
    assert contents[-1]["parts"][0]["functionResponse"]["name"] == "describe"


def test_the_gemini_model_lists_its_endpoints(gemini):
    model = gemini.openai().models.retrieve(GEMINI)
    assert model.model_extra["endpoints"] == [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
    ]
