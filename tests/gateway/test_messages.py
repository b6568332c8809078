"""POST /v1/messages (Anthropic Messages, native) and /v1/messages/count_tokens (CONTRACT §2, §2.1,
§2.2, §3), through the official `anthropic` SDK and raw HTTP, on both kinds of route: an Anthropic
route (claude-sonnet-4-6, passed through) and an OpenAI-compatible one (gpt-5, Messages ↔ Chat
translated). Also the OpenAI SDK's Chat Completions on the Claude route (Chat ↔ Messages)."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import NamedTuple

import anthropic
import openai
import pytest

from billing import money, services
from billing.models import ApiKey
from tests.factories import AccountFactory
from tests.gateway.limiter_support import fresh_window
from tests.gateway.support import (
    MSG,
    START_CREDIT,
    assert_ids,
    assert_ledger,
    assert_no_row,
    assert_outcome,
    rejected,
    row_cost,
)
from tests.gateway.support import sse_events as support_sse_events
from tests.gateway_fixtures import CLAUDE, CLAUDE_PRICES, GPT_PRICES

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
UNKNOWN_KEY = "sk-ob-" + "A" * 43
UPSTREAM_SECRET = "upstream-test-secret"
DEFAULT_VERSION = "2023-06-01"  # the gateway's when a client sends none
TEXT = "Hello from the fake upstream. This is a"  # the fake upstream's default eight pieces
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"name": "get_weather", "description": "Weather of a city", "input_schema": WEATHER_SCHEMA}]
CHAT_TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather of a city", "parameters": WEATHER_SCHEMA},
    }
]
WEATHER_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
# The top-level keys of an Anthropic Messages request (what the upstream may receive on a Claude route).
ANTHROPIC_REQUEST_KEYS = {
    "model",
    "max_tokens",
    "messages",
    "system",
    "stream",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "metadata",
    "thinking",
}


class Via(NamedTuple):
    """A route kind: the model the customer names, where the gateway sends it, at which prices."""

    model: str
    provider: str
    upstream_model: str
    upstream_path: str
    prices: money.Prices

    def cost(self, **tokens: int) -> Decimal:
        return money.usage_cost(self.prices, money.TokenUsage(**tokens))


ANTHROPIC_ROUTE = Via(CLAUDE, "anthropic", "claude-up", "/v1/messages", money.Prices(**CLAUDE_PRICES))
OPENAI_ROUTE = Via("gpt-5", "openai", "gpt-5", "/v1/chat/completions", money.Prices(**GPT_PRICES))
BOTH_ROUTES = pytest.mark.parametrize("via", [ANTHROPIC_ROUTE, OPENAI_ROUTE], ids=["anthropic-route", "openai-route"])


def body_of(via: Via, **extra) -> dict:
    return {"model": via.model, "max_tokens": 64, "messages": MSG} | extra


def anthropic_headers(key: str, **extra: str) -> dict[str, str]:
    return {"x-api-key": key, "anthropic-version": DEFAULT_VERSION} | extra


def sse_events(raw: bytes) -> list[tuple[str, dict | None]]:
    """(event name, JSON data) of each event of an SSE body, in order."""
    return [(name, json.loads(data) if data else None) for name, data in support_sse_events(raw)]


def streamed_text(events: list[tuple[str, dict | None]]) -> str:
    return "".join(
        data["delta"].get("text", "")
        for name, data in events
        if name == "content_block_delta" and data is not None and data["delta"]["type"] == "text_delta"
    )


def sdk_version(gateway) -> str:
    """The anthropic-version header the installed SDK sends."""
    return gateway.anthropic().default_headers["anthropic-version"]


def assert_anthropic_error_body(response, *, status: int, type_: str) -> str:
    """Anthropic's error shape, `{"type": "error", "error": {"type", "message"}, "request_id"}`, with
    the request id of the headers; returns it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    request_id, _ = assert_ids(response.headers)
    body = json.loads(response.content)
    assert {"type", "error", "request_id"} <= set(body)
    assert body["type"] == "error"
    assert {"type", "message"} <= set(body["error"])
    assert body["error"]["type"] == type_
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["request_id"] == request_id
    return request_id


def assert_sdk_error(exc: anthropic.APIStatusError, cls: type, *, status: int, type_: str) -> str:
    """The SDK raised exactly `cls` from one of our error bodies; returns the request id."""
    assert type(exc) is cls
    assert exc.status_code == status
    assert exc.body == json.loads(exc.response.content)
    return assert_anthropic_error_body(exc.response, status=status, type_=type_)


def assert_route_fields(row, via: Via, *, endpoint: str = MESSAGES) -> None:
    assert row.endpoint == endpoint
    assert (row.model_requested, row.provider, row.upstream_model) == (via.model, via.provider, via.upstream_model)


def attempts_of(row) -> list[tuple[int, int | None, str]]:
    return [(a["attempt"], a["status"], a["error"]) for a in row.attempts]


def upstream_calls(gateway, path: str) -> list[dict]:
    return [r for r in gateway.upstream.requests if r["path"] == path]


# --- 1. messages.create ----------------------------------------------------------------------------


@BOTH_ROUTES
def test_sdk_messages_create_is_billed_at_the_exact_cost(claude, via):
    # given an upstream that reports 12 input and 8 output tokens
    claude.upstream.script(tokens={"prompt": 12, "completion": 8})
    # when the customer calls messages.create through the anthropic SDK
    raw = claude.anthropic().messages.with_raw_response.create(model=via.model, max_tokens=64, messages=MSG)
    message = raw.parse()
    # then the reply is a Messages reply with the upstream's text and usage
    assert message.type == "message" and message.role == "assistant"
    assert [(b.type, b.text) for b in message.content] == [("text", TEXT)]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 8)
    # and the usage row bills exactly those tokens at the snapshot's prices
    expected = {ANTHROPIC_ROUTE: Decimal("0.000156"), OPENAI_ROUTE: Decimal("0.000095")}[via]
    assert via.cost(input_tokens=12, output_tokens=8) == expected
    request_id, trace_id = assert_ids(raw.headers)
    row = assert_outcome(claude, request_id, billing_result="billed", status=200, cost=expected)
    assert row_cost(row) == expected
    assert (row.input_tokens, row.output_tokens, row.cached_input_tokens, row.cache_write_tokens) == (12, 8, 0, 0)
    assert (row.tokens_estimated, row.stream, row.output_reached_client) == (False, False, True)
    assert row.trace_id == trace_id
    assert (row.account_id, row.key_prefix) == (claude.account.pk, claude.secret[:12])
    assert_route_fields(row, via)
    assert (row.max_tokens_requested, row.max_tokens_applied) == (64, 64)
    assert attempts_of(row) == [(1, 200, "")]
    assert row.started_at <= row.first_byte_at <= row.finished_at
    # the upstream was called once, on its own wire format, with its own model name
    (sent,) = claude.upstream.requests
    assert sent["path"] == via.upstream_path
    assert sent["json"]["model"] == via.upstream_model


