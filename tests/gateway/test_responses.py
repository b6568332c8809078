"""POST /v1/responses end to end (issue 10, Deliver 1): the official openai SDK → the live gateway →
the fake upstream. Passed through on an OpenAI route (its bytes untouched), translated on a Claude
and a Gemini route; stored responses reachable by their own account only. One usage row per
request, proven against PostgreSQL."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import openai
import pytest

from billing import money, services
from billing.models import Hold
from tests.factories import AccountFactory, CatalogModelFactory, make_visible_model
from tests.gateway.support import assert_ledger, assert_sdk_error, rejected, row_cost, sse_events
from tests.gateway_fixtures import CLAUDE, GPT_PRICES
from usage import services as services_usage
from usage.models import UsageRecord

GEMINI = "gemini-2.5-flash"
HELLO = "Hello from Openbili"


@pytest.fixture
def routes(claude):
    """gpt-5 on an OpenAI route, Claude on an Anthropic route and a Gemini model on a Gemini route."""
    model = CatalogModelFactory(name=GEMINI, owned_by="google", context_window=1_048_576, max_output_tokens=65_536)
    make_visible_model(
        model,
        prices={"input_per_mtok": Decimal("0.30"), "output_per_mtok": Decimal("2.50")},
        base_url=claude.upstream.url,
        provider="gemini",
        upstream_model="gemini-up",
    )
    claude.refresh()
    return claude


def other_account_client(gateway) -> openai.OpenAI:
    account = AccountFactory(credit=Decimal("100"))
    _, secret = services.key_create(account=account, name="other")
    return gateway.openai(key=secret)


# --- pass-through (OpenAI route) ------------------------------------------------------------------


def test_a_response_on_an_openai_route_passes_through_and_is_billed(gateway):
    gateway.upstream.script(tokens={"prompt": 21, "completion": 8, "cached": 5})
    raw = gateway.openai().responses.with_raw_response.create(model="gpt-5", input=HELLO, max_output_tokens=64)
    response = raw.parse()
    assert response.status == "completed" and response.output_text
    assert (response.usage.input_tokens, response.usage.output_tokens) == (21, 8)
    call = gateway.upstream.last_request
    assert call["path"] == "/v1/responses" and call["json"]["model"] == "gpt-5"
    row = gateway.row(raw.headers["x-request-id"])
    assert (row.billing_result, row.status, row.endpoint) == ("billed", 200, "/v1/responses")
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens) == (16, 5, 8)
    assert row.response_id == response.id  # stored upstream: this row is what makes it this account's
    assert (
        row.cost_usd
        == row_cost(row)
        == money.usage_cost(
            money.Prices(**GPT_PRICES), money.TokenUsage(input_tokens=16, cached_input_tokens=5, output_tokens=8)
        )
    )
    assert_ledger(gateway.account.pk, spent=row.cost_usd)


def test_max_output_tokens_is_clamped_to_the_model(gateway):
    gateway.upstream.script(tokens={"prompt": 3, "completion": 2})
    raw = gateway.openai().responses.with_raw_response.create(model="gpt-5", input=HELLO, max_output_tokens=10**9)
    assert gateway.upstream.last_request["json"]["max_output_tokens"] == 128_000
    row = gateway.row(raw.headers["x-request-id"])
    assert (row.max_tokens_requested, row.max_tokens_applied) == (10**9, 128_000)


def test_a_stream_passes_through_and_ends_with_completed_after_the_bill(gateway):
    gateway.upstream.script(tokens={"prompt": 9, "completion": 4})
    with gateway.openai().responses.stream(model="gpt-5", input=HELLO) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 4)
    row = UsageRecord.objects.get(response_id=final.id)
    assert (row.billing_result, row.stream, row.output_reached_client) == ("billed", True, True)
    assert (row.input_tokens, row.output_tokens) == (9, 4) and row.cost_usd == row_cost(row) > 0


def test_a_stream_cut_by_an_upstream_error_raises_and_never_completes(gateway):
    gateway.upstream.script(status=500, error_after_chunks=2, tokens={"prompt": 7})
    response = gateway.post("/v1/responses", json={"model": "gpt-5", "input": HELLO, "stream": True})
    events = sse_events(response.content)
    names = [name for name, _ in events]
    assert "response.completed" not in names and names[-2:] == ["response.failed", "error"]
    error = json.loads(events[-1][1])
    assert error["error"]["code"] == "upstream_stream_interrupted" and error["code"] == "upstream_stream_interrupted"
    row = gateway.row(response.headers["x-request-id"])
    assert (row.billing_result, row.error_class) == ("failed_but_billable", "stream_interrupted")
    # and the SDK raises on it
    gateway.upstream.script(status=500, error_after_chunks=1)
    with pytest.raises(openai.APIError):
        for _ in gateway.openai().responses.create(model="gpt-5", input=HELLO, stream=True):
            pass


def test_an_upstream_rate_limit_is_a_429_the_sdk_raises(gateway):
    gateway.upstream.script(status=429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as caught:
        gateway.openai().responses.create(model="gpt-5", input=HELLO)
    request_id = assert_sdk_error(caught.value, status=429, code="upstream_rate_limited")
    assert caught.value.response.headers["retry-after"] == "3"
    assert gateway.row(request_id).billing_result == "not_billed"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0]", "tool_not_supported"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0]", "tool_not_supported"),
        ({"background": True, "stream": True}, "stream", "unsupported_parameter"),
        ({"background": True, "store": False}, "store", "invalid_request"),
        ({"background": "yes"}, "background", "invalid_request"),
        ({"conversation": "conv_123"}, "conversation", "unsupported_parameter"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
        ({"input": 5}, "input", "invalid_request"),
        ({"max_output_tokens": 0}, "max_output_tokens", "invalid_request"),
    ],
)
def test_what_cannot_be_billed_or_scoped_is_a_400_before_any_hold(gateway, body, param, code):
    response = gateway.post("/v1/responses", json={"model": "gpt-5", "input": HELLO} | body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    rejected(gateway, response.headers["x-request-id"], 400, "invalid_request", code)
    assert not gateway.upstream.requests


# --- stored responses: this account's only ------------------------------------------------------------


def test_a_stored_response_is_retrieved_by_its_own_account_only(gateway):
    client = gateway.openai()
    created = client.responses.create(model="gpt-5", input=HELLO)
    # the owner reads it back through the route that stored it
    again = client.responses.retrieve(created.id)
    assert (again.id, again.status) == (created.id, "completed")
    assert gateway.upstream.last_request["method"] == "GET"
    assert gateway.upstream.last_request["path"] == f"/v1/responses/{created.id}"
    # another account gets "not found", and the upstream is never asked
    asked = len(gateway.upstream.requests)
    with pytest.raises(openai.NotFoundError) as caught:
        other_account_client(gateway).responses.retrieve(created.id)
    assert caught.value.body["code"] == "response_not_found"
    assert len(gateway.upstream.requests) == asked
    # the owner deletes it
    deleted = client.responses.delete(created.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    assert gateway.upstream.last_request["method"] == "DELETE"
    rows = UsageRecord.objects.filter(account=gateway.account, endpoint="/v1/responses/{id}")
    assert sorted(rows.values_list("status", "billing_result")) == [(200, "not_billed"), (200, "not_billed")]


def test_a_continuation_goes_on_for_its_own_account_and_holds_the_context(gateway):
    client = gateway.openai()
    first = client.responses.create(model="gpt-5", input=HELLO)
    raw = client.responses.with_raw_response.create(model="gpt-5", input="And then?", previous_response_id=first.id)
    assert raw.parse().status == "completed"
    assert gateway.upstream.last_request["json"]["previous_response_id"] == first.id
    row = gateway.row(raw.headers["x-request-id"])
    assert row.billing_result == "billed"
    # the hold covered the stored conversation: the model's whole context window of input
    hold = row.hold
    assert hold.amount >= money.token_cost(400_000, GPT_PRICES["input_per_mtok"])
    # a stranger cannot continue it
    with pytest.raises(openai.BadRequestError) as caught:
        other_account_client(gateway).responses.create(model="gpt-5", input="x", previous_response_id=first.id)
    assert_sdk_error(caught.value, status=400, code="previous_response_not_found", param="previous_response_id")


def test_unknown_stored_response_paths_and_methods(gateway):
    assert gateway.get("/v1/responses/resp_nope").status_code == 404
    assert gateway.post("/v1/responses/resp_nope/other", json={}).status_code == 404
    assert (
        httpx.put(
            gateway.url + "/v1/responses/resp_nope", headers={"Authorization": f"Bearer {gateway.secret}"}
        ).status_code
        == 405
    )
    assert gateway.get("/v1/responses/resp_nope", key=False).status_code == 401


# --- background responses: answered queued, billed when they finish ------------------------------


def wait_for_status(client, response_id: str, status: str):
    for _ in range(100):
        current = client.responses.retrieve(response_id)
        if current.status == status:
            return current
        time.sleep(0.05)
    raise AssertionError(f"{response_id} never became {status}")


def pending_row(gateway, response_id: str) -> UsageRecord:
    row = UsageRecord.objects.get(response_id=response_id, endpoint="/v1/responses")
    assert row.billing_result == "pending" and Hold.objects.get(pk=row.hold_id).state == Hold.State.OPEN
    return row


def test_a_background_response_is_billed_by_the_poller_when_it_finishes(gateway):
    gateway.upstream.script(tokens={"prompt": 30, "completion": 12}, background_delay_ms=150)
    raw = gateway.openai().responses.with_raw_response.create(model="gpt-5", input=HELLO, background=True)
    queued = raw.parse()
    assert queued.status == "queued" and queued.usage is None
    # the request is answered, its row still pending with its hold open, held for the long run
    row = pending_row(gateway, queued.id)
    assert row.request_id == raw.headers["x-request-id"] and row.status == 200
    assert Hold.objects.get(pk=row.hold_id).expires_at > row.started_at + timedelta(hours=1)
    assert services_usage.responses_poll() == 0  # still running: nothing to settle
    time.sleep(0.3)
    assert services_usage.responses_poll() == 1
    row.refresh_from_db()
    assert (row.billing_result, row.input_tokens, row.output_tokens) == ("billed", 30, 12)
    assert (
        row.cost_usd
        == row_cost(row)
        == money.usage_cost(money.Prices(**GPT_PRICES), money.TokenUsage(input_tokens=30, output_tokens=12))
    )
    assert Hold.objects.get(pk=row.hold_id).state == Hold.State.SETTLED
    assert_ledger(gateway.account.pk, spent=row.cost_usd)
    assert services_usage.responses_poll() == 0  # settled once


def test_the_customers_own_get_of_a_finished_background_response_bills_it(gateway):
    gateway.upstream.script(tokens={"prompt": 5, "completion": 4}, background_delay_ms=50)
    client = gateway.openai()
    queued = client.responses.create(model="gpt-5", input=HELLO, background=True)
    done = wait_for_status(client, queued.id, "completed")
    assert done.usage.output_tokens == 4
    row = UsageRecord.objects.get(response_id=queued.id, endpoint="/v1/responses")
    assert (row.billing_result, row.output_tokens) == ("billed", 4)
    assert_ledger(gateway.account.pk, spent=row.cost_usd)


def test_a_running_background_response_cannot_be_deleted_before_it_is_billed(gateway):
    gateway.upstream.script(tokens={"prompt": 5, "completion": 4}, background_delay_ms=400)
    client = gateway.openai()
    queued = client.responses.create(model="gpt-5", input=HELLO, background=True)
    with pytest.raises(openai.ConflictError) as caught:
        client.responses.delete(queued.id)
    assert caught.value.body["code"] == "response_in_progress"
    time.sleep(0.5)
    client.responses.delete(queued.id)  # finished: billed on the way, then deleted
    row = UsageRecord.objects.get(response_id=queued.id, endpoint="/v1/responses")
    assert (row.billing_result, row.output_tokens) == ("billed", 4)


def test_a_cancelled_background_response_is_settled_from_the_cancel(gateway):
    gateway.upstream.script(background_delay_ms=5000)
    client = gateway.openai()
    queued = client.responses.create(model="gpt-5", input=HELLO, background=True)
    cancelled = client.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    row = UsageRecord.objects.get(response_id=queued.id, endpoint="/v1/responses")
    assert row.billing_result in ("not_billed", "failed_but_billable") and row.error_code
    assert Hold.objects.get(pk=row.hold_id).state != Hold.State.OPEN
    assert_ledger(gateway.account.pk, spent=row.cost_usd)


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_background_on_a_translated_route_is_a_clear_400(routes, model):
    with pytest.raises(openai.BadRequestError) as caught:
        routes.openai().responses.create(model=model, input="x", background=True)
    assert_sdk_error(caught.value, status=400, code="unsupported_parameter", param="background")
    assert not routes.upstream.requests


# --- translated (Claude, Gemini) ----------------------------------------------------------------------


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_a_response_on_a_translated_route_is_billed_from_the_upstreams_usage(routes, model):
    routes.upstream.script(tokens={"prompt": 14, "completion": 6})
    raw = routes.openai().responses.with_raw_response.create(
        model=model, instructions="Be brief.", input=HELLO, max_output_tokens=100
    )
    response = raw.parse()
    assert response.status == "completed" and response.output_text and response.model == model
    assert (response.usage.input_tokens, response.usage.output_tokens) == (14, 6)
    assert routes.upstream.last_request["path"] in ("/v1/messages", "/v1beta/models/gemini-up:generateContent")
    row = routes.row(raw.headers["x-request-id"])
    assert (row.billing_result, row.input_tokens, row.output_tokens) == ("billed", 14, 6)
    assert row.response_id == ""  # nothing stored upstream
    assert row.cost_usd == row_cost(row) > 0


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_a_translated_stream_works_with_the_sdk_stream_helper(routes, model):
    routes.upstream.script(tokens={"prompt": 5, "completion": 3})
    with routes.openai().responses.stream(model=model, input=HELLO) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text and (final.usage.input_tokens, final.usage.output_tokens) == (5, 3)
    row = UsageRecord.objects.filter(account=routes.account, model_requested=model).latest("started_at")
    assert (row.billing_result, row.stream, row.input_tokens, row.output_tokens) == ("billed", True, 5, 3)


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_a_function_call_round_trip_on_a_translated_route(routes, model):
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ]
    routes.upstream.script(tool_call={"name": "get_weather", "arguments": {"city": "Paris"}})
    client = routes.openai()
    first = client.responses.create(model=model, input="Weather in Paris?", tools=tools)
    call = next(item for item in first.output if item.type == "function_call")
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    follow = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
    ]
    second = client.responses.create(model=model, input=follow, tools=tools)
    assert second.status == "completed" and second.output_text


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_stored_state_on_a_translated_route_is_a_clear_400(routes, model):
    with pytest.raises(openai.BadRequestError) as caught:
        routes.openai().responses.create(model=model, input="x", previous_response_id="resp_abc")
    assert_sdk_error(caught.value, status=400, code="unsupported_parameter", param="previous_response_id")
    assert "input" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        routes.openai().responses.create(model=model, input="x", store=True)
    assert caught.value.status_code == 400 and caught.value.body["param"] == "store"
