"""Every way a /v1/responses and a /v1/images request can end (CONTRACT §2.2, §3), as
test_outcomes.py proves it for chat and messages.

Routes: /v1/responses on gpt-5 (OpenAI route: pass-through), on Claude (Anthropic route) and on a
Gemini chat model (Gemini route), both translated; /v1/images/generations on gpt-image (OpenAI
route) and a Gemini image model, /v1/images/edits on gpt-image. For each outcome: what the client
sees (status, the openai SDK's exception class, the error in OpenAI's format with the request's
ids), exactly one finished usage row for the account with its tokens, exact cost, billing result
and attempts, the hold resolved and the balance equal to the ledger sum.
"""

from __future__ import annotations

import base64
import json
import math
import socket
from decimal import Decimal

import httpx
import openai
import pytest

from billing import money
from openbili.fake_upstream.server import PNG_B64
from tests.factories import CatalogModelFactory, make_visible_model
from tests.gateway.support import assert_ids, assert_sdk_error, sse_events, wait_until
from tests.gateway.test_outcomes import (
    COST,
    REPLY,
    TOKENS,
    assert_row,
    disconnect_notices,
    estimate,
    pending_request_id,
    read_until,
    request_id_in,
)
from tests.gateway_fixtures import CLAUDE, CLAUDE_PRICES, GPT_PRICES
from usage.models import UsageRecord

HELLO = "Hello from Openbili"
RESPONSES = "/v1/responses"

# --- /v1/responses: the routes -----------------------------------------------------------------------

GEMINI = "gemini-2.5-flash"
GEMINI_PRICES = {"input_per_mtok": Decimal("0.30"), "output_per_mtok": Decimal("2.50")}
PRICES = {
    "gpt-5": money.Prices(**GPT_PRICES),
    CLAUDE: money.Prices(**CLAUDE_PRICES),
    GEMINI: money.Prices(**GEMINI_PRICES),
}
PROVIDER = {"gpt-5": "openai", CLAUDE: "anthropic", GEMINI: "gemini"}
# 100 input + 8 output tokens: gpt-5 at $1.25/$10, claude at $3/$15, gemini at $0.30/$2.50 per 1M.
COSTS = COST | {GEMINI: Decimal("0.00005")}
# An error body with usage: the fake upstream counts the input's 3 words ("Hello from Openbili").
# Gemini's error body (google.rpc.Status) has no usage: a Gemini route has no such outcome.
ERROR_USAGE_COST = {"gpt-5": Decimal("0.00000375"), CLAUDE: Decimal("0.000009")}

MODELS = [
    pytest.param("gpt-5", id="openai-passthrough"),
    pytest.param(CLAUDE, id="anthropic-translated"),
    pytest.param(GEMINI, id="gemini-translated"),
]
STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
# Failures before any byte reached the client take the same path whether the client asked for a
# stream or not: each route once, and the other way round for the next outcome.
MIXED = [
    pytest.param("gpt-5", False, id="openai-passthrough-whole"),
    pytest.param(CLAUDE, True, id="anthropic-translated-stream"),
    pytest.param(GEMINI, False, id="gemini-translated-whole"),
]
MIXED_OTHER = [
    pytest.param("gpt-5", True, id="openai-passthrough-stream"),
    pytest.param(CLAUDE, False, id="anthropic-translated-whole"),
    pytest.param(GEMINI, True, id="gemini-translated-stream"),
]
SDK_ERRORS = {
    400: openai.BadRequestError,
    429: openai.RateLimitError,
    500: openai.InternalServerError,
    502: openai.InternalServerError,
}


@pytest.fixture
def routes(claude):
    """gpt-5 on an OpenAI route, Claude on an Anthropic route and a Gemini model on a Gemini route
    (as in test_responses.py)."""
    model = CatalogModelFactory(name=GEMINI, owned_by="google", context_window=1_048_576, max_output_tokens=65_536)
    make_visible_model(
        model, prices=GEMINI_PRICES, base_url=claude.upstream.url, provider="gemini", upstream_model="gemini-up"
    )
    claude.refresh()
    return claude