def test_openai_route_receives_a_chat_body(claude):
    claude.anthropic().messages.create(
        model="gpt-5", max_tokens=64, system="You are terse.", messages=MSG, extra_body={"temperature": 0.5}
    )
    (sent,) = claude.upstream.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["json"] == {
        "model": "gpt-5",
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": MSG[0]["content"]}],
        "max_completion_tokens": 64,
        "temperature": 0.5,
    }
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"


# --- 2. messages.stream ----------------------------------------------------------------------------


@BOTH_ROUTES
def test_sdk_messages_stream_text(claude, via):
    claude.upstream.script(tokens={"prompt": 12, "completion": 8})
    with claude.anthropic().messages.stream(model=via.model, max_tokens=64, messages=MSG) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
        headers = stream.response.headers
    # then the text arrived in pieces and the final message says what the row says
    assert len(texts) == 8
    assert "".join(texts) == TEXT
    assert [(b.type, b.text) for b in final.content] == [("text", TEXT)]
    assert final.stop_reason == "end_turn"
    assert headers["content-type"].startswith("text/event-stream")
    request_id, _ = assert_ids(headers)
    cost = via.cost(input_tokens=12, output_tokens=8)
    row = assert_outcome(claude, request_id, billing_result="billed", status=200, cost=cost)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (row.input_tokens, row.output_tokens) == (12, 8)
    assert row_cost(row) == cost
    assert (row.stream, row.tokens_estimated, row.output_reached_client) == (True, False, True)
    assert_route_fields(row, via)
    assert attempts_of(row) == [(1, 200, "")]
    assert claude.upstream.requests[-1]["json"]["stream"] is True


@BOTH_ROUTES
def test_sdk_messages_stream_tool_use(claude, via):
    claude.upstream.script(tool_call=WEATHER_CALL, tokens={"prompt": 20, "completion": 6})
    with claude.anthropic().messages.stream(
        model=via.model, max_tokens=256, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS
    ) as stream:
        final = stream.get_final_message()
        headers = stream.response.headers
    # then the final message is one tool_use block with the parsed input
    assert [b.type for b in final.content] == ["tool_use"]
    (block,) = final.content
    assert (block.name, block.input) == ("get_weather", {"city": "Paris"})
    assert block.id
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (20, 6)
    request_id, _ = assert_ids(headers)
    row = assert_outcome(
        claude,
        request_id,
        billing_result="billed",
        status=200,
        cost=via.cost(input_tokens=20, output_tokens=6),
    )
    assert (row.input_tokens, row.output_tokens) == (20, 6)
    assert_route_fields(row, via)
    # the tool definition reached the upstream in its own format
    sent = claude.upstream.requests[-1]["json"]
    if via is ANTHROPIC_ROUTE:
        assert sent["tools"] == TOOLS
    else:
        assert sent["tools"] == CHAT_TOOLS


@BOTH_ROUTES
def test_sdk_messages_create_tool_use(claude, via):
    claude.upstream.script(tool_call=WEATHER_CALL, tokens={"prompt": 20, "completion": 6})
    raw = claude.anthropic().messages.with_raw_response.create(
        model=via.model, max_tokens=256, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS
    )
    message = raw.parse()
    (block,) = message.content
    assert (block.type, block.name, block.input) == ("tool_use", "get_weather", {"city": "Paris"})
    assert message.stop_reason == "tool_use"
    request_id, _ = assert_ids(raw.headers)
    assert_outcome(
        claude, request_id, billing_result="billed", status=200, cost=via.cost(input_tokens=20, output_tokens=6)
    )


def test_messages_tool_result_round_trip_on_the_openai_route(claude):
    # given the model asked for the weather (a tool_use block with the upstream's call id)
    client = claude.anthropic()
    claude.upstream.script(tool_call=WEATHER_CALL)
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.messages.create(model="gpt-5", max_tokens=256, system="Be terse.", messages=asked, tools=TOOLS)
    (use,) = first.content
    assert (use.type, use.name, use.input) == ("tool_use", "get_weather", {"city": "Paris"})
    # when the client sends the tool's result back, Anthropic style
    claude.upstream.script(tokens={"prompt": 30, "completion": 8})
    followup = [
        *asked,
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees"}]},
    ]
    raw = client.messages.with_raw_response.create(
        model="gpt-5", max_tokens=256, system="Be terse.", messages=followup, tools=TOOLS
    )
    assert raw.parse().content[0].text == TEXT
    # then the Chat upstream got an assistant tool call and the matching tool message
    sent = claude.upstream.requests[-1]["json"]
    assert sent["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": use.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": use.id, "content": "18 degrees"},
    ]
    assert sent["tools"] == CHAT_TOOLS
    request_id, _ = assert_ids(raw.headers)
    row = claude.row(request_id)
    assert (row.billing_result, row.input_tokens, row.output_tokens) == ("billed", 30, 8)
    assert row.cost_usd == OPENAI_ROUTE.cost(input_tokens=30, output_tokens=8)


