"""POST /v1/chat/completions, non-stream: billing, usage normalisation, pass-through and clamping (§2.2, §3)."""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from billing import services
from billing.models import CatalogModel, Hold, PriceSnapshot, Route
from tests.gateway.support import MSG, assert_ids, assert_outcome, cost_of


def test_sdk_chat_is_billed_at_the_exact_cost(gateway):
    # given the upstream reports 1000 prompt tokens (400 of them cached), 50 completion (20 reasoning)
    gateway.upstream.script(tokens={"prompt": 1000, "cached": 400, "completion": 50, "reasoning": 20})
    # when the customer calls through the openai SDK
    raw = gateway.openai().chat.completions.with_raw_response.create(model="gpt-5", messages=MSG)
    completion = raw.parse()
    # then the answer is relayed as is
    assert completion.choices[0].message.content == "Hello from the fake upstream. This is a"
    assert completion.usage.prompt_tokens == 1000
    # and the usage is normalised (cached tokens taken out of the input tokens) and billed exactly
    expected = (
        Decimal(600) * Decimal("1.25") / 10**6 + Decimal(400) * Decimal("0.125") / 10**6 + Decimal(50) * 10 / 10**6
    )
    assert expected == Decimal("0.0013") == cost_of(input_tokens=600, cached_input_tokens=400, output_tokens=50)
    request_id, trace_id = assert_ids(raw.headers)
    row = assert_outcome(gateway, request_id, billing_result="billed", status=200, cost=Decimal("0.0013"))
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens, row.reasoning_tokens) == (600, 400, 50, 20)
    assert (row.cache_write_tokens, row.tokens_estimated) == (0, False)
    assert row.trace_id == trace_id
    assert (row.account_id, row.key_prefix) == (gateway.account.pk, gateway.secret[:12])
    assert row.api_key.prefix == row.key_prefix
    assert row.endpoint == "/v1/chat/completions"
    assert (row.model_requested, row.upstream_model, row.provider, row.stream) == ("gpt-5", "gpt-5", "openai", False)
    assert row.output_reached_client is True
    assert row.started_at <= row.first_byte_at <= row.finished_at
    assert [(a["attempt"], a["status"], a["error"]) for a in row.attempts] == [(1, 200, "")]
    snapshot = PriceSnapshot.objects.get(pk=row.price_snapshot_id)
    assert (snapshot.input_per_mtok, snapshot.output_per_mtok, snapshot.cached_input_per_mtok) == (
        Decimal("1.25"),
        Decimal("10"),
        Decimal("0.125"),
    )


def test_raw_http_chat_is_billed_with_the_upstream_usage(gateway):
    # given no pinned tokens: the fake upstream counts prompt words and reply pieces
    response = gateway.post("/v1/chat/completions", json={"model": "gpt-5", "messages": MSG})
    assert response.status_code == 200
    body = response.json()
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3, 8)
    cost = cost_of(input_tokens=3, output_tokens=8)
    assert cost == Decimal("0.00008375")
    request_id, _ = assert_ids(response.headers)
    assert_outcome(gateway, request_id, billing_result="billed", status=200, cost=cost)