def upstream_path(model: str, *, stream: bool) -> str:
    if model == GEMINI:
        return "/v1beta/models/gemini-up:" + ("streamGenerateContent" if stream else "generateContent")
    return {"gpt-5": "/v1/responses", CLAUDE: "/v1/messages"}[model]


def assert_upstream_called(gateway, model: str, times: int, *, stream: bool) -> None:
    """The upstream was called `times` times, each in the route's own wire format."""
    requests = gateway.upstream.requests
    assert [r["path"] for r in requests] == [upstream_path(model, stream=stream)] * times
    if model != GEMINI:  # Gemini names the model in the URL
        upstream_model = "claude-up" if model == CLAUDE else model
        assert all(r["json"]["model"] == upstream_model for r in requests)


def cost_of(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    return money.usage_cost(PRICES[model], money.TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens))


def responses_body(model: str, *, stream: bool) -> bytes:
    return json.dumps({"model": model, "input": HELLO, "stream": stream}).encode()


def post_responses(gateway, model: str, *, stream: bool) -> tuple[httpx.Response, bytes]:
    """A raw request (its exact bytes are what the gateway's estimates count)."""
    raw = responses_body(model, stream=stream)
    return gateway.post(RESPONSES, content=raw, headers={"Content-Type": "application/json"}), raw


def assert_one_row(gateway, request_id: str, model: str, *, endpoint: str = RESPONSES, **expected) -> UsageRecord:
    """The account's one usage row is this request's, finished as expected (test_outcomes.assert_row)."""
    row = assert_row(gateway, request_id, model, **expected)
    assert UsageRecord.objects.filter(account_id=gateway.account.pk).count() == 1
    assert row.endpoint == endpoint
    return row


def sdk_failure(gateway, model: str, *, stream: bool, status: int, code: str) -> tuple[str, openai.APIStatusError]:
    """The SDK raises its class for `status`, from our OpenAI-format body. Returns (request id, exception)."""
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.openai().responses.create(model=model, input=HELLO, stream=stream)
    assert type(caught.value) is SDK_ERRORS[status]
    return assert_sdk_error(caught.value, status=status, code=code), caught.value


def streamed_text(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def assert_success(gateway, model: str, *, stream: bool) -> str:
    """The whole reply reached the client (a stream ends with response.completed, once, carrying
    the usage). Returns the request id."""
    client = gateway.openai()
    if not stream:
        raw = client.responses.with_raw_response.create(model=model, input=HELLO)
        response = raw.parse()
        assert (response.status, response.output_text) == ("completed", REPLY)
        assert (response.usage.input_tokens, response.usage.output_tokens) == (100, 8)
        return assert_ids(raw.headers)[0]
    raw = client.responses.with_raw_response.create(model=model, input=HELLO, stream=True)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = list(raw.parse())
    types = [e.type for e in events]
    assert streamed_text(events) == REPLY
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert types.count("response.completed") == 1
    assert {"error", "response.failed", "response.incomplete"}.isdisjoint(types)
    final = events[-1].response
    assert (final.status, final.usage.input_tokens, final.usage.output_tokens) == ("completed", 100, 8)
    return assert_ids(raw.headers)[0]


def failed_stream(gateway, model: str, *, code: str, **create) -> tuple[str, list]:
    """A stream that failed after it began: 200, the SDK raises APIError on its last event (our
    `error` event, with the request's ids), after a `response.failed`; never response.completed.
    Returns (request id, the events the SDK yielded before it raised)."""
    raw = gateway.openai().responses.with_raw_response.create(model=model, input=HELLO, stream=True, **create)
    assert raw.status_code == 200
    request_id, trace_id = assert_ids(raw.headers)
    events = []
    with pytest.raises(openai.APIError) as caught:
        events.extend(raw.parse())
    assert not isinstance(caught.value, openai.APIStatusError)  # raised from the stream, not a status
    error = caught.value.body
    assert set(error) == {"message", "type", "code", "param", "request_id", "trace_id"}
    assert (error["code"], error["request_id"], error["trace_id"]) == (code, request_id, trace_id)
    types = [e.type for e in events]
    assert types[-1] == "response.failed"
    assert "response.completed" not in types and "response.incomplete" not in types
    failed = events[-1].response
    assert (failed.status, failed.error.code) == ("failed", code)
    return request_id, events[:-1]


# --- raw sockets, for clients that go away -------------------------------------------------------


def open_request(gateway, path: str, raw: bytes, content_type: str = "application/json") -> socket.socket:
    host, port = gateway.url.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {gateway.secret}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(raw)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head + raw)
    return sock