# --- 3. Anthropic prompt-cache usage ---------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_prompt_cache_reads_and_writes_are_billed_at_their_own_prices(claude, stream):
    # given an Anthropic upstream reporting 10 uncached input, 7 cache-read, 3 cache-write, 5 output
    claude.upstream.script(tokens={"prompt": 10, "completion": 5, "cache_read": 7, "cache_creation": 3})
    client = claude.anthropic()
    if stream:
        with client.messages.stream(model=CLAUDE, max_tokens=64, messages=MSG) as events:
            message = events.get_final_message()
            headers = events.response.headers
    else:
        raw = client.messages.with_raw_response.create(model=CLAUDE, max_tokens=64, messages=MSG)
        message, headers = raw.parse(), raw.headers
    # then the customer sees Anthropic's usage as the upstream reported it
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (10, 7, 3)
    assert usage.output_tokens == 5
    # and the row keeps the four counts apart, each billed at its snapshot price:
    # 10 × $3 + 7 × $0.30 + 3 × $3.75 + 5 × $15, per million
    expected = Decimal("0.00011835")
    assert (
        Decimal(10) * 3 + Decimal(7) * Decimal("0.30") + Decimal(3) * Decimal("3.75") + Decimal(5) * 15
    ) / 10**6 == expected
    request_id, _ = assert_ids(headers)
    row = assert_outcome(claude, request_id, billing_result="billed", status=200, cost=expected)
    assert (row.input_tokens, row.cached_input_tokens, row.cache_write_tokens, row.output_tokens) == (10, 7, 3, 5)
    assert row_cost(row) == expected
    assert row.tokens_estimated is False


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_openai_cached_tokens_are_reported_beside_input_tokens_on_the_openai_route(claude, stream):
    # given an OpenAI upstream: 1000 prompt tokens, 400 of them cached (inside prompt_tokens), 50 output
    claude.upstream.script(tokens={"prompt": 1000, "cached": 400, "completion": 50})
    client = claude.anthropic()
    if stream:
        with client.messages.stream(model="gpt-5", max_tokens=64, messages=MSG) as events:
            message = events.get_final_message()
            headers = events.response.headers
    else:
        raw = client.messages.with_raw_response.create(model="gpt-5", max_tokens=64, messages=MSG)
        message, headers = raw.parse(), raw.headers
    # then the Messages client sees Anthropic's convention: cache reads beside the uncached input
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (600, 400, 50)
    assert usage.cache_creation_input_tokens in (None, 0)
    # and the row is billed once, 600 × $1.25 + 400 × $0.125 + 50 × $10 per million
    request_id, _ = assert_ids(headers)
    row = assert_outcome(claude, request_id, billing_result="billed", status=200, cost=Decimal("0.0013"))
    assert (row.input_tokens, row.cached_input_tokens, row.cache_write_tokens, row.output_tokens) == (600, 400, 0, 50)


# --- 4. count_tokens -------------------------------------------------------------------------------


def test_count_tokens_on_the_anthropic_route_is_forwarded_and_free(claude):
    # when the customer counts tokens for a Claude model
    raw = claude.anthropic().messages.with_raw_response.count_tokens(
        model=CLAUDE, messages=[{"role": "user", "content": "one two three four five"}]
    )
    counted = raw.parse()
    # then the upstream counted them (five words, by the fake's rule) and its answer is relayed
    assert counted.input_tokens == 5
    (sent,) = claude.upstream.requests
    assert sent["path"] == COUNT_TOKENS
    assert sent["json"]["model"] == "claude-up"
    assert sent["headers"]["x-api-key"] == UPSTREAM_SECRET
    assert sent["headers"]["anthropic-version"] == sdk_version(claude)
    assert claude.secret not in json.dumps(sent["headers"])
    # and it costs nothing: one not_billed row, the balance untouched
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(claude, request_id, billing_result="not_billed", status=200, cost=Decimal(0))
    assert_route_fields(row, ANTHROPIC_ROUTE, endpoint=COUNT_TOKENS)
    assert row.tokens_estimated is False
    assert row.stream is False


def test_count_tokens_on_the_openai_route_is_estimated_and_free(claude):
    raw = claude.anthropic().messages.with_raw_response.count_tokens(model="gpt-5", messages=MSG)
    counted = raw.parse()
    assert isinstance(counted.input_tokens, int) and counted.input_tokens > 0
    # the OpenAI upstream has no token counting: it is never called
    assert claude.upstream.requests == []
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(claude, request_id, billing_result="not_billed", status=200, cost=Decimal(0))
    assert row.endpoint == COUNT_TOKENS
    assert row.model_requested == "gpt-5"
    assert row.tokens_estimated is True


@BOTH_ROUTES
def test_count_tokens_raw_http_has_one_row_and_charges_nothing(claude, via):
    response = claude.post(COUNT_TOKENS, json={"model": via.model, "messages": MSG})
    assert response.status_code == 200
    assert set(response.json()) == {"input_tokens"}
    request_id, _ = assert_ids(response.headers)
    assert_outcome(claude, request_id, billing_result="not_billed", status=200, cost=Decimal(0))
    assert len(upstream_calls(claude, COUNT_TOKENS)) == (1 if via is ANTHROPIC_ROUTE else 0)
    assert upstream_calls(claude, via.upstream_path) == []  # nothing was generated


def test_count_tokens_with_a_bad_key_is_401_without_a_row(claude):
    with pytest.raises(anthropic.AuthenticationError) as caught:
        claude.anthropic(UNKNOWN_KEY).messages.count_tokens(model=CLAUDE, messages=MSG)
    request_id = assert_sdk_error(caught.value, anthropic.AuthenticationError, status=401, type_="authentication_error")
    assert_no_row(request_id)
    assert claude.upstream.requests == []


# --- 5. headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["x-api-key", "bearer"])
@BOTH_ROUTES
def test_x_api_key_and_bearer_are_both_accepted(claude, via, auth):
    claude.upstream.script(tokens={"prompt": 12, "completion": 8})
    headers = {"x-api-key": claude.secret} if auth == "x-api-key" else {"Authorization": f"Bearer {claude.secret}"}
    headers["anthropic-version"] = DEFAULT_VERSION
    response = claude.post(MESSAGES, key=False, headers=headers, json=body_of(via))
    assert response.status_code == 200, response.text
    assert response.json()["content"] == [{"type": "text", "text": TEXT}]
    request_id, _ = assert_ids(response.headers)
    assert_outcome(
        claude, request_id, billing_result="billed", status=200, cost=via.cost(input_tokens=12, output_tokens=8)
    )
    # the client's key never reaches the upstream, whichever header carried it
    (sent,) = claude.upstream.requests
    assert claude.secret not in json.dumps(sent["headers"])
    if via is ANTHROPIC_ROUTE:
        assert sent["headers"]["x-api-key"] == UPSTREAM_SECRET
        assert "authorization" not in sent["headers"]
    else:
        assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"
        assert "x-api-key" not in sent["headers"]