def test_tools_response_format_and_multimodal_content_reach_upstream_untouched(gateway):
    gateway.upstream.script(tool_call={"name": "get_weather", "arguments": {"city": "Paris"}})
    body = {
        "model": "gpt-5",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture, and the weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                ],
            },
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather of a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {}}, "strict": True},
        },
        "temperature": 0.2,
        "user": "customer-42",
        "metadata": {"x": "y"},
    }
    response = gateway.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    call = response.json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    # then the upstream received exactly the customer's request
    assert gateway.upstream.requests[-1]["json"] == body
    request_id, _ = assert_ids(response.headers)
    usage = response.json()["usage"]
    cost = cost_of(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"])
    assert_outcome(gateway, request_id, billing_result="billed", status=200, cost=cost)


def test_sdk_tool_call_round_trip(gateway):
    gateway.upstream.script(tool_call=True)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    raw = gateway.openai().chat.completions.with_raw_response.create(
        model="gpt-5", messages=MSG, tools=tools, tool_choice="required", parallel_tool_calls=False
    )
    completion = raw.parse()
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.choices[0].message.tool_calls[0].function.name == "lookup"
    sent = gateway.upstream.requests[-1]["json"]
    assert (sent["tools"], sent["tool_choice"], sent["parallel_tool_calls"]) == (tools, "required", False)
    request_id, _ = assert_ids(raw.headers)
    cost = cost_of(input_tokens=completion.usage.prompt_tokens, output_tokens=completion.usage.completion_tokens)
    assert_outcome(gateway, request_id, billing_result="billed", status=200, cost=cost)


def test_upstream_gets_the_route_upstream_model(gateway):
    # given the route maps gpt-5 to a dated upstream model name
    Route.objects.filter(model__name="gpt-5").update(upstream_model="gpt-5-2025-08-07")
    gateway.refresh()
    gateway.upstream.script(tokens={"prompt": 10, "completion": 2})
    raw = gateway.openai().chat.completions.with_raw_response.create(model="gpt-5", messages=MSG)
    # then the upstream saw the route's name, the row keeps both
    assert gateway.upstream.requests[-1]["json"]["model"] == "gpt-5-2025-08-07"
    assert raw.parse().model == "gpt-5-2025-08-07"
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=10, output_tokens=2)
    )
    assert (row.model_requested, row.upstream_model) == ("gpt-5", "gpt-5-2025-08-07")
    assert row.route_id == Route.objects.get(model__name="gpt-5").pk


def test_max_tokens_above_the_model_limit_is_clamped(gateway):
    # given gpt-5's output limit is 128,000 tokens
    assert CatalogModel.objects.get(name="gpt-5").max_output_tokens == 128_000
    gateway.upstream.script(tokens={"prompt": 10, "completion": 8})
    raw = gateway.openai().chat.completions.with_raw_response.create(model="gpt-5", messages=MSG, max_tokens=500_000)
    # then it is clamped, not rejected
    assert raw.parse().choices[0].message.content
    assert gateway.upstream.requests[-1]["json"]["max_tokens"] == 128_000
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=10, output_tokens=8)
    )
    assert (row.max_tokens_requested, row.max_tokens_applied) == (500_000, 128_000)


def test_max_completion_tokens_above_the_model_limit_is_clamped(gateway):
    gateway.upstream.script(tokens={"prompt": 10, "completion": 8})
    raw = gateway.openai().chat.completions.with_raw_response.create(
        model="gpt-5", messages=MSG, max_completion_tokens=200_000
    )
    assert raw.parse().choices[0].message.content
    sent = gateway.upstream.requests[-1]["json"]
    assert sent["max_completion_tokens"] == 128_000
    assert "max_tokens" not in sent
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=10, output_tokens=8)
    )
    assert (row.max_tokens_requested, row.max_tokens_applied) == (200_000, 128_000)


def test_max_tokens_within_the_limit_is_kept(gateway):
    response = gateway.post("/v1/chat/completions", json={"model": "gpt-5", "messages": MSG, "max_tokens": 3})
    assert response.status_code == 200
    assert gateway.upstream.requests[-1]["json"]["max_tokens"] == 3
    assert response.json()["choices"][0]["finish_reason"] == "length"
    request_id, _ = assert_ids(response.headers)
    row = assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=3, output_tokens=3)
    )
    assert (row.max_tokens_requested, row.max_tokens_applied) == (3, 3)