# === 1. /v1/responses =================================================================================


@STREAMS
@pytest.mark.parametrize("model", MODELS)
def test_response_success_is_billed_for_the_reported_usage(routes, model, stream):
    # given an upstream that reports 100 input and 8 output tokens
    routes.upstream.script(tokens=TOKENS)
    # when the customer calls
    request_id = assert_success(routes, model, stream=stream)
    # then it is billed exactly that, once, after one attempt
    row = assert_one_row(
        routes,
        request_id,
        model,
        billing_result="billed",
        status=200,
        tokens=(100, 8),
        cost=COSTS[model],
        attempts=[(1, 200, "")],
        output_reached=True,
    )
    assert COSTS[model] == cost_of(model, 100, 8)
    assert (row.stream, row.provider, row.error_message) == (stream, PROVIDER[model], "")
    assert_upstream_called(routes, model, 1, stream=stream)


@pytest.mark.parametrize(("model", "stream"), MIXED)
def test_response_upstream_400_is_the_clients_error_and_is_not_retried(routes, model, stream):
    routes.upstream.script(status=400, message="temperature: out of range")
    request_id, exc = sdk_failure(routes, model, stream=stream, status=400, code="invalid_request")
    assert "temperature: out of range" in exc.message
    assert_one_row(
        routes,
        request_id,
        model,
        billing_result="not_billed",
        status=400,
        error_class="invalid_request",
        error_code="invalid_request",
        attempts=[(1, 400, "invalid_request")],
    )
    assert_upstream_called(routes, model, 1, stream=stream)


@pytest.mark.parametrize(("model", "stream"), MIXED_OTHER)
def test_response_upstream_5xx_then_success_is_retried_and_billed_once(routes, model, stream):
    routes.upstream.script(status=500)
    routes.upstream.script(tokens=TOKENS)
    request_id = assert_success(routes, model, stream=stream)
    assert_one_row(
        routes,
        request_id,
        model,
        billing_result="billed",
        status=200,
        tokens=(100, 8),
        cost=COSTS[model],
        attempts=[(1, 500, "upstream_error"), (2, 200, "")],
        output_reached=True,
    )
    assert_upstream_called(routes, model, 2, stream=stream)


@pytest.mark.parametrize(("model", "stream"), MIXED)
def test_response_upstream_5xx_twice_is_502_after_one_retry(routes, model, stream):
    routes.upstream.script(status=500, times=2)
    request_id, _ = sdk_failure(routes, model, stream=stream, status=502, code="upstream_error")
    assert_one_row(
        routes,
        request_id,
        model,
        billing_result="not_billed",
        status=502,
        error_class="upstream_or_platform_error",
        error_code="upstream_error",
        attempts=[(1, 500, "upstream_error"), (2, 500, "upstream_error")],
    )
    assert_upstream_called(routes, model, 2, stream=stream)


@pytest.mark.parametrize(("model", "stream"), MIXED_OTHER)
def test_response_upstream_429_is_passed_on_with_its_retry_after_and_not_retried(routes, model, stream):
    routes.upstream.script(status=429, retry_after=7)
    request_id, exc = sdk_failure(routes, model, stream=stream, status=429, code="upstream_rate_limited")
    headers = exc.response.headers
    assert headers["retry-after"] == "7"
    for name in ("requests", "tokens"):
        for part in ("limit", "remaining", "reset"):
            assert f"x-ratelimit-{part}-{name}" in headers
    assert_one_row(
        routes,
        request_id,
        model,
        billing_result="not_billed",
        status=429,
        error_class="quota_or_rate_limit",
        error_code="upstream_rate_limited",
        attempts=[(1, 429, "upstream_rate_limited")],
    )
    assert_upstream_called(routes, model, 1, stream=stream)