@pytest.mark.parametrize("auth", ["sdk-default", "x-api-key"])
def test_sdk_key_never_reaches_the_upstream_which_sees_only_the_route_secret(claude, auth):
    # the installed SDK sends its key as a Bearer token; older ones (and Claude Code) as x-api-key
    extra = {"Authorization": anthropic.omit, "x-api-key": claude.secret} if auth == "x-api-key" else None
    raw = claude.anthropic().messages.with_raw_response.create(
        model=CLAUDE, max_tokens=64, messages=MSG, extra_headers=extra
    )
    sent_by_client = raw.http_request.headers
    if auth == "x-api-key":
        assert ("x-api-key" in sent_by_client, "authorization" in sent_by_client) == (True, False)
    assert raw.parse().content[0].text == TEXT
    request_id, _ = assert_ids(raw.headers)
    assert claude.row(request_id).billing_result == "billed"
    (sent,) = claude.upstream.requests
    assert sent["headers"]["x-api-key"] == UPSTREAM_SECRET
    assert sent["headers"]["anthropic-version"] == sdk_version(claude)
    assert "authorization" not in sent["headers"]
    assert "anthropic-beta" not in sent["headers"]
    assert claude.secret not in json.dumps(sent["headers"])


def test_client_anthropic_version_and_beta_reach_the_upstream(claude):
    beta = "context-1m-2025-08-07,interleaved-thinking-2025-05-14"
    claude.anthropic().messages.create(
        model=CLAUDE,
        max_tokens=64,
        messages=MSG,
        extra_headers={"anthropic-version": "2023-01-01", "anthropic-beta": beta},
    )
    (sent,) = claude.upstream.requests
    assert sent["headers"]["anthropic-version"] == "2023-01-01"
    assert sent["headers"]["anthropic-beta"] == beta
    assert sent["headers"]["x-api-key"] == UPSTREAM_SECRET


@pytest.mark.parametrize("path", [MESSAGES, COUNT_TOKENS])
def test_default_anthropic_version_when_the_client_sent_none(claude, path):
    body = body_of(ANTHROPIC_ROUTE) if path == MESSAGES else {"model": CLAUDE, "messages": MSG}
    response = claude.post(path, key=False, headers={"x-api-key": claude.secret}, json=body)
    assert response.status_code == 200, response.text
    (sent,) = claude.upstream.requests
    assert sent["path"] == path
    assert sent["headers"]["anthropic-version"] == DEFAULT_VERSION
    assert "anthropic-beta" not in sent["headers"]
    assert sent["headers"]["x-api-key"] == UPSTREAM_SECRET


def test_beta_header_reaches_the_upstream_of_a_stream_and_of_count_tokens(claude):
    beta = "prompt-caching-2024-07-31"
    client = claude.anthropic()
    with client.messages.stream(
        model=CLAUDE, max_tokens=64, messages=MSG, extra_headers={"anthropic-beta": beta}
    ) as stream:
        stream.get_final_message()
    client.messages.count_tokens(model=CLAUDE, messages=MSG, extra_headers={"anthropic-beta": beta})
    generated, counted = claude.upstream.requests
    assert (generated["path"], counted["path"]) == (MESSAGES, COUNT_TOKENS)
    for sent in (generated, counted):
        assert sent["headers"]["anthropic-beta"] == beta
        assert sent["headers"]["x-api-key"] == UPSTREAM_SECRET
        assert claude.secret not in json.dumps(sent["headers"])


# --- 6. errors -------------------------------------------------------------------------------------


@BOTH_ROUTES
def test_bad_key_raises_authentication_error_without_a_row(claude, via):
    with pytest.raises(anthropic.AuthenticationError) as caught:
        claude.anthropic(UNKNOWN_KEY).messages.create(model=via.model, max_tokens=64, messages=MSG)
    request_id = assert_sdk_error(caught.value, anthropic.AuthenticationError, status=401, type_="authentication_error")
    assert_no_row(request_id)
    assert claude.upstream.requests == []
    assert_ledger(claude.account.pk, spent=Decimal(0))


@pytest.mark.parametrize(
    "headers", [{}, {"x-api-key": UNKNOWN_KEY}, {"Authorization": f"Bearer {UNKNOWN_KEY}"}], ids=["none", "x", "bearer"]
)
def test_raw_401_has_anthropic_error_body(claude, headers):
    response = claude.post(MESSAGES, key=False, headers=headers, json=body_of(ANTHROPIC_ROUTE))
    request_id = assert_anthropic_error_body(response, status=401, type_="authentication_error")
    assert_no_row(request_id)
    assert claude.upstream.requests == []


@BOTH_ROUTES
def test_model_outside_the_key_scope_raises_permission_denied(claude, via):
    other = "gpt-5" if via is ANTHROPIC_ROUTE else CLAUDE
    _, secret = services.key_create(account=claude.account, name="scoped", models=[other])
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        claude.anthropic(secret).messages.create(model=via.model, max_tokens=64, messages=MSG)
    request_id = assert_sdk_error(caught.value, anthropic.PermissionDeniedError, status=403, type_="permission_error")
    row = rejected(claude, request_id, 403, "auth_or_key_scope", "model_not_allowed")
    assert (row.model_requested, row.endpoint) == (via.model, MESSAGES)
    assert row.key_prefix == secret[:12]
    assert claude.upstream.requests == []


def test_unknown_model_raises_not_found(claude):
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.anthropic().messages.create(model="claude-imaginary-9", max_tokens=64, messages=MSG)
    request_id = assert_sdk_error(caught.value, anthropic.NotFoundError, status=404, type_="not_found_error")
    row = rejected(claude, request_id, 404, "model_unavailable", "model_not_found")
    assert row.model_requested == "claude-imaginary-9"
    assert claude.upstream.requests == []


def test_unknown_model_on_count_tokens_is_404_with_a_row(claude):
    response = claude.post(COUNT_TOKENS, json={"model": "claude-imaginary-9", "messages": MSG})
    request_id = assert_anthropic_error_body(response, status=404, type_="not_found_error")
    row = rejected(claude, request_id, 404, "model_unavailable", "model_not_found")
    assert row.endpoint == COUNT_TOKENS
    assert claude.upstream.requests == []