def test_price_change_mid_request_keeps_the_starting_snapshot(gateway):
    # given a slow upstream and pinned tokens
    gateway.upstream.script(delay_first_byte_ms=1500, tokens={"prompt": 1000, "completion": 100})
    results = {}

    def call():
        results["response"] = gateway.post("/v1/chat/completions", json={"model": "gpt-5", "messages": MSG})

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 5
    while not gateway.upstream.requests:  # the request has frozen its price and reached upstream
        assert time.monotonic() < deadline, "the request never reached the upstream"
        time.sleep(0.01)
    old = services.price_snapshot_for(CatalogModel.objects.get(name="gpt-5").price_versions.get())
    # when the price doubles while it is in flight
    new_prices = {"input_per_mtok": Decimal("2.5"), "output_per_mtok": Decimal("20"), "cached_input_per_mtok": 0}
    services.price_version_publish(
        model=CatalogModel.objects.get(name="gpt-5"), prices=new_prices, effective_from=timezone.now()
    )
    thread.join(10)
    response = results["response"]
    assert response.status_code == 200
    # then the in-flight request is billed at the old snapshot
    old_cost = Decimal(1000) * Decimal("1.25") / 10**6 + Decimal(100) * 10 / 10**6
    assert old_cost == Decimal("0.00225")
    request_id, _ = assert_ids(response.headers)
    row = assert_outcome(gateway, request_id, billing_result="billed", status=200, cost=old_cost)
    assert row.price_snapshot_id == old.pk
    # and the next request uses the new one
    gateway.refresh()
    gateway.upstream.script(tokens={"prompt": 1000, "completion": 100})
    response = gateway.post("/v1/chat/completions", json={"model": "gpt-5", "messages": MSG})
    assert response.status_code == 200
    new_cost = Decimal("0.0045")
    request_id, _ = assert_ids(response.headers)
    row = assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=new_cost, spent=old_cost + new_cost
    )
    new_snapshot = PriceSnapshot.objects.get(pk=row.price_snapshot_id)
    assert new_snapshot.pk != old.pk
    assert (new_snapshot.input_per_mtok, new_snapshot.output_per_mtok) == (Decimal("2.5"), Decimal("20"))


def test_a_future_price_does_not_apply_before_its_time(gateway):
    services.price_version_publish(
        model=CatalogModel.objects.get(name="gpt-5"),
        prices={"input_per_mtok": 100, "output_per_mtok": 100},
        effective_from=timezone.now() + timedelta(hours=1),
    )
    gateway.refresh()
    gateway.upstream.script(tokens={"prompt": 1000, "completion": 100})
    response = gateway.post("/v1/chat/completions", json={"model": "gpt-5", "messages": MSG})
    request_id, _ = assert_ids(response.headers)
    assert_outcome(gateway, request_id, billing_result="billed", status=200, cost=Decimal("0.00225"))
    assert json.loads(response.content)["usage"]["prompt_tokens"] == 1000


def test_answer_without_upstream_usage_is_billed_at_the_estimate(gateway):
    # given an upstream that answers without a usage object
    gateway.upstream.script(no_usage=True)
    body = json.dumps({"model": "gpt-5", "messages": MSG}).encode()
    response = gateway.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    text = response.json()["choices"][0]["message"]["content"]
    assert text == "Hello from the fake upstream. This is a"
    # then the tokens are estimated at about 4 bytes a token of the request and of the generated text
    tokens = {"input_tokens": math.ceil(len(body) / 4), "output_tokens": math.ceil(len(text.encode()) / 4)}
    request_id, _ = assert_ids(response.headers)
    row = assert_outcome(gateway, request_id, billing_result="billed", status=200, cost=cost_of(**tokens))
    assert (row.input_tokens, row.output_tokens, row.tokens_estimated) == (
        tokens["input_tokens"],
        tokens["output_tokens"],
        True,
    )


def test_usage_above_the_hold_is_charged_up_to_it_and_the_rest_recorded(gateway):
    # given an upstream that reports far more output than the request allowed (a provider bug, or
    # a bound that was wrong): the ledger can charge at most the hold
    gateway.upstream.script(tokens={"prompt": 10, "completion": 5_000})
    response = gateway.post("/v1/chat/completions", json={"model": "gpt-5", "messages": MSG, "max_tokens": 10})
    assert response.status_code == 200
    request_id, _ = assert_ids(response.headers)
    hold = Hold.objects.get(request_id=request_id)
    full = cost_of(input_tokens=10, output_tokens=5_000)
    assert full > hold.amount
    # then the charge is the hold, and the row says what was not charged: never capped silently
    row = assert_outcome(gateway, request_id, billing_result="billed", status=200, cost=hold.amount)
    assert row.uncharged_usd == full - hold.amount
    assert (row.input_tokens, row.output_tokens) == (10, 5_000)