@pytest.mark.parametrize(("model", "stream"), [MIXED[0], MIXED[1]])
def test_response_error_body_with_usage_is_failed_but_billable_for_the_reported_tokens(routes, model, stream):
    # given an upstream that fails twice with a 500 whose body reports the input it read (3 tokens)
    routes.upstream.script(status=500, usage=True, times=2)
    request_id, _ = sdk_failure(routes, model, stream=stream, status=502, code="upstream_error")
    assert_one_row(
        routes,
        request_id,
        model,
        billing_result="failed_but_billable",
        status=502,
        tokens=(3, 0),
        cost=ERROR_USAGE_COST[model],
        error_class="upstream_or_platform_error",
        error_code="upstream_error",
        attempts=[(1, 500, "upstream_error"), (2, 500, "upstream_error")],
    )
    assert ERROR_USAGE_COST[model] == cost_of(model, 3, 0)


def test_response_gemini_error_body_carries_no_usage_and_is_not_billed(routes):
    # the fake upstream adds a usage to Gemini's error body; Gemini's format has none, so it is ignored
    routes.upstream.script(status=500, usage=True, times=2)
    request_id, _ = sdk_failure(routes, GEMINI, stream=False, status=502, code="upstream_error")
    assert_one_row(
        routes,
        request_id,
        GEMINI,
        billing_result="not_billed",
        status=502,
        error_class="upstream_or_platform_error",
        error_code="upstream_error",
        attempts=[(1, 500, "upstream_error"), (2, 500, "upstream_error")],
    )


@pytest.mark.parametrize("model", MODELS)
def test_response_stream_cut_after_output_is_failed_but_billable(routes, model):
    # given an upstream that reports no usage and drops the connection after three pieces
    routes.upstream.script(cut_after_chunks=3, chunk_delay_ms=5, no_usage=True)
    request_id, events = failed_stream(routes, model, code="upstream_stream_interrupted")
    # then the client got the three pieces, then response.failed and an error event
    text = streamed_text(events)
    assert text == "Hello from the"
    # and the tokens streamed so far are estimated and billed (the input from the SDK's request
    # bytes: the next test pins it from a request of known bytes)
    row = routes.row(request_id)
    tokens = (row.input_tokens, math.ceil(len(text) / 4))
    assert tokens[1] == 4 and row.input_tokens > 0
    row = assert_one_row(
        routes,
        request_id,
        model,
        billing_result="failed_but_billable",
        status=200,
        tokens=tokens,
        cost=cost_of(model, *tokens),
        error_class="stream_interrupted",
        error_code="upstream_stream_interrupted",
        attempts=[(1, 200, "")],
        estimated=True,
        output_reached=True,
    )
    assert row.started_at <= row.first_byte_at <= row.finished_at
    assert_upstream_called(routes, model, 1, stream=True)  # never retried once streaming began


@pytest.mark.parametrize("model", MODELS)
def test_response_stream_cut_bills_the_input_estimated_from_the_request(routes, model):
    # the same cut, with the raw request: its exact bytes are what the input estimate counts
    routes.upstream.script(cut_after_chunks=3, chunk_delay_ms=5, no_usage=True)
    response, raw = post_responses(routes, model, stream=True)
    assert response.status_code == 200
    request_id, trace_id = assert_ids(response.headers)
    events = sse_events(response.content)
    names = [name for name, _ in events]
    assert names[-2:] == ["response.failed", "error"] and "response.completed" not in names
    error = json.loads(events[-1][1])
    assert (error["type"], error["code"]) == ("error", "upstream_stream_interrupted")
    assert (error["error"]["request_id"], error["error"]["trace_id"]) == (request_id, trace_id)
    tokens = estimate(raw, "Hello from the")
    assert_one_row(
        routes,
        request_id,
        model,
        billing_result="failed_but_billable",
        status=200,
        tokens=tokens,
        cost=cost_of(model, *tokens),
        error_class="stream_interrupted",
        error_code="upstream_stream_interrupted",
        attempts=[(1, 200, "")],
        estimated=True,
        output_reached=True,
    )