@BOTH_ROUTES
def test_insufficient_balance_raises_payment_required_and_never_calls_upstream(claude, via):
    # given an account with one cent: a request that may cost more than that cannot be reserved
    poor = AccountFactory(credit=Decimal("0.01"))
    _, secret = services.key_create(account=poor, name="poor")
    with pytest.raises(anthropic.PaymentRequiredError) as caught:
        claude.anthropic(secret).messages.create(model=via.model, max_tokens=10_000, messages=MSG)
    request_id = assert_sdk_error(caught.value, anthropic.PaymentRequiredError, status=402, type_="billing_error")
    rejected(
        claude,
        request_id,
        402,
        "quota_or_rate_limit",
        "insufficient_balance",
        account_id=poor.pk,
        credit=Decimal("0.01"),
        spent=Decimal(0),
    )
    assert claude.upstream.requests == []


def test_traceparent_is_honoured_on_messages_and_in_the_error_body(claude):
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    ok = claude.post(MESSAGES, headers=traceparent, json=body_of(ANTHROPIC_ROUTE))
    assert ok.headers["x-trace-id"] == f"trace_{trace}"
    assert claude.row(ok.headers["x-request-id"]).trace_id == f"trace_{trace}"
    refused = claude.post(MESSAGES, headers=traceparent, json={"model": CLAUDE, "messages": MSG})
    request_id = assert_anthropic_error_body(refused, status=400, type_="invalid_request_error")
    assert refused.headers["x-trace-id"] == f"trace_{trace}"
    assert request_id != ok.headers["x-request-id"]


@BOTH_ROUTES
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_upstream_429_raises_rate_limit_error_with_its_retry_after(claude, via, stream):
    claude.upstream.script(status=429, retry_after=3)
    client = claude.anthropic()
    with pytest.raises(anthropic.RateLimitError) as caught:
        if stream:
            with client.messages.stream(model=via.model, max_tokens=64, messages=MSG) as events:
                events.get_final_message()
        else:
            client.messages.create(model=via.model, max_tokens=64, messages=MSG)
    request_id = assert_sdk_error(caught.value, anthropic.RateLimitError, status=429, type_="rate_limit_error")
    headers = caught.value.response.headers
    assert headers["retry-after"] == "3"
    for what in ("requests", "tokens"):
        for part in ("limit", "remaining", "reset"):
            assert f"x-ratelimit-{part}-{what}" in headers
    row = rejected(claude, request_id, 429, "quota_or_rate_limit", "upstream_rate_limited")
    assert_route_fields(row, via)
    # a 429 is not retried: one attempt
    assert attempts_of(row) == [(1, 429, "upstream_rate_limited")]
    assert len(claude.upstream.requests) == 1


def test_key_rpm_limit_raises_rate_limit_error(claude):
    fresh_window()  # both requests in one one-minute window
    ApiKey.objects.filter(account=claude.account).update(rpm_limit=1)
    claude.refresh()
    claude.upstream.script(tokens={"prompt": 12, "completion": 8})
    client = claude.anthropic()
    first = client.messages.with_raw_response.create(model=CLAUDE, max_tokens=64, messages=MSG)
    spent = ANTHROPIC_ROUTE.cost(input_tokens=12, output_tokens=8)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model=CLAUDE, max_tokens=64, messages=MSG)
    request_id = assert_sdk_error(caught.value, anthropic.RateLimitError, status=429, type_="rate_limit_error")
    headers = caught.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    rejected(claude, request_id, 429, "quota_or_rate_limit", "rate_limit_exceeded", spent=spent)
    # the refused request never reached the upstream; the first one was billed
    assert len(claude.upstream.requests) == 1
    assert_outcome(claude, first.headers["x-request-id"], billing_result="billed", status=200, cost=spent)


@BOTH_ROUTES
def test_missing_max_tokens_raises_bad_request(claude, via):
    # (the SDK's messages.create insists on max_tokens itself: post the body as another client would)
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.anthropic().post(MESSAGES, cast_to=object, body={"model": via.model, "messages": MSG})
    request_id = assert_sdk_error(caught.value, anthropic.BadRequestError, status=400, type_="invalid_request_error")
    assert "max_tokens" in caught.value.body["error"]["message"]
    row = rejected(claude, request_id, 400, "invalid_request", "invalid_request")
    assert row.endpoint == MESSAGES
    assert claude.upstream.requests == []


@pytest.mark.parametrize("content", [b'{"model": "claude-sonnet-4-6", "messages": [', b"", b"[]", b"\xff\xfe{}"])
def test_malformed_json_is_400_invalid_json(claude, content):
    response = claude.post(MESSAGES, content=content, headers={"Content-Type": "application/json"})
    request_id = assert_anthropic_error_body(response, status=400, type_="invalid_request_error")
    rejected(claude, request_id, 400, "invalid_request", "invalid_json")
    assert claude.upstream.requests == []


def test_sdk_raises_bad_request_for_malformed_json(claude):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.anthropic().post(
            MESSAGES,
            cast_to=object,
            content=b'{"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [',
            options={"headers": {"Content-Type": "application/json"}},
        )
    request_id = assert_sdk_error(caught.value, anthropic.BadRequestError, status=400, type_="invalid_request_error")
    rejected(claude, request_id, 400, "invalid_request", "invalid_json")
    assert claude.upstream.requests == []


