"""Every way a /v1 generating request can end (CONTRACT §2.2, §3), on both endpoints and both route kinds.

Route kinds: pass-through (the client's wire format is the upstream's: chat on gpt-5's OpenAI
route, messages on claude's Anthropic route) and translated (chat on claude, messages on gpt-5).
For each outcome: what the client sees (status, SDK exception, the error in the endpoint's own
format), exactly one finished usage row with its tokens, exact cost, billing result and attempts,
the hold resolved and the balance equal to the ledger sum.

Then: a hold never outlives an exception (usage/gateway/lifecycle.py) — failures injected at each
step after the reserve — and a handler task cancelled while it waits for the upstream. The gateway
runs in a thread of this process, so monkeypatching a module attribute reaches it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from billing import money, services
from billing.models import Hold, Route
from tests.gateway.support import (
    MSG,
    assert_error_body,
    assert_ids,
    assert_outcome,
    row_cost,
    sse_events,
    wait_until,
)
from tests.gateway_fixtures import CLAUDE, CLAUDE_PRICES, GPT_PRICES
from usage.gateway import lifecycle
from usage.gateway.providers import provider_for
from usage.gateway.translate import TRANSLATIONS
from usage.models import UsageRecord

PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages"}
WIRE = {"gpt-5": "chat", CLAUDE: "messages"}  # each model's upstream wire format
UPSTREAM_PATH = {"gpt-5": "/v1/chat/completions", CLAUDE: "/v1/messages"}
PROVIDER = {"gpt-5": "openai", CLAUDE: "anthropic"}
PRICES = {"gpt-5": money.Prices(**GPT_PRICES), CLAUDE: money.Prices(**CLAUDE_PRICES)}

ROUTES = [
    pytest.param("chat", "gpt-5", id="chat-passthrough"),
    pytest.param("chat", CLAUDE, id="chat-translated"),
    pytest.param("messages", CLAUDE, id="messages-passthrough"),
    pytest.param("messages", "gpt-5", id="messages-translated"),
]
PASS_THROUGH = [ROUTES[0], ROUTES[2]]
TRANSLATED = [ROUTES[1], ROUTES[3]]
STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
# Failures before any byte reached the client take the same path whether the client asked for a
# stream or not (a JSON error either way): each route once, streams and whole answers alternating,
# and the other way round for the next outcome, so that every (route, stream) pair is covered.
MIXED = [
    pytest.param("chat", "gpt-5", False, id="chat-passthrough-whole"),
    pytest.param("chat", CLAUDE, True, id="chat-translated-stream"),
    pytest.param("messages", CLAUDE, True, id="messages-passthrough-stream"),
    pytest.param("messages", "gpt-5", False, id="messages-translated-whole"),
]
MIXED_OTHER = [
    pytest.param("chat", "gpt-5", True, id="chat-passthrough-stream"),
    pytest.param("chat", CLAUDE, False, id="chat-translated-whole"),
    pytest.param("messages", CLAUDE, False, id="messages-passthrough-whole"),
    pytest.param("messages", "gpt-5", True, id="messages-translated-stream"),
]

REPLY = "Hello from the fake upstream. This is a"  # the fake upstream's default eight pieces
TOKENS = {"prompt": 100, "completion": 8}
# 100 input + 8 output tokens: gpt-5 at $1.25/$10 per 1M, claude at $3/$15 per 1M.
COST = {"gpt-5": Decimal("0.000205"), CLAUDE: Decimal("0.00042")}
# An error body with usage: the fake upstream counts the prompt's 3 words ("Hello from Openbili").
ERROR_USAGE_COST = {"gpt-5": Decimal("0.00000375"), CLAUDE: Decimal("0.000009")}

SDK_ERRORS = {
    "chat": {
        400: openai.BadRequestError,
        429: openai.RateLimitError,
        500: openai.InternalServerError,
        502: openai.InternalServerError,
        504: openai.InternalServerError,
    },
    "messages": {
        400: anthropic.BadRequestError,
        429: anthropic.RateLimitError,
        500: anthropic.InternalServerError,
        502: anthropic.InternalServerError,
        504: anthropic.GatewayTimeoutError,
    },
}
# Anthropic's error `type` per status (the SDK and Claude Code branch on it).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    504: "timeout_error",
}


# --- the client ------------------------------------------------------------------------------------


def request_body(fmt: str, model: str, *, stream: bool) -> bytes:
    body: dict = {"model": model, "messages": MSG, "stream": stream}
    if fmt == "messages":
        body["max_tokens"] = 1024  # required by the format
    return json.dumps(body).encode()


def post(gateway, fmt: str, model: str, *, stream: bool) -> tuple[httpx.Response, bytes]:
    """A raw request (its exact bytes are what the gateway's estimates count)."""
    raw = request_body(fmt, model, stream=stream)
    response = gateway.post(PATHS[fmt], content=raw, headers={"Content-Type": "application/json"})
    return response, raw


def sdk_create(gateway, fmt: str, model: str, *, stream: bool = False):
    """The endpoint's official SDK: OpenAI for chat, Anthropic for messages."""
    if fmt == "chat":
        return gateway.openai().chat.completions.with_raw_response.create(model=model, messages=MSG, stream=stream)
    return gateway.anthropic(timeout=20).messages.with_raw_response.create(
        model=model, max_tokens=1024, messages=MSG, stream=stream
    )


def has_text(fmt: str, event: dict) -> bool:
    """Whether a client-format stream event carries generated text."""
    if fmt == "chat":
        return any((choice.get("delta") or {}).get("content") for choice in event.get("choices") or ())
    return event.get("type") == "content_block_delta" and bool(event["delta"].get("text"))


def streamed_text(fmt: str, events: list[tuple[str, bytes]]) -> str:
    text = []
    for _, data in events:
        if not data or data == b"[DONE]":
            continue
        event = json.loads(data)
        if fmt == "chat":
            text += [(choice.get("delta") or {}).get("content") or "" for choice in event.get("choices") or ()]
        elif event.get("type") == "content_block_delta":
            text.append(event["delta"].get("text", ""))
    return "".join(text)


def assert_client_error(fmt: str, response, *, status: int, code: str) -> str:
    """The error body in the endpoint's own format, with the ids of the headers; returns the request id."""
    if fmt == "chat":
        return assert_error_body(response, status=status, code=code)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    request_id, trace_id = assert_ids(response.headers)
    body = json.loads(response.content)
    assert set(body) == {"type", "error", "request_id", "trace_id"}
    assert (body["type"], body["request_id"], body["trace_id"]) == ("error", request_id, trace_id)
    assert set(body["error"]) == {"type", "message", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == (ANTHROPIC_TYPES[status], code)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return request_id


def sdk_failure(gateway, fmt: str, model: str, *, stream: bool, status: int, code: str):
    """The SDK raises its exception class for `status`; the body is ours. Returns (request id, exception)."""
    base = openai.APIStatusError if fmt == "chat" else anthropic.APIStatusError
    with pytest.raises(base) as caught:
        sdk_create(gateway, fmt, model, stream=stream)
    assert type(caught.value) is SDK_ERRORS[fmt][status]
    assert caught.value.status_code == status
    return assert_client_error(fmt, caught.value.response, status=status, code=code), caught.value


def assert_success(gateway, fmt: str, model: str, *, stream: bool) -> str:
    """The whole reply reached the client, in its format (a stream ends with its terminator, once)."""
    if not stream:
        raw = sdk_create(gateway, fmt, model)
        reply = raw.parse()
        if fmt == "chat":
            assert reply.choices[0].message.content == REPLY
            assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (100, 8)
        else:
            assert reply.content[0].text == REPLY
            assert (reply.usage.input_tokens, reply.usage.output_tokens) == (100, 8)
        return assert_ids(raw.headers)[0]
    response, _ = post(gateway, fmt, model, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.content)
    assert streamed_text(fmt, events) == REPLY
    names = [name for name, _ in events]
    assert "error" not in names
    if fmt == "chat":
        assert [data for _, data in events].count(b"[DONE]") == 1
        assert events[-1] == ("", b"[DONE]")
        assert all(b'"error"' not in data for _, data in events)
    else:
        assert names.count("message_stop") == 1
        assert names[-1] == "message_stop"
    return assert_ids(response.headers)[0]


def assert_stream_error(fmt: str, response, *, code: str) -> tuple[str, list[tuple[str, bytes]]]:
    """A stream that failed after it began: 200, then an error event in the stream's own format
    with the request's ids as its last event, and never the terminator. Returns (request id, events)."""
    assert response.status_code == 200
    request_id, trace_id = assert_ids(response.headers)
    events = sse_events(response.content)
    name, data = events[-1]
    if fmt == "chat":
        assert name == ""
        error = json.loads(data)["error"]
        assert set(error) == {"message", "type", "code", "param", "request_id", "trace_id"}
        assert (error["code"], error["request_id"], error["trace_id"]) == (code, request_id, trace_id)
        assert b"[DONE]" not in [d for _, d in events]
    else:
        assert name == "error"
        body = json.loads(data)
        assert (body["type"], body["error"]["code"]) == ("error", code)
        assert (body["request_id"], body["trace_id"]) == (request_id, trace_id)
        assert "message_stop" not in [n for n, _ in events]
    return request_id, events[:-1]


# --- the row and the ledger ------------------------------------------------------------------------


def assert_row(
    gateway,
    request_id: str,
    model: str,
    *,
    billing_result: str,
    status: int,
    tokens: tuple[int, int] = (0, 0),
    cost: Decimal = Decimal(0),
    error_class: str = "",
    error_code: str = "",
    attempts: list[tuple] | None = None,
    estimated: bool = False,
    output_reached: bool = False,
    disconnected: bool = False,
) -> UsageRecord:
    """The request's one finished row, its exact tokens and cost, its hold resolved, the ledger whole."""
    row = assert_outcome(
        gateway,
        request_id,
        billing_result=billing_result,
        status=status,
        cost=cost,
        error_class=error_class,
        error_code=error_code,
    )
    assert (row.input_tokens, row.output_tokens, row.cached_input_tokens, row.cache_write_tokens) == (*tokens, 0, 0)
    assert row_cost(row) == row.cost_usd == cost
    assert row.tokens_estimated is estimated
    assert row.output_reached_client is output_reached
    assert (row.client_disconnected_at is not None) is disconnected
    assert row.model_requested == model
    assert row.started_at <= row.finished_at
    hold = Hold.objects.get(pk=row.hold_id)
    assert hold.state == (Hold.State.SETTLED if cost else Hold.State.RELEASED)
    assert (hold.settled_amount or 0) == cost
    if attempts is not None:
        assert [(a["attempt"], a["status"], a["error"]) for a in row.attempts] == attempts
    return row


def assert_upstream_called(gateway, model: str, times: int) -> None:
    """The upstream was called `times` times, each in the route's own wire format."""
    requests = gateway.upstream.requests
    assert [r["path"] for r in requests] == [UPSTREAM_PATH[model]] * times
    upstream_model = "claude-up" if model == CLAUDE else model
    assert all(r["json"]["model"] == upstream_model for r in requests)


def estimate(raw: bytes, text: str) -> tuple[int, int]:
    """The gateway's estimate when the upstream reported no usage: about 4 bytes a token, of the
    request body and of the text generated (not of the JSON around it)."""
    return math.ceil(len(raw) / 4), math.ceil(len(text.encode()) / 4)


def cost_of(model: str, input_tokens: int, output_tokens: int, **more: int) -> Decimal:
    return money.usage_cost(
        PRICES[model], money.TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens, **more)
    )


def slow_route(model: str, gateway) -> None:
    Route.objects.filter(model__name=model).update(timeout_seconds=1)
    gateway.refresh()


# --- raw sockets, for clients that go away -------------------------------------------------------


def open_request(gateway, fmt: str, raw: bytes) -> socket.socket:
    host, port = gateway.url.removeprefix("http://").split(":")
    head = (
        f"POST {PATHS[fmt]} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {gateway.secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head + raw)
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        data = sock.recv(65536)
        assert data, f"the gateway closed the connection before {marker!r}: {received!r}"
        received += data
    return received


def request_id_in(head: bytes) -> str:
    lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 200"), lines[0]
    return next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("x-request-id:"))


def pending_request_id(gateway) -> str:
    """The request in flight: reserved (its row pending, its hold open) before upstream was called."""
    row = UsageRecord.objects.get(account_id=gateway.account.pk)
    assert row.billing_result == "pending"
    assert Hold.objects.get(pk=row.hold_id).state == Hold.State.OPEN
    return row.request_id


# === 1. the outcome matrix ============================================================================


@STREAMS
@pytest.mark.parametrize(("fmt", "model"), ROUTES)
def test_success_is_billed_for_the_reported_usage(claude, fmt, model, stream):
    # given an upstream that reports 100 input and 8 output tokens
    claude.upstream.script(tokens=TOKENS)
    # when the customer calls
    request_id = assert_success(claude, fmt, model, stream=stream)
    # then it is billed exactly that, once, after one attempt
    row = assert_row(
        claude,
        request_id,
        model,
        billing_result="billed",
        status=200,
        tokens=(100, 8),
        cost=COST[model],
        attempts=[(1, 200, "")],
        output_reached=True,
    )
    assert (row.stream, row.endpoint, row.provider) == (stream, PATHS[fmt], PROVIDER[model])
    assert row.error_message == ""
    assert_upstream_called(claude, model, 1)


@pytest.mark.parametrize(("fmt", "model", "stream"), MIXED)
def test_upstream_400_is_the_clients_error_and_is_not_retried(claude, fmt, model, stream):
    claude.upstream.script(status=400, message="temperature: out of range")
    request_id, exc = sdk_failure(claude, fmt, model, stream=stream, status=400, code="invalid_request")
    assert "temperature: out of range" in exc.message
    assert_row(
        claude,
        request_id,
        model,
        billing_result="not_billed",
        status=400,
        error_class="invalid_request",
        error_code="invalid_request",
        attempts=[(1, 400, "invalid_request")],
    )
    assert_upstream_called(claude, model, 1)


@pytest.mark.parametrize(("fmt", "model", "stream"), MIXED_OTHER)
def test_upstream_5xx_then_success_is_retried_and_billed(claude, fmt, model, stream):
    claude.upstream.script(status=500)
    claude.upstream.script(tokens=TOKENS)
    request_id = assert_success(claude, fmt, model, stream=stream)
    assert_row(
        claude,
        request_id,
        model,
        billing_result="billed",
        status=200,
        tokens=(100, 8),
        cost=COST[model],
        attempts=[(1, 500, "upstream_error"), (2, 200, "")],
        output_reached=True,
    )
    assert_upstream_called(claude, model, 2)


@pytest.mark.parametrize(("fmt", "model", "stream"), MIXED)
def test_upstream_5xx_twice_is_502_after_one_retry(claude, fmt, model, stream):
    claude.upstream.script(status=500, times=2)
    request_id, _ = sdk_failure(claude, fmt, model, stream=stream, status=502, code="upstream_error")
    assert_row(
        claude,
        request_id,
        model,
        billing_result="not_billed",
        status=502,
        error_class="upstream_or_platform_error",
        error_code="upstream_error",
        attempts=[(1, 500, "upstream_error"), (2, 500, "upstream_error")],
    )
    assert_upstream_called(claude, model, 2)


@pytest.mark.parametrize(("fmt", "model", "stream"), MIXED_OTHER)
def test_upstream_429_is_passed_on_with_its_retry_after_and_not_retried(claude, fmt, model, stream):
    claude.upstream.script(status=429, retry_after=7)
    request_id, exc = sdk_failure(claude, fmt, model, stream=stream, status=429, code="upstream_rate_limited")
    headers = exc.response.headers
    assert headers["retry-after"] == "7"
    for name in ("requests", "tokens"):
        for part in ("limit", "remaining", "reset"):
            assert f"x-ratelimit-{part}-{name}" in headers
    assert_row(
        claude,
        request_id,
        model,
        billing_result="not_billed",
        status=429,
        error_class="quota_or_rate_limit",
        error_code="upstream_rate_limited",
        attempts=[(1, 429, "upstream_rate_limited")],
    )
    assert_upstream_called(claude, model, 1)


@pytest.mark.parametrize(("fmt", "model", "stream"), [MIXED[0], MIXED[2]])  # two: each waits 2 × 1 s
def test_upstream_timeout_is_504_after_one_retry(claude, fmt, model, stream):
    # given a route with a 1 s timeout and an upstream that never answers
    slow_route(model, claude)
    claude.upstream.script(hang=True, times=2)
    request_id, _ = sdk_failure(claude, fmt, model, stream=stream, status=504, code="upstream_timeout")
    row = assert_row(
        claude,
        request_id,
        model,
        billing_result="not_billed",
        status=504,
        error_class="upstream_or_platform_error",
        error_code="upstream_timeout",
        attempts=[(1, None, "upstream_timeout"), (2, None, "upstream_timeout")],
    )
    assert all(900 <= a["ms"] < 3000 for a in row.attempts)
    assert_upstream_called(claude, model, 2)


@pytest.mark.parametrize(("fmt", "model"), ROUTES)
def test_stream_cut_after_output_is_failed_but_billable(claude, fmt, model):
    # given an upstream that reports no usage and drops the connection after three pieces
    claude.upstream.script(cut_after_chunks=3, chunk_delay_ms=5, no_usage=True)
    response, raw = post(claude, fmt, model, stream=True)
    # then the client got the three pieces, then an error event in its own format, and no terminator
    request_id, forwarded = assert_stream_error(fmt, response, code="upstream_stream_interrupted")
    text = streamed_text(fmt, forwarded)
    assert text == "Hello from the"
    # and the tokens streamed so far are estimated and billed
    tokens = estimate(raw, text)
    assert tokens[1] == 4
    row = assert_row(
        claude,
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
    assert_upstream_called(claude, model, 1)  # never retried once streaming began


@pytest.mark.parametrize(("fmt", "model", "stream"), MIXED)
def test_error_body_with_usage_is_failed_but_billable_for_the_reported_tokens(claude, fmt, model, stream):
    # given an upstream that fails twice with a 500 whose body reports the prompt it read (3 tokens)
    claude.upstream.script(status=500, usage=True, times=2)
    request_id, _ = sdk_failure(claude, fmt, model, stream=stream, status=502, code="upstream_error")
    assert_row(
        claude,
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


@pytest.mark.parametrize(("fmt", "model"), ROUTES)
def test_client_disconnect_mid_stream_is_failed_but_billable(claude, fmt, model):
    # given an upstream still streaming (150 ms a piece, eight pieces: 1.2 s) that reports no usage
    claude.upstream.script(chunk_delay_ms=150, no_usage=True)
    raw = request_body(fmt, model, stream=True)
    # when the client reads the first piece and closes the connection
    with open_request(claude, fmt, raw) as sock:
        received = read_until(sock, b"Hello")
    request_id = request_id_in(received)
    # then the row records the disconnect, and what was streamed is billed at the estimate
    row = claude.row(request_id)
    assert row.input_tokens == math.ceil(len(raw) / 4)
    assert 2 <= row.output_tokens < math.ceil(len(REPLY) / 4)
    tokens = (row.input_tokens, row.output_tokens)
    row = assert_row(
        claude,
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


def disconnect_notices(monkeypatch) -> threading.Event:
    """Set once the gateway has noticed a client going away (the lifecycle's disconnect watcher returned)."""
    noticed = threading.Event()
    original = lifecycle.Call.watch_disconnect

    async def watch_disconnect(self):
        await original(self)
        noticed.set()

    monkeypatch.setattr(lifecycle.Call, "watch_disconnect", watch_disconnect)
    return noticed


@pytest.mark.parametrize(("fmt", "model"), ROUTES)
def test_client_gone_while_the_upstream_works_is_billed_for_the_reported_usage(claude, monkeypatch, fmt, model):
    # given an upstream that holds its answer (100 in, 8 out) until the test opens the gate
    noticed = disconnect_notices(monkeypatch)
    claude.upstream.script(gate="answer", tokens=TOKENS)
    with open_request(claude, fmt, request_body(fmt, model, stream=False)):
        wait_until(lambda: claude.upstream.waiting_at("answer") == 1, what="the upstream call", timeout=10)
        request_id = pending_request_id(claude)
    # when the client has gone away (noticed by the gateway) and then the upstream answers
    wait_until(noticed.is_set, what="the gateway noticing the disconnect", timeout=10)
    claude.upstream.open_gate("answer")
    # then nothing reached the client, but what the upstream consumed is billed
    row = assert_row(
        claude,
        request_id,
        model,
        billing_result="failed_but_billable",
        status=200,  # what the gateway had to answer; nobody was left to receive it
        tokens=(100, 8),
        cost=COST[model],
        error_class="stream_interrupted",
        error_code="client_disconnected",
        attempts=[(1, 200, "")],
        output_reached=False,
        disconnected=True,
    )
    assert row.first_byte_at is None
    assert row.started_at <= row.client_disconnected_at <= row.finished_at


@pytest.mark.parametrize(("fmt", "model"), [ROUTES[0], ROUTES[2]])
def test_stream_client_gone_before_the_stream_began_got_no_output(claude, monkeypatch, fmt, model):
    # given a stream request whose upstream holds the answer at a gate
    noticed = disconnect_notices(monkeypatch)
    claude.upstream.script(gate="answer", tokens=TOKENS, chunk_delay_ms=20)
    with open_request(claude, fmt, request_body(fmt, model, stream=True)):
        wait_until(lambda: claude.upstream.waiting_at("answer") == 1, what="the upstream call", timeout=10)
        request_id = pending_request_id(claude)
    # when the client leaves before any byte of the stream was sent, then the upstream answers
    wait_until(noticed.is_set, what="the gateway noticing the disconnect", timeout=10)
    claude.upstream.open_gate("answer")
    # then the row says the client left and that no output reached it; whatever is billed is exact
    row = claude.row(request_id)
    assert row.client_disconnected_at is not None
    assert row.output_reached_client is False
    assert (row.status, row.error_class, row.error_code) == (200, "stream_interrupted", "client_disconnected")
    assert row.billing_result in ("failed_but_billable", "not_billed")
    assert row_cost(row) == row.cost_usd
    assert_row(
        claude,
        request_id,
        model,
        billing_result=row.billing_result,
        status=200,
        tokens=(row.input_tokens, row.output_tokens),
        cost=row.cost_usd,
        error_class="stream_interrupted",
        error_code="client_disconnected",
        estimated=row.tokens_estimated,
        disconnected=True,
    )


@pytest.mark.parametrize(("fmt", "model"), [ROUTES[1], ROUTES[2]])
def test_cut_anthropic_stream_bills_the_input_it_reported(claude, fmt, model):
    # given an Anthropic upstream whose message_start reports 100 input and 40 cache-read tokens,
    # and which drops the connection after three pieces (so no message_delta with the output count)
    claude.upstream.script(tokens={"prompt": 100, "cache_read": 40}, cut_after_chunks=3, chunk_delay_ms=5)
    response, _ = post(claude, fmt, model, stream=True)
    request_id, forwarded = assert_stream_error(fmt, response, code="upstream_stream_interrupted")
    assert streamed_text(fmt, forwarded) == "Hello from the"
    # then the input the upstream reported is billed as reported; only the output is estimated
    row = claude.row(request_id)
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens) == (100, 40, 4)
    assert row.tokens_estimated is True
    # 100 × $3/M + 40 × $0.30/M + 4 × $15/M
    assert row.cost_usd == row_cost(row) == Decimal("0.000372")


# === 2. a hold never outlives an exception =================================================================


def boom(*args, **kwargs):
    raise RuntimeError("injected failure")


def patch_translation(monkeypatch, fmt: str, model: str, **replaced) -> None:
    key = (fmt, WIRE[model])
    monkeypatch.setitem(TRANSLATIONS, key, dataclasses.replace(TRANSLATIONS[key], **replaced))


def assert_platform_error(claude, fmt, model, *, stream, attempts, upstream_calls):
    """The client got a 500 in its format (not a hung connection); the row is finished, not billed."""
    request_id, _ = sdk_failure(claude, fmt, model, stream=stream, status=500, code="platform_error")
    assert_row(
        claude,
        request_id,
        model,
        billing_result="not_billed",
        status=500,
        error_class="upstream_or_platform_error",
        error_code="platform_error",
        attempts=attempts,
    )
    assert_upstream_called(claude, model, upstream_calls)


@pytest.mark.parametrize(("fmt", "model", "stream"), [MIXED[1], MIXED[3]])
def test_translation_request_raising_releases_the_hold(claude, monkeypatch, fmt, model, stream):
    patch_translation(monkeypatch, fmt, model, request=boom)
    claude.upstream.script(tokens=TOKENS)
    assert_platform_error(claude, fmt, model, stream=stream, attempts=[], upstream_calls=0)


@pytest.mark.parametrize(("fmt", "model", "stream"), MIXED_OTHER)
def test_provider_call_raising_releases_the_hold(claude, monkeypatch, fmt, model, stream):
    monkeypatch.setattr(provider_for(PROVIDER[model]), "call", boom)
    claude.upstream.script(tokens=TOKENS)
    assert_platform_error(claude, fmt, model, stream=stream, attempts=[], upstream_calls=0)


@pytest.mark.parametrize(("fmt", "model"), ROUTES)
def test_provider_reply_raising_releases_the_hold(claude, monkeypatch, fmt, model):
    monkeypatch.setattr(provider_for(PROVIDER[model]), "reply", boom)
    claude.upstream.script(tokens=TOKENS)
    assert_platform_error(claude, fmt, model, stream=False, attempts=[(1, 200, "")], upstream_calls=1)


@pytest.mark.parametrize(("fmt", "model"), TRANSLATED)
def test_translation_response_raising_releases_the_hold(claude, monkeypatch, fmt, model):
    # given an upstream answer (with its usage) that the translation back to the client fails on
    patch_translation(monkeypatch, fmt, model, response=boom)
    claude.upstream.script(tokens=TOKENS)
    request_id, _ = sdk_failure(claude, fmt, model, stream=False, status=500, code="platform_error")
    # then the client gets a 500 in its format, and the work the upstream reported is billed
    assert_row(
        claude,
        request_id,
        model,
        billing_result="failed_but_billable",
        status=500,
        tokens=(TOKENS["prompt"], TOKENS["completion"]),
        cost=COST[model],
        error_class="upstream_or_platform_error",
        error_code="platform_error",
        attempts=[(1, 200, "")],
    )
    assert_upstream_called(claude, model, 1)


@pytest.mark.parametrize(("fmt", "model"), ROUTES)
def test_stream_reader_raising_mid_stream_bills_the_output_sent(claude, monkeypatch, fmt, model):
    # given a reader that fails on the chunk after the first one that carried text
    reader_class = type(provider_for(PROVIDER[model]).reader())
    original = reader_class.feed

    def feed(self, data):
        if self.output_chars:
            raise RuntimeError("injected reader failure")
        return original(self, data)

    monkeypatch.setattr(reader_class, "feed", feed)
    claude.upstream.script(chunk_delay_ms=20, no_usage=True)
    response, raw = post(claude, fmt, model, stream=True)
    # then the client got what was relayed, an error event, no terminator
    request_id, forwarded = assert_stream_error(fmt, response, code="platform_error")
    text = streamed_text(fmt, forwarded)
    assert text and REPLY.startswith(text) and text != REPLY
    # and the output sent is billed (estimated: the upstream never got to report usage)
    tokens = estimate(raw, text)
    assert_row(
        claude,
        request_id,
        model,
        billing_result="failed_but_billable",
        status=200,
        tokens=tokens,
        cost=cost_of(model, *tokens),
        error_class="stream_interrupted",
        error_code="platform_error",
        attempts=[(1, 200, "")],
        estimated=True,
        output_reached=True,
    )


def exploding_stream(real, fmt: str, *, pieces: int):
    """A translation stream that raises on the upstream event that would carry text piece pieces + 1."""

    class Exploding:
        def __init__(self, **kwargs) -> None:
            self.inner = real(**kwargs)
            self.pieces = 0

        def feed(self, event):
            out = self.inner.feed(event)
            self.pieces += sum(has_text(fmt, e) for e in out)
            if self.pieces > pieces:
                raise RuntimeError("injected translation failure")
            return out

    return Exploding


def capture_readers(monkeypatch, model: str) -> list:
    provider = provider_for(PROVIDER[model])
    original, readers = provider.reader, []

    def reader():
        readers.append(original())
        return readers[-1]

    monkeypatch.setattr(provider, "reader", reader)
    return readers


@pytest.mark.parametrize(("fmt", "model"), TRANSLATED)
def test_translation_stream_raising_mid_stream_bills_what_was_consumed(claude, monkeypatch, fmt, model):
    # given a translation that fails on the third piece of text
    key = (fmt, WIRE[model])
    patch_translation(monkeypatch, fmt, model, stream=exploding_stream(TRANSLATIONS[key].stream, fmt, pieces=2))
    readers = capture_readers(monkeypatch, model)
    claude.upstream.script(chunk_delay_ms=20, no_usage=True)
    response, raw = post(claude, fmt, model, stream=True)
    request_id, forwarded = assert_stream_error(fmt, response, code="platform_error")
    assert streamed_text(fmt, forwarded) == "Hello from"
    # then what the upstream generated so far (three pieces, the failed one included) is billed
    (reader,) = readers
    assert reader.output_chars == len("Hello from the")
    tokens = (math.ceil(len(raw) / 4), math.ceil(reader.output_chars / 4))
    assert_row(
        claude,
        request_id,
        model,
        billing_result="failed_but_billable",
        status=200,
        tokens=tokens,
        cost=cost_of(model, *tokens),
        error_class="stream_interrupted",
        error_code="platform_error",
        attempts=[(1, 200, "")],
        estimated=True,
        output_reached=True,
    )


@pytest.mark.parametrize(("fmt", "model"), TRANSLATED)
def test_translation_stream_raising_before_any_text_records_that_no_output_reached_the_client(
    claude, monkeypatch, fmt, model
):
    # given a translation that fails on the first piece of text
    key = (fmt, WIRE[model])
    patch_translation(monkeypatch, fmt, model, stream=exploding_stream(TRANSLATIONS[key].stream, fmt, pieces=0))
    claude.upstream.script(chunk_delay_ms=20, no_usage=True)
    response, _ = post(claude, fmt, model, stream=True)
    request_id, forwarded = assert_stream_error(fmt, response, code="platform_error")
    assert streamed_text(fmt, forwarded) == ""
    # then the row is finished, consistent, and does not claim output reached the client
    row = claude.row(request_id)
    assert row.output_reached_client is False
    assert row_cost(row) == row.cost_usd
    assert_row(
        claude,
        request_id,
        model,
        billing_result=row.billing_result,
        status=200,
        tokens=(row.input_tokens, row.output_tokens),
        cost=row.cost_usd,
        error_class="stream_interrupted",
        error_code="platform_error",
        estimated=row.tokens_estimated,
    )


@pytest.mark.parametrize(
    ("value", "sent"),
    [("inf", "3600"), ("1e400", "3600"), ("nan", "1"), ("-5", "1"), ("abc", "1")],
)
@pytest.mark.parametrize(("fmt", "model"), PASS_THROUGH)
def test_absurd_upstream_retry_after_is_a_429_with_finite_whole_seconds(claude, fmt, model, value, sent):
    # given an upstream 429 whose Retry-After is no finite number of seconds
    claude.upstream.script(status=429, retry_after=value)
    request_id, exc = sdk_failure(claude, fmt, model, stream=False, status=429, code="upstream_rate_limited")
    # then the client gets whole seconds, at least 1 and capped at an hour
    headers = exc.response.headers
    assert headers["retry-after"] == sent
    assert headers["x-ratelimit-reset-requests"] == headers["x-ratelimit-reset-tokens"] == sent + "s"
    assert_row(
        claude,
        request_id,
        model,
        billing_result="not_billed",
        status=429,
        error_class="quota_or_rate_limit",
        error_code="upstream_rate_limited",
        attempts=[(1, 429, "upstream_rate_limited")],
    )


# === 3. cancellation =======================================================================================


def capture_handlers(monkeypatch) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Task]]:
    """The (loop, task) of each request's handler, noted as it starts talking to the upstream."""
    handlers = []
    original = lifecycle.Call.connect

    async def connect(self):
        handlers.append((asyncio.get_running_loop(), asyncio.current_task()))
        return await original(self)

    monkeypatch.setattr(lifecycle.Call, "connect", connect)
    return handlers


def cancel(handlers) -> None:
    (loop, task), *_ = handlers
    loop.call_soon_threadsafe(task.cancel)


@pytest.mark.parametrize(("fmt", "model", "stream"), [MIXED[0], MIXED_OTHER[3]])
def test_handler_cancelled_while_waiting_for_the_upstream_releases_the_hold(claude, monkeypatch, fmt, model, stream):
    # given a request whose upstream holds the answer at a gate
    handlers = capture_handlers(monkeypatch)
    claude.upstream.script(gate="answer", tokens=TOKENS)
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(post, claude, fmt, model, stream=stream)
        wait_until(lambda: claude.upstream.waiting_at("answer") == 1, what="the upstream call", timeout=10)
        request_id = pending_request_id(claude)
        # when its handler task is cancelled
        cancel(handlers)
        response, _ = sent.result(timeout=20)
    claude.upstream.open_gate("answer")
    # then the client got an error in its format, not a hung connection; nothing is billed
    assert assert_client_error(fmt, response, status=502, code="upstream_error") == request_id
    row = assert_row(
        claude,
        request_id,
        model,
        billing_result="not_billed",
        status=502,
        error_class="upstream_or_platform_error",
        error_code="upstream_error",
    )
    assert row.error_message == "The request was cancelled."
    # the attempt in flight is kept under the request's trace (the upstream was called once)
    assert_upstream_called(claude, model, 1)
    assert [(a["attempt"], a["status"]) for a in row.attempts] == [(1, None)]


@pytest.mark.parametrize(("fmt", "model"), [ROUTES[0], ROUTES[3]])
def test_handler_cancelled_mid_stream_bills_the_output_sent(claude, monkeypatch, fmt, model):
    handlers = capture_handlers(monkeypatch)
    claude.upstream.script(chunk_delay_ms=100, no_usage=True)
    raw = request_body(fmt, model, stream=True)
    received = b""
    with httpx.stream(
        "POST",
        claude.url + PATHS[fmt],
        content=raw,
        headers={"Authorization": f"Bearer {claude.secret}", "Content-Type": "application/json"},
        timeout=20,
    ) as response:
        for data in response.iter_bytes():
            received += data
            if b"Hello" in received and handlers:
                cancel(handlers)
                handlers.clear()
        headers = response.headers
    response = httpx.Response(200, headers=headers, content=received)
    request_id, forwarded = assert_stream_error(fmt, response, code="upstream_error")
    text = streamed_text(fmt, forwarded)
    assert text and REPLY.startswith(text) and text != REPLY
    tokens = estimate(raw, text)
    row = assert_row(
        claude,
        request_id,
        model,
        billing_result="failed_but_billable",
        status=200,
        tokens=tokens,
        cost=cost_of(model, *tokens),
        error_class="upstream_or_platform_error",
        error_code="upstream_error",
        attempts=[(1, 200, "")],
        estimated=True,
        output_reached=True,
    )
    # the stream's first bytes (sent at once) came at least a piece (100 ms) before the end
    assert (row.finished_at - row.first_byte_at).total_seconds() >= 0.05


@pytest.mark.parametrize("fmt", ["chat", "messages"])
def test_a_retry_to_a_route_of_another_format_starts_from_the_clients_request(claude, fmt):
    # given claude-sonnet-4-6 with an Anthropic route that fails and, next, an OpenAI-compatible one
    first = Route.objects.get(model__name=CLAUDE)
    Route.objects.filter(pk=first.pk).update(priority=1)
    second = Route.objects.create(
        model=first.model,
        name="compatible",
        provider="openai",
        base_url=claude.upstream.url + "/v1",
        upstream_model="claude-compatible",
        priority=2,
    )
    services.route_secret_set(route=second, secret="second-secret")
    services.probe_record(route=second, ok=True, status_code=200)
    claude.refresh()
    claude.upstream.script(status=503, model="claude-up")
    claude.upstream.script(model="claude-compatible", tokens=TOKENS)
    # when the client calls, in either format
    response, _ = post(claude, fmt, CLAUDE, stream=False)
    assert response.status_code == 200, response.text
    # then each attempt got a body in its own route's format, built from the client's request alone
    anthropic_call, chat_call = claude.upstream.requests
    assert anthropic_call["path"] == "/v1/messages" and chat_call["path"] == "/v1/chat/completions"
    assert anthropic_call["json"]["model"] == "claude-up" and "max_tokens" in anthropic_call["json"]
    assert chat_call["json"]["model"] == "claude-compatible"
    assert {"system", "thinking", "stop_sequences"}.isdisjoint(chat_call["json"])  # nothing Anthropic leaked
    assert chat_call["json"]["messages"][-1] == {"role": "user", "content": "Hello from Openbili"}
    # and the bill is the second route's usage, both attempts on the trace
    request_id = response.headers["x-request-id"]
    row = assert_row(
        claude,
        request_id,
        CLAUDE,
        billing_result="billed",
        status=200,
        tokens=(TOKENS["prompt"], TOKENS["completion"]),
        cost=COST[CLAUDE],
        attempts=[(1, 503, "upstream_unavailable"), (2, 200, "")],
        output_reached=True,
    )
    assert (row.route_id, row.provider, row.upstream_model) == (second.pk, "openai", "claude-compatible")