@pytest.mark.parametrize("model", MODELS)
def test_response_failed_names_the_streams_own_response(routes, model):
    routes.upstream.script(cut_after_chunks=3, chunk_delay_ms=5, no_usage=True)
    response, _ = post_responses(routes, model, stream=True)
    events = {name: json.loads(data) for name, data in sse_events(response.content)}
    created, failed = events["response.created"]["response"], events["response.failed"]["response"]
    assert failed["id"] == created["id"]


@pytest.mark.parametrize("model", MODELS)
def test_response_upstream_error_event_mid_stream_is_failed_but_billable(routes, model):
    # given an upstream that streams two pieces, then an error event in its own format
    routes.upstream.script(status=500, error_after_chunks=2, chunk_delay_ms=5, no_usage=True, message="overloaded")
    response, raw = post_responses(routes, model, stream=True)
    assert response.status_code == 200
    request_id, trace_id = assert_ids(response.headers)
    events = sse_events(response.content)
    names = [name for name, _ in events]
    # then the client's stream ends with response.failed and our error event, never completed
    assert names[-2:] == ["response.failed", "error"] and "response.completed" not in names
    assert names.count("error") == 1  # the upstream's own error event is not forwarded: ours replaces it
    error = json.loads(events[-1][1])
    assert (error["code"], error["error"]["code"]) == ("upstream_stream_interrupted", "upstream_stream_interrupted")
    assert (error["error"]["request_id"], error["error"]["trace_id"]) == (request_id, trace_id)
    text = "".join(json.loads(d).get("delta", "") for n, d in events if n == "response.output_text.delta")
    assert text == "Hello from"
    tokens = estimate(raw, text)
    row = assert_one_row(
        routes,
        request_id,
        model,
        billing_result="failed_but_billable",
        status=200,
        tokens=tokens,
        cost=cost_of(model, *tokens),
        error_class="stream_interrupted",
        error_code="upstream_stream_interrupted",
        attempts=[(1, 200, "")],
        estimated=True,
        output_reached=True,
    )
    assert "overloaded" in row.error_message  # the upstream's own words are kept on the row
    assert_upstream_called(routes, model, 1, stream=True)


@pytest.mark.parametrize("model", MODELS)
def test_response_client_disconnect_mid_stream_is_failed_but_billable(routes, model):
    # given an upstream still streaming (150 ms a piece, eight pieces: 1.2 s) that reports no usage
    routes.upstream.script(chunk_delay_ms=150, no_usage=True)
    raw = responses_body(model, stream=True)
    # when the client reads the first piece and closes the connection
    with open_request(routes, RESPONSES, raw) as sock:
        received = read_until(sock, b"response.output_text.delta")
    request_id = request_id_in(received)
    # then the row records the disconnect, and what was streamed is billed at the estimate
    row = routes.row(request_id)
    assert row.input_tokens == math.ceil(len(raw) / 4)
    assert 2 <= row.output_tokens < math.ceil(len(REPLY) / 4)
    tokens = (row.input_tokens, row.output_tokens)
    row = assert_one_row(
        routes,
        request_id,
        model,
        billing_result="failed_but_billable",
        status=200,
        tokens=tokens,
        cost=cost_of(model, *tokens),
        error_class="stream_interrupted",
        error_code="client_disconnected",
        attempts=[(1, 200, "")],
        estimated=True,
        output_reached=True,
        disconnected=True,
    )
    assert row.started_at <= row.client_disconnected_at <= row.finished_at
    assert (row.finished_at - row.started_at).total_seconds() < 0.9  # stopped relaying: not the whole 1.2 s