@pytest.mark.parametrize(
    "extra",
    [
        {"extra_body": {"top_k": 5}},
        {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
    ],
    ids=["top_k", "server-tool"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_what_chat_cannot_carry_is_400_on_the_openai_route(claude, extra, stream):
    client = claude.anthropic()
    with pytest.raises(anthropic.BadRequestError) as caught:
        if stream:
            with client.messages.stream(model="gpt-5", max_tokens=64, messages=MSG, **extra) as events:
                events.get_final_message()
        else:
            client.messages.create(model="gpt-5", max_tokens=64, messages=MSG, **extra)
    request_id = assert_sdk_error(caught.value, anthropic.BadRequestError, status=400, type_="invalid_request_error")
    row = rejected(claude, request_id, 400, "invalid_request", "invalid_request")
    assert row.model_requested == "gpt-5"
    # never silently dropped, never sent: the upstream was not called
    assert claude.upstream.requests == []


def test_top_k_is_passed_through_on_the_anthropic_route(claude):
    claude.anthropic().messages.create(model=CLAUDE, max_tokens=64, messages=MSG, extra_body={"top_k": 5})
    assert claude.upstream.requests[-1]["json"]["top_k"] == 5


@BOTH_ROUTES
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_upstream_500_twice_is_retried_once_then_internal_server_error(claude, via, stream):
    claude.upstream.script(status=500, times=2)
    client = claude.anthropic()
    with pytest.raises(anthropic.InternalServerError) as caught:
        if stream:  # nothing reached the client yet: a plain JSON error, not an SSE stream
            with client.messages.stream(model=via.model, max_tokens=64, messages=MSG) as events:
                events.get_final_message()
        else:
            client.messages.create(model=via.model, max_tokens=64, messages=MSG)
    request_id = assert_sdk_error(caught.value, anthropic.InternalServerError, status=502, type_="api_error")
    row = rejected(claude, request_id, 502, "upstream_or_platform_error", "upstream_error")
    assert_route_fields(row, via)
    assert attempts_of(row) == [(1, 500, "upstream_error"), (2, 500, "upstream_error")]
    assert len(claude.upstream.requests) == 2


@BOTH_ROUTES
def test_upstream_500_once_is_retried_and_billed(claude, via):
    claude.upstream.script(status=500)
    claude.upstream.script(tokens={"prompt": 12, "completion": 8})
    raw = claude.anthropic().messages.with_raw_response.create(model=via.model, max_tokens=64, messages=MSG)
    assert raw.parse().content[0].text == TEXT
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(
        claude, request_id, billing_result="billed", status=200, cost=via.cost(input_tokens=12, output_tokens=8)
    )
    assert attempts_of(row) == [(1, 500, "upstream_error"), (2, 200, "")]


# --- 7. a stream that fails after it began ---------------------------------------------------------


FAILURES = pytest.mark.parametrize(
    "failure",
    [{"cut_after_chunks": 3}, {"status": 500, "error_after_chunks": 2}],
    ids=["cut", "error-event"],
)


def reported_input(via: Via, body: bytes) -> set[int]:
    """The input tokens a failed stream's row may hold: estimated from the request's bytes, or (on
    an Anthropic route, whose message_start reports it) the upstream's own count (3 words of MSG)."""
    estimate = math.ceil(len(body) / 4)
    return {estimate, 3} if via is ANTHROPIC_ROUTE else {estimate}


@BOTH_ROUTES
@FAILURES
def test_raw_stream_failure_ends_with_an_error_event_and_no_message_stop(claude, via, failure):
    claude.upstream.script(chunk_delay_ms=10, **failure)
    body = json.dumps(body_of(via, stream=True)).encode()
    response = claude.post(
        MESSAGES, content=body, headers={"Content-Type": "application/json", "anthropic-version": DEFAULT_VERSION}
    )
    assert response.status_code == 200
    events = sse_events(response.content)
    names = [name for name, _ in events]
    # then the stream began as a normal Messages stream, and ended with an error event
    assert names[0] == "message_start"
    assert "message_stop" not in names
    assert "message_delta" not in names
    *forwarded, (last_name, error) = events
    assert last_name == "error"
    request_id, _ = assert_ids(response.headers)
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"
    assert isinstance(error["error"]["message"], str) and error["error"]["message"]
    assert error["request_id"] == request_id
    text = streamed_text(forwarded)
    pieces = failure.get("cut_after_chunks", failure.get("error_after_chunks"))
    assert text == " ".join(TEXT.split()[:pieces])
    # and what was consumed is billed: output estimated from the text streamed, at snapshot prices
    row = claude.row(request_id)
    assert row.output_tokens == math.ceil(len(text.encode()) / 4)
    assert row.input_tokens in reported_input(via, body)
    assert row.tokens_estimated is True
    cost = via.cost(input_tokens=row.input_tokens, output_tokens=row.output_tokens)
    assert cost > 0
    assert_outcome(
        claude,
        request_id,
        billing_result="failed_but_billable",
        status=200,
        cost=cost,
        error_class="stream_interrupted",
        error_code="upstream_stream_interrupted",
    )
    assert row_cost(row) == cost
    assert row.output_reached_client is True
    assert row.client_disconnected_at is None
    assert row.first_byte_at is not None
    assert_route_fields(row, via)
    assert row.stream is True
    # never retried once streaming began
    assert len(claude.upstream.requests) == 1


@BOTH_ROUTES
@FAILURES
def test_sdk_raises_on_a_stream_that_failed_after_it_began(claude, via, failure):
    claude.upstream.script(chunk_delay_ms=10, **failure)
    texts: list[str] = []
    final = None
    client = claude.anthropic()
    with (
        pytest.raises(anthropic.APIError) as caught,
        client.messages.stream(model=via.model, max_tokens=64, messages=MSG) as stream,
    ):
        for piece in stream.text_stream:
            texts.append(piece)
        final = stream.get_final_message()
    # then the SDK raised instead of returning a short message as a success
    assert final is None
    assert isinstance(caught.value, anthropic.APIStatusError)
    body = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    pieces = failure.get("cut_after_chunks", failure.get("error_after_chunks"))
    assert "".join(texts) == " ".join(TEXT.split()[:pieces])
    request_id = body["request_id"]
    row = claude.row(request_id)
    assert (row.tokens_estimated, row.output_reached_client) == (True, True)
    assert row.output_tokens == math.ceil(len("".join(texts).encode()) / 4)
    assert_outcome(
        claude,
        request_id,
        billing_result="failed_but_billable",
        status=200,
        cost=via.cost(input_tokens=row.input_tokens, output_tokens=row.output_tokens),
        error_class="stream_interrupted",
        error_code="upstream_stream_interrupted",
    )


def test_cut_stream_keeps_the_input_and_cache_counts_anthropic_reported(claude):
    # given an Anthropic upstream whose message_start reported 10 input, 7 cache-read and 3
    # cache-write tokens, cut after three pieces (no message_delta: the output count never came)
    claude.upstream.script(
        cut_after_chunks=3, chunk_delay_ms=10, tokens={"prompt": 10, "cache_read": 7, "cache_creation": 3}
    )
    body = json.dumps(body_of(ANTHROPIC_ROUTE, stream=True)).encode()
    response = claude.post(MESSAGES, content=body, headers={"Content-Type": "application/json"})
    events = sse_events(response.content)
    assert events[-1][0] == "error"
    assert events[0][1]["message"]["usage"]["cache_read_input_tokens"] == 7  # the client saw the counts
    text = streamed_text(events)
    request_id, _ = assert_ids(response.headers)
    # then the consumed tokens are what the upstream reported; only the output is estimated
    output = math.ceil(len(text.encode()) / 4)
    cost = ANTHROPIC_ROUTE.cost(input_tokens=10, cached_input_tokens=7, cache_write_tokens=3, output_tokens=output)
    row = assert_outcome(
        claude,
        request_id,
        billing_result="failed_but_billable",
        status=200,
        cost=cost,
        error_class="stream_interrupted",
        error_code="upstream_stream_interrupted",
    )
    assert (row.input_tokens, row.cached_input_tokens, row.cache_write_tokens) == (10, 7, 3)
    assert (row.output_tokens, row.tokens_estimated) == (output, True)


@BOTH_ROUTES
def test_sdk_raw_event_stream_raises_on_a_cut(claude, via):
    claude.upstream.script(cut_after_chunks=3, chunk_delay_ms=10)
    seen: list[str] = []
    with pytest.raises(anthropic.APIError) as caught:
        for event in claude.anthropic().messages.create(model=via.model, max_tokens=64, messages=MSG, stream=True):
            seen.append(event.type)
    assert seen[0] == "message_start"
    assert "message_stop" not in seen
    request_id = caught.value.body["request_id"]
    assert claude.row(request_id).billing_result == "failed_but_billable"


# --- 8. the OpenAI SDK on the Claude route (Chat ↔ Messages) ---------------------------------------


def test_openai_sdk_chat_on_the_claude_route(claude):
    claude.upstream.script(tokens={"prompt": 12, "completion": 8})
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello from Openbili"}]
    raw = claude.openai().chat.completions.with_raw_response.create(model=CLAUDE, messages=messages)
    completion = raw.parse()
    # then a chat.completion in OpenAI's shape, with Anthropic's usage in OpenAI's convention
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 8)
    assert completion.usage.total_tokens == 20
    # and the upstream received a valid Anthropic body: system hoisted, max_tokens defaulted
    (sent,) = claude.upstream.requests
    assert sent["path"] == "/v1/messages"
    upstream_body = sent["json"]
    assert set(upstream_body) <= ANTHROPIC_REQUEST_KEYS
    assert upstream_body["model"] == "claude-up"
    assert upstream_body["max_tokens"] == 64_000
    assert upstream_body["system"] == "You are terse."
    assert upstream_body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello from Openbili"}]}]
    assert upstream_body.get("stream") in (None, False)
    assert sent["headers"]["x-api-key"] == UPSTREAM_SECRET
    assert sent["headers"]["anthropic-version"] == DEFAULT_VERSION
    assert claude.secret not in json.dumps(sent["headers"])
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(
        claude,
        request_id,
        billing_result="billed",
        status=200,
        cost=ANTHROPIC_ROUTE.cost(input_tokens=12, output_tokens=8),
    )
    assert_route_fields(row, ANTHROPIC_ROUTE, endpoint="/v1/chat/completions")
    assert (row.max_tokens_requested, row.max_tokens_applied) == (None, None)
    assert attempts_of(row) == [(1, 200, "")]


def test_openai_sdk_chat_on_the_claude_route_counts_cache_inside_prompt_tokens(claude):
    claude.upstream.script(tokens={"prompt": 10, "completion": 5, "cache_read": 7, "cache_creation": 3})
    raw = claude.openai().chat.completions.with_raw_response.create(model=CLAUDE, messages=MSG)
    usage = raw.parse().usage
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens, usage.completion_tokens) == (20, 7, 5)
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(claude, request_id, billing_result="billed", status=200, cost=Decimal("0.00011835"))
    assert (row.input_tokens, row.cached_input_tokens, row.cache_write_tokens, row.output_tokens) == (10, 7, 3, 5)


@pytest.mark.parametrize("include_usage", [False, True], ids=["without-usage", "with-usage"])
def test_openai_sdk_stream_on_the_claude_route(claude, include_usage):
    claude.upstream.script(tokens={"prompt": 12, "completion": 8})
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = claude.openai().chat.completions.with_raw_response.create(model=CLAUDE, messages=MSG, stream=True, **extra)
    chunks = list(raw.parse())
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == "stop"
    if include_usage:
        # the usage chunk comes last, with no choices, only because the client asked
        assert chunks[-1].choices == []
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (12, 8)
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.choices for c in chunks)
        assert all(c.usage is None for c in chunks)
    sent = claude.upstream.requests[-1]["json"]
    assert sent["stream"] is True
    assert set(sent) <= ANTHROPIC_REQUEST_KEYS  # no stream_options: Anthropic streams always carry usage
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(
        claude,
        request_id,
        billing_result="billed",
        status=200,
        cost=ANTHROPIC_ROUTE.cost(input_tokens=12, output_tokens=8),
    )
    assert (row.stream, row.tokens_estimated, row.input_tokens, row.output_tokens) == (True, False, 12, 8)
    assert_route_fields(row, ANTHROPIC_ROUTE, endpoint="/v1/chat/completions")


def test_openai_sdk_stream_cut_on_the_claude_route_raises_and_is_failed_but_billable(claude):
    claude.upstream.script(cut_after_chunks=3, chunk_delay_ms=10)
    raw = claude.openai().chat.completions.with_raw_response.create(model=CLAUDE, messages=MSG, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in raw.parse():
            received.append(chunk)
    # then the SDK was told by an OpenAI-format error event (never [DONE]) and raised
    assert type(caught.value) is openai.APIError
    assert caught.value.body["code"] == "upstream_stream_interrupted"
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == "Hello from the"
    request_id, trace_id = assert_ids(raw.headers)
    assert (caught.value.body["request_id"], caught.value.body["trace_id"]) == (request_id, trace_id)
    row = claude.row(request_id)
    assert (row.tokens_estimated, row.output_reached_client) == (True, True)
    assert row.output_tokens == math.ceil(len(text.encode()) / 4)
    assert_outcome(
        claude,
        request_id,
        billing_result="failed_but_billable",
        status=200,
        cost=ANTHROPIC_ROUTE.cost(input_tokens=row.input_tokens, output_tokens=row.output_tokens),
        error_class="stream_interrupted",
        error_code="upstream_stream_interrupted",
    )
    assert_route_fields(row, ANTHROPIC_ROUTE, endpoint="/v1/chat/completions")


def test_openai_sdk_tool_call_round_trip_on_the_claude_route(claude):
    client = claude.openai()
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Weather in Paris?"}]
    # given the model asks for the weather tool
    claude.upstream.script(tool_call=WEATHER_CALL, tokens={"prompt": 20, "completion": 6})
    first_raw = client.chat.completions.with_raw_response.create(model=CLAUDE, messages=messages, tools=CHAT_TOOLS)
    first = first_raw.parse()
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert (call.type, call.function.name) == ("function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id
    sent = claude.upstream.requests[-1]["json"]
    assert set(sent) <= ANTHROPIC_REQUEST_KEYS
    assert (sent["model"], sent["max_tokens"], sent["system"]) == ("claude-up", 64_000, "You are terse.")
    assert sent["tools"] == TOOLS
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}]
    # when the client answers with the tool's result
    claude.upstream.script(tokens={"prompt": 30, "completion": 8})
    followup = [
        *messages,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
    ]
    second_raw = client.chat.completions.with_raw_response.create(model=CLAUDE, messages=followup, tools=CHAT_TOOLS)
    second = second_raw.parse()
    assert second.choices[0].message.content == TEXT
    assert second.choices[0].finish_reason == "stop"
    # then the upstream received tool_use and tool_result blocks, in alternating turns
    sent = claude.upstream.requests[-1]["json"]
    assert set(sent) <= ANTHROPIC_REQUEST_KEYS
    assert (sent["max_tokens"], sent["system"]) == (64_000, "You are terse.")
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "Paris"}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees and sunny"}],
        },
    ]
    # and both turns were billed exactly
    first_cost = ANTHROPIC_ROUTE.cost(input_tokens=20, output_tokens=6)
    second_cost = ANTHROPIC_ROUTE.cost(input_tokens=30, output_tokens=8)
    assert first_cost + second_cost == Decimal("0.00036")
    first_id, _ = assert_ids(first_raw.headers)
    second_id, _ = assert_ids(second_raw.headers)
    for request_id, cost in ((first_id, first_cost), (second_id, second_cost)):
        assert_outcome(
            claude, request_id, billing_result="billed", status=200, cost=cost, spent=first_cost + second_cost
        )