@pytest.mark.parametrize("model", MODELS)
def test_response_client_gone_while_the_upstream_works_is_billed_for_the_reported_usage(routes, monkeypatch, model):
    # given an upstream that holds its answer (100 in, 8 out) until the test opens the gate
    noticed = disconnect_notices(monkeypatch)
    routes.upstream.script(gate="answer", tokens=TOKENS)
    with open_request(routes, RESPONSES, responses_body(model, stream=False)):
        wait_until(lambda: routes.upstream.waiting_at("answer") == 1, what="the upstream call", timeout=10)
        request_id = pending_request_id(routes)
    # when the client has gone away (noticed by the gateway) and then the upstream answers
    wait_until(noticed.is_set, what="the gateway noticing the disconnect", timeout=10)
    routes.upstream.open_gate("answer")
    # then nothing reached the client, but what the upstream consumed is billed
    row = assert_one_row(
        routes,
        request_id,
        model,
        billing_result="failed_but_billable",
        status=200,  # what the gateway had to answer; nobody was left to receive it
        tokens=(100, 8),
        cost=COSTS[model],
        error_class="stream_interrupted",
        error_code="client_disconnected",
        attempts=[(1, 200, "")],
        output_reached=False,
        disconnected=True,
    )
    assert row.first_byte_at is None
    assert row.started_at <= row.client_disconnected_at <= row.finished_at


@STREAMS
@pytest.mark.parametrize("model", MODELS)
def test_response_without_usage_is_billed_at_the_estimate(routes, model, stream):
    # given an upstream that reports no usage at all
    routes.upstream.script(no_usage=True)
    response, raw = post_responses(routes, model, stream=stream)
    assert response.status_code == 200, response.text
    if stream:
        events = sse_events(response.content)
        names = [name for name, _ in events]
        assert names[-1] == "response.completed" and names.count("response.completed") == 1
        assert "error" not in names and "response.failed" not in names
        text = "".join(json.loads(d)["delta"] for n, d in events if n == "response.output_text.delta")
    else:
        body = response.json()
        assert body["status"] == "completed"
        text = "".join(p["text"] for item in body["output"] for p in item.get("content") or ())
    assert text == REPLY
    # then the request's bytes and the text generated are estimated (about 4 bytes a token) and billed
    tokens = estimate(raw, REPLY)
    assert tokens[1] == 10
    assert_one_row(
        routes,
        assert_ids(response.headers)[0],
        model,
        billing_result="billed",
        status=200,
        tokens=tokens,
        cost=cost_of(model, *tokens),
        attempts=[(1, 200, "")],
        estimated=True,
        output_reached=True,
    )


# === 2. /v1/images ======================================================================================

PNG = base64.b64decode(PNG_B64)
GPT_IMAGE = "gpt-image-2"
GEMINI_IMAGE = "gemini-3.1-flash-image-preview"
GPT_IMAGE_PRICES = {"input_per_mtok": Decimal("5.00"), "per_image": Decimal("0.04")}
GEMINI_IMAGE_PRICES = {
    "input_per_mtok": Decimal("0.30"),
    "output_per_mtok": Decimal("2.50"),
    "per_image": Decimal("0.039"),
}
IMAGE_PRICES = {GPT_IMAGE: money.Prices(**GPT_IMAGE_PRICES), GEMINI_IMAGE: money.Prices(**GEMINI_IMAGE_PRICES)}
GENERATIONS, EDITS = "/v1/images/generations", "/v1/images/edits"

# (endpoint, model, n, the prompt tokens the upstream reports, the exact cost)
IMAGE_CASES = [
    # 12 × $5/M + 2 × $0.04
    pytest.param(GENERATIONS, GPT_IMAGE, 2, 12, Decimal("0.08006"), id="generations-gpt-image"),
    # 8 × $0.30/M + 1 × $0.039 (Gemini's image models paint one image a request)
    pytest.param(GENERATIONS, GEMINI_IMAGE, 1, 8, Decimal("0.0390024"), id="generations-gemini"),
    # 30 × $5/M + 2 × $0.04
    pytest.param(EDITS, GPT_IMAGE, 2, 30, Decimal("0.08015"), id="edits-gpt-image"),
]