def test_openai_sdk_streamed_tool_call_on_the_claude_route(claude):
    claude.upstream.script(tool_call=WEATHER_CALL, tokens={"prompt": 20, "completion": 6})
    raw = claude.openai().chat.completions.with_raw_response.create(
        model=CLAUDE, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=CHAT_TOOLS, stream=True
    )
    chunks = list(raw.parse())
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "get_weather"
    assert {call.index for call in calls} == {0}
    assert json.loads("".join(call.function.arguments or "" for call in calls)) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    request_id, _ = assert_ids(raw.headers)
    assert_outcome(
        claude,
        request_id,
        billing_result="billed",
        status=200,
        cost=ANTHROPIC_ROUTE.cost(input_tokens=20, output_tokens=6),
    )


# --- 9. max_tokens clamp ---------------------------------------------------------------------------


@BOTH_ROUTES
def test_max_tokens_above_the_model_limit_is_clamped_not_rejected(claude, via):
    claude.upstream.script(tokens={"prompt": 12, "completion": 8})
    # (an explicit timeout: the SDK refuses a non-stream call it expects to take over 10 minutes)
    raw = claude.anthropic().messages.with_raw_response.create(
        model=via.model, max_tokens=10**9, messages=MSG, timeout=20
    )
    assert raw.parse().content[0].text == TEXT
    limit = {ANTHROPIC_ROUTE: 64_000, OPENAI_ROUTE: 128_000}[via]
    sent = claude.upstream.requests[-1]["json"]
    if via is ANTHROPIC_ROUTE:
        assert sent["max_tokens"] == limit
    else:
        assert sent["max_completion_tokens"] == limit
        assert "max_tokens" not in sent
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(
        claude, request_id, billing_result="billed", status=200, cost=via.cost(input_tokens=12, output_tokens=8)
    )
    assert (row.max_tokens_requested, row.max_tokens_applied) == (10**9, limit)


def test_thinking_budget_stays_below_the_clamped_max_tokens(claude):
    claude.anthropic().messages.create(
        model=CLAUDE,
        max_tokens=10**9,
        messages=MSG,
        thinking={"type": "enabled", "budget_tokens": 10**9},
        timeout=20,
    )
    sent = claude.upstream.requests[-1]["json"]
    assert (sent["max_tokens"], sent["thinking"]) == (64_000, {"type": "enabled", "budget_tokens": 63_999})


def test_balance_is_the_ledger_sum_after_a_mixed_session(claude):
    # given a billed call, a free count, a rejection and a billed stream on the same account
    client = claude.anthropic()
    claude.upstream.script(tokens={"prompt": 12, "completion": 8})
    client.messages.create(model=CLAUDE, max_tokens=64, messages=MSG)
    client.messages.count_tokens(model=CLAUDE, messages=MSG)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-imaginary-9", max_tokens=64, messages=MSG)
    claude.upstream.script(tokens={"prompt": 12, "completion": 8})
    with client.messages.stream(model="gpt-5", max_tokens=64, messages=MSG) as stream:
        headers = stream.response.headers
        stream.get_final_message()
    claude.row(headers["x-request-id"])  # the stream's row is settled
    spent = ANTHROPIC_ROUTE.cost(input_tokens=12, output_tokens=8) + OPENAI_ROUTE.cost(input_tokens=12, output_tokens=8)
    assert spent == Decimal("0.000251")
    account = assert_ledger(claude.account.pk, spent=spent)
    assert account.balance == START_CREDIT - Decimal("0.000251")


def test_the_anthropic_sdk_sees_the_request_id_on_answers_and_errors(claude):
    # given the SDK, which reads Anthropic's `request-id` header into `.request_id`
    client = claude.anthropic()
    # when a request succeeds, then its message carries the usage row's request id
    raw = client.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    message = raw.parse()
    assert message._request_id == raw.headers["x-request-id"] == raw.headers["request-id"]
    assert claude.row(message._request_id).billing_result == "billed"
    # and when it fails, the exception carries it too
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.request_id == caught.value.response.headers["x-request-id"]
    assert claude.row(caught.value.request_id).error_code == "model_not_found"