@pytest.fixture
def images(gateway):
    """gpt-image on an OpenAI route and a Gemini image model on a Gemini route (as in test_images.py)."""
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


def image_upstream_path(path: str, model: str) -> str:
    if model == GEMINI_IMAGE:
        return "/v1beta/models/gemini-image-up:generateContent"
    return path


def image_sdk(gateway, path: str, model: str, n: int):
    """The openai SDK's call for the endpoint (with_raw_response: the headers carry the ids)."""
    images = gateway.openai().images.with_raw_response
    if path == GENERATIONS:
        return images.generate(model=model, prompt="A red fox", n=n)
    return images.edit(model=model, image=("fox.png", PNG, "image/png"), prompt="Make it blue", n=n)


def image_request(gateway, path: str, model: str, n: int) -> tuple[bytes, str]:
    """The request's bytes and content type, as the SDK would send them (for raw sockets)."""
    if path == GENERATIONS:
        return json.dumps({"model": model, "prompt": "A red fox", "n": n}).encode(), "application/json"
    request = httpx.Request(
        "POST",
        gateway.url + path,
        data={"model": model, "prompt": "Make it blue", "n": str(n)},
        files={"image": ("fox.png", PNG, "image/png")},
    )
    return request.read(), request.headers["content-type"]


def image_failure(gateway, path: str, model: str, n: int, *, status: int, code: str):
    with pytest.raises(openai.APIStatusError) as caught:
        image_sdk(gateway, path, model, n)
    assert type(caught.value) is SDK_ERRORS[status]
    return assert_sdk_error(caught.value, status=status, code=code), caught.value


def assert_image_row(gateway, request_id: str, path: str, model: str, *, images: int = 0, **expected) -> UsageRecord:
    row = assert_one_row(gateway, request_id, model, endpoint=path, **expected)
    assert row.image_count == images
    assert row.output_tokens == 0  # an image's own tokens are billed per image
    return row


def assert_image_upstream_called(gateway, path: str, model: str, times: int) -> None:
    assert [r["path"] for r in gateway.upstream.requests] == [image_upstream_path(path, model)] * times


@pytest.mark.parametrize(("path", "model", "n", "prompt", "cost"), IMAGE_CASES)
def test_image_success_is_billed_per_image_and_for_the_prompt(images, path, model, n, prompt, cost):
    # given an upstream that reports the prompt's tokens
    images.upstream.script(tokens={"prompt": prompt})
    raw = image_sdk(images, path, model, n)
    result = raw.parse()
    # then the client got n images, each behind a URL
    assert len(result.data) == n and all(item.url for item in result.data)
    # and is billed per image × n plus the prompt, exactly, once
    assert cost == money.usage_cost(IMAGE_PRICES[model], money.TokenUsage(input_tokens=prompt, images=n))
    row = assert_image_row(
        images,
        assert_ids(raw.headers)[0],
        path,
        model,
        images=n,
        billing_result="billed",
        status=200,
        tokens=(prompt, 0),
        cost=cost,
        attempts=[(1, 200, "")],
        output_reached=True,
    )
    assert row.stream is False
    assert_image_upstream_called(images, path, model, 1)


@pytest.mark.parametrize(("path", "model", "n", "prompt", "cost"), IMAGE_CASES)
def test_image_upstream_400_is_the_clients_error_and_is_not_retried(images, path, model, n, prompt, cost):
    images.upstream.script(status=400, message="Your prompt was rejected")
    request_id, exc = image_failure(images, path, model, n, status=400, code="invalid_request")
    assert "Your prompt was rejected" in exc.message
    assert_image_row(
        images,
        request_id,
        path,
        model,
        billing_result="not_billed",
        status=400,
        error_class="invalid_request",
        error_code="invalid_request",
        attempts=[(1, 400, "invalid_request")],
    )
    assert_image_upstream_called(images, path, model, 1)


@pytest.mark.parametrize(("path", "model", "n", "prompt", "cost"), IMAGE_CASES)
def test_image_upstream_5xx_twice_is_502_after_one_retry(images, path, model, n, prompt, cost):
    images.upstream.script(status=500, times=2)
    request_id, _ = image_failure(images, path, model, n, status=502, code="upstream_error")
    assert_image_row(
        images,
        request_id,
        path,
        model,
        billing_result="not_billed",
        status=502,
        error_class="upstream_or_platform_error",
        error_code="upstream_error",
        attempts=[(1, 500, "upstream_error"), (2, 500, "upstream_error")],
    )
    assert_image_upstream_called(images, path, model, 2)


@pytest.mark.parametrize(("path", "model", "n", "prompt", "cost"), IMAGE_CASES)
def test_image_upstream_429_is_passed_on_with_its_retry_after_and_not_retried(images, path, model, n, prompt, cost):
    images.upstream.script(status=429, retry_after=7)
    request_id, exc = image_failure(images, path, model, n, status=429, code="upstream_rate_limited")
    assert exc.response.headers["retry-after"] == "7"
    assert_image_row(
        images,
        request_id,
        path,
        model,
        billing_result="not_billed",
        status=429,
        error_class="quota_or_rate_limit",
        error_code="upstream_rate_limited",
        attempts=[(1, 429, "upstream_rate_limited")],
    )
    assert_image_upstream_called(images, path, model, 1)


@pytest.mark.parametrize(("path", "model", "n", "prompt", "cost"), IMAGE_CASES)
def test_image_client_gone_while_the_upstream_works_is_billed_for_the_images_made(
    images, monkeypatch, path, model, n, prompt, cost
):
    # given an upstream that holds its answer until the test opens the gate
    noticed = disconnect_notices(monkeypatch)
    images.upstream.script(gate="answer", tokens={"prompt": prompt})
    raw, content_type = image_request(images, path, model, n)
    with open_request(images, path, raw, content_type):
        wait_until(lambda: images.upstream.waiting_at("answer") == 1, what="the upstream call", timeout=10)
        request_id = pending_request_id(images)
    # when the client has gone away (noticed by the gateway) and then the upstream answers
    wait_until(noticed.is_set, what="the gateway noticing the disconnect", timeout=10)
    images.upstream.open_gate("answer")
    # then nothing reached the client, but the images the upstream made (and bills) are billed
    row = assert_image_row(
        images,
        request_id,
        path,
        model,
        images=n,
        billing_result="failed_but_billable",
        status=200,
        tokens=(prompt, 0),
        cost=cost,
        error_class="stream_interrupted",
        error_code="client_disconnected",
        attempts=[(1, 200, "")],
        output_reached=False,
        disconnected=True,
    )
    assert row.first_byte_at is None
    assert row.started_at <= row.client_disconnected_at <= row.finished_at


NO_USAGE_CASES = IMAGE_CASES


@pytest.mark.parametrize(("path", "model", "n", "prompt", "cost"), NO_USAGE_CASES)
def test_image_upstream_without_usage_still_counts_and_bills_the_images(images, path, model, n, prompt, cost):
    # given an upstream that answers its images but no usage
    images.upstream.script(no_usage=True)
    raw = image_sdk(images, path, model, n)
    assert len(raw.parse().data) == n
    request_id = assert_ids(raw.headers)[0]
    # then the images are counted from the answer and billed per image, with whatever input is known
    row = images.row(request_id)
    assert row.image_count == n
    expected = money.usage_cost(IMAGE_PRICES[model], money.TokenUsage(input_tokens=row.input_tokens, images=n))
    assert expected >= n * IMAGE_PRICES[model].per_image
    assert_image_row(
        images,
        request_id,
        path,
        model,
        images=n,
        billing_result="billed",
        status=200,
        tokens=(row.input_tokens, 0),
        cost=expected,
        attempts=[(1, 200, "")],
        estimated=row.tokens_estimated,
        output_reached=True,
    )
    # the prompt is estimated from its own bytes (about 4 a token; an edit's files are not its prompt)
    text = "A red fox" if path == GENERATIONS else "Make it blue"
    assert row.tokens_estimated and row.input_tokens == math.ceil(len(text.encode()) / 4)
