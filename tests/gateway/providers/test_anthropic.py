"""The Anthropic Messages provider: usage normalisation, SSE framing, error mapping, request building.

The golden payloads copy the shape and numbers of real Anthropic responses: the Python SDK's
recorded API responses and stream fixtures (anthropics/anthropic-sdk-python, tests/lib/) and the
prompt-caching page of the API docs. The last section runs the provider's requests against the
real fake upstream server (openbili.fake_upstream), which speaks the Messages wire format.
"""

from __future__ import annotations

import json

import httpx
import pytest

from billing.money import TokenUsage
from openbili.core.errors import (
    InvalidRequest,
    RateLimited,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from openbili.fake_upstream import FakeUpstream
from usage.gateway.providers.anthropic import AnthropicProvider, AnthropicReader, usage_from_anthropic
from usage.gateway.state import RouteInfo

SECRET = "sk-ant-test"
PROVIDER = AnthropicProvider()


def route(base_url: str = "https://api.anthropic.com", secret: str = SECRET) -> RouteInfo:
    return RouteInfo(
        id=1, provider="anthropic", base_url=base_url, upstream_model="claude-x", secret=secret, timeout=30.0
    )


def sse(*events: tuple[str, dict], eol: str = "\n") -> bytes:
    """Events framed the way Anthropic sends them: `event:` and `data:` lines, then a blank line."""
    return "".join(
        f"event: {name}{eol}data: {json.dumps(data, separators=(',', ':'))}{eol}{eol}" for name, data in events
    ).encode()


def read(stream: bytes, *pieces: int) -> tuple[AnthropicReader, list]:
    """Feed `stream` to a new reader, cut at the given offsets; return it and every event."""
    reader, events, last = AnthropicReader(), [], 0
    for cut in (*pieces, len(stream)):
        events += reader.feed(stream[last:cut])
        last = cut
    return reader, events


def delta(text: str, kind: str = "text_delta", field: str = "text", index: int = 0) -> tuple[str, dict]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": kind, field: text}}


# The SDK's basic_response.txt fixture (claude-3-opus): "Hello there!" in three deltas.
BASIC = (
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-3-opus-latest",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 11, "output_tokens": 1},
            },
        },
    ),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    delta("Hello"),
    delta(" there"),
    delta("!"),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 6},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
)
BASIC_STREAM = sse(*BASIC)


# --------------------------------------------------------------------------------------------------
# Usage normalisation
# --------------------------------------------------------------------------------------------------


def test_usage_of_a_recorded_messages_response():
    # The usage of a recorded claude-sonnet-4-5 reply (SDK tests/lib/_parse inline snapshot).
    usage = {
        "input_tokens": 406,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 50,
        "service_tier": "standard",
        "inference_geo": "not_available",
    }
    assert usage_from_anthropic(usage) == TokenUsage(input_tokens=406, output_tokens=50)


def test_usage_with_cache_reads_and_writes_keeps_them_beside_the_input():
    # The prompt-caching docs' example: input_tokens are the tokens after the last cache
    # breakpoint; cache_creation_input_tokens is the sum of the per-TTL breakdown, never added twice.
    usage = {
        "input_tokens": 2048,
        "cache_read_input_tokens": 1800,
        "cache_creation_input_tokens": 248,
        "output_tokens": 503,
        "cache_creation": {"ephemeral_5m_input_tokens": 148, "ephemeral_1h_input_tokens": 100},
    }
    assert usage_from_anthropic(usage) == TokenUsage(
        input_tokens=2048, output_tokens=503, cached_input_tokens=1800, cache_write_tokens=248
    )


def test_usage_sums_the_ttl_breakdown_only_when_the_flat_cache_write_count_is_absent():
    usage = {
        "input_tokens": 5,
        "output_tokens": 7,
        "cache_read_input_tokens": 240000,
        "cache_creation": {"ephemeral_5m_input_tokens": 148, "ephemeral_1h_input_tokens": 100},
    }
    assert usage_from_anthropic(usage) == TokenUsage(
        input_tokens=5, output_tokens=7, cached_input_tokens=240000, cache_write_tokens=248
    )


def test_usage_is_null_safe():
    usage = {
        "input_tokens": 12,
        "output_tokens": 3,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": None,
        "cache_creation": None,
        "output_tokens_details": None,
    }
    assert usage_from_anthropic(usage) == TokenUsage(input_tokens=12, output_tokens=3)
    assert usage_from_anthropic({"output_tokens": 8}) == TokenUsage(output_tokens=8)
    assert usage_from_anthropic({"input_tokens": "12", "output_tokens": True}) == TokenUsage()
    assert usage_from_anthropic(None) is None
    assert usage_from_anthropic([1, 2]) is None  # type: ignore[arg-type]


def test_reasoning_is_zero_unless_the_optional_thinking_breakdown_is_sent():
    # Thinking is billed inside output_tokens; only newer API versions split it out, and only
    # for information (it stays inside output_tokens).
    assert usage_from_anthropic({"input_tokens": 40, "output_tokens": 8}).reasoning_tokens == 0  # type: ignore[union-attr]
    usage = usage_from_anthropic(
        {"input_tokens": 40, "output_tokens": 8, "output_tokens_details": {"thinking_tokens": 3}}
    )
    assert usage == TokenUsage(input_tokens=40, output_tokens=8, reasoning_tokens=3)


# --------------------------------------------------------------------------------------------------
# Non-stream replies
# --------------------------------------------------------------------------------------------------


def test_reply_parses_the_message_its_usage_and_the_generated_bytes():
    message = {
        "id": "msg_019Q1hrJbZG26Fb9BQhrkHEr",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [
            {"type": "thinking", "thinking": "Paris → weather", "signature": "EqQBCgIYAhIM"},
            {"type": "text", "text": "I'll check the current weather in Paris for you."},
            {
                "type": "tool_use",
                "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn",
                "name": "get_weather",
                "input": {"location": "Paris"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 377,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 65,
        },
    }
    raw = json.dumps(message).encode()

    reply = PROVIDER.reply(raw)

    assert reply.data == message
    assert reply.usage == TokenUsage(input_tokens=377, output_tokens=65)
    expected = len("Paris → weather".encode()) + len("I'll check the current weather in Paris for you.")
    expected += len("get_weather") + len('{"location": "Paris"}')
    assert reply.output_bytes == expected


def test_reply_without_usage_reports_none():
    reply = PROVIDER.reply(b'{"type":"message","content":[{"type":"text","text":"hi"}]}')
    assert reply.usage is None
    assert reply.output_bytes == 2


@pytest.mark.parametrize("raw", [b'{"type":"message",', b"<html>502</html>", b"", b"\xff\xfe"])
def test_a_malformed_reply_is_an_upstream_error(raw):
    with pytest.raises(UpstreamError, match="the upstream returned a malformed response"):
        PROVIDER.reply(raw)


def test_a_reply_that_is_not_an_object_has_no_data():
    reply = PROVIDER.reply(b"[1, 2]")
    assert (reply.data, reply.usage, reply.output_bytes) == (None, None, 0)


# --------------------------------------------------------------------------------------------------
# Stream reader
# --------------------------------------------------------------------------------------------------


def test_reader_keeps_score_of_a_basic_stream():
    reader, events = read(BASIC_STREAM)

    assert [e.name for e in events] == [name for name, _ in BASIC]
    assert [e.data for e in events] == [data for _, data in BASIC]
    assert b"".join(e.raw for e in events) == BASIC_STREAM
    assert [e.final for e in events] == [False] * 8 + [True]
    assert not any(e.hidden for e in events)
    assert reader.usage == TokenUsage(input_tokens=11, output_tokens=6)
    assert reader.completed
    assert reader.upstream_error is None
    assert reader.output_events == 3
    assert reader.output_chars == len("Hello there!")


def test_each_event_keeps_its_raw_bytes_exactly():
    # Anthropic's own spacing (`{"type": "ping"}`), a comment and a stray field survive untouched.
    stream = (
        b'event: ping\ndata: {"type": "ping"}\n\n'
        b": keep-alive\n\n"
        b'event: content_block_delta\nid: 7\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"caf\xc3\xa9"}}\n\n'
    )
    reader, events = read(stream)

    assert [e.raw for e in events] == [
        b'event: ping\ndata: {"type": "ping"}\n\n',
        b": keep-alive\n\n",
        stream[stream.index(b"event: content_block_delta") :],
    ]
    assert [e.name for e in events] == ["ping", "", "content_block_delta"]
    assert events[1].data is None
    assert reader.output_events == 1
    assert reader.output_chars == len("café".encode())  # UTF-8 bytes, not characters


def test_an_event_split_at_every_byte_boundary_reads_the_same():
    whole, expected = read(BASIC_STREAM)
    for cut in range(1, len(BASIC_STREAM)):
        reader, events = read(BASIC_STREAM, cut)
        assert [e.raw for e in events] == [e.raw for e in expected], cut
        assert reader.usage == whole.usage
        assert (reader.completed, reader.output_events, reader.output_chars) == (True, 3, 12)


def test_a_stream_fed_one_byte_at_a_time_reads_the_same():
    reader, events = read(BASIC_STREAM, *range(1, len(BASIC_STREAM)))
    assert b"".join(e.raw for e in events) == BASIC_STREAM
    assert len(events) == len(BASIC)
    assert reader.usage == TokenUsage(input_tokens=11, output_tokens=6)
    assert reader.completed


def test_a_partial_event_waits_for_the_next_feed():
    reader = AnthropicReader()
    first = BASIC_STREAM.index(b"\n\n") + 2
    assert reader.feed(BASIC_STREAM[: first + 10]) != []
    assert reader.feed(b"") == []
    rest = reader.feed(BASIC_STREAM[first + 10 :])
    assert len(rest) == len(BASIC) - 1
    assert rest[0].raw == BASIC_STREAM[first : BASIC_STREAM.index(b"\n\n", first) + 2]


@pytest.mark.parametrize("eol", ["\r\n", "\n"])
def test_crlf_and_lf_framing_read_the_same(eol):
    stream = sse(*BASIC, eol=eol)
    for cuts in [(), *[(i,) for i in range(1, len(stream))]]:
        reader, events = read(stream, *cuts)
        assert [e.raw for e in events] == [sse(event, eol=eol) for event in BASIC]
        assert [e.data for e in events] == [data for _, data in BASIC]
        assert reader.usage == TokenUsage(input_tokens=11, output_tokens=6)
        assert reader.completed and events[-1].final


def test_a_stream_with_cache_counts_and_a_message_delta_that_repeats_them():
    # The SDK's message_delta_fields_response.txt: message_delta repeats the cumulative input and
    # cache counts (which then win) and adds the thinking breakdown.
    stream = sse(
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01MessageDeltaFields00000001",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-sonnet-4-5",
                    "usage": {
                        "input_tokens": 25,
                        "cache_creation_input_tokens": 10,
                        "cache_read_input_tokens": 5,
                        "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 0},
                        "output_tokens": 1,
                        "service_tier": "standard",
                    },
                },
            },
        ),
        delta("Hello there!"),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {
                    "input_tokens": 40,
                    "cache_creation_input_tokens": 12,
                    "cache_read_input_tokens": 7,
                    "output_tokens": 8,
                    "output_tokens_details": {"thinking_tokens": 3},
                    "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0},
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    )
    reader, _ = read(stream)
    assert reader.usage == TokenUsage(
        input_tokens=40, output_tokens=8, cached_input_tokens=7, cache_write_tokens=12, reasoning_tokens=3
    )


def test_a_message_delta_with_only_output_keeps_the_input_and_cache_counts_of_message_start():
    start = {
        "type": "message_start",
        "message": {
            "usage": {
                "input_tokens": 25,
                "cache_creation_input_tokens": 10,
                "cache_read_input_tokens": 5,
                "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 1,
            }
        },
    }
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 8}}
    reader, _ = read(sse(("message_start", start), ("message_delta", end)))
    assert reader.usage == TokenUsage(input_tokens=25, output_tokens=8, cached_input_tokens=5, cache_write_tokens=10)


def test_usage_waits_for_message_delta():
    # A stream cut after message_start has no trustworthy output count (message_start says 1):
    # the reader reports none and the lifecycle estimates it from output_chars.
    reader, _ = read(sse(*BASIC[:6]))
    assert reader.usage is None
    assert not reader.completed
    assert (reader.output_events, reader.output_chars) == (3, 12)


def test_a_tool_use_stream_counts_the_tool_name_and_its_json_input():
    # The SDK's tool_use_response.txt, shortened.
    partial = ["", '{"locati', 'on": "P', "ar", 'is"}']
    stream = sse(
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 377, "output_tokens": 1}}}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn",
                    "name": "get_weather",
                    "input": {},
                },
            },
        ),
        *[delta(piece, "input_json_delta", "partial_json", index=1) for piece in partial],
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 65}},
        ),
        ("message_stop", {"type": "message_stop"}),
    )
    reader, _ = read(stream)
    assert reader.output_chars == len("get_weather") + len('{"location": "Paris"}')
    assert reader.output_events == 1 + len(partial)
    assert reader.usage == TokenUsage(input_tokens=377, output_tokens=65)


def test_thinking_deltas_are_output_and_signatures_are_not_text():
    stream = sse(
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        ),
        delta("Let me solve this step by step", "thinking_delta", "thinking"),
        delta("EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds", "signature_delta", "signature"),
    )
    reader, _ = read(stream)
    assert reader.output_chars == len("Let me solve this step by step")


def test_an_error_event_mid_stream_is_an_interruption_not_a_completion():
    # The streaming docs: during high usage an overloaded_error may arrive inside a 200 stream.
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    reader, events = read(sse(*BASIC[:5], ("error", error), *BASIC[5:]))

    # The events before it are returned; the error event itself and anything after it are not
    # (the client gets the gateway's own error event, in its own format).
    assert [e.name for e in events] == [name for name, _ in BASIC[:5]]
    assert not any(e.final for e in events)
    assert not reader.completed
    assert reader.usage is None
    assert isinstance(reader.upstream_error, UpstreamError)
    assert reader.upstream_error.code == "upstream_stream_interrupted"
    assert reader.upstream_error.message == "Overloaded"


def test_a_long_or_unreadable_stream_error_is_shortened_or_generic():
    long_error = {"type": "error", "error": {"type": "api_error", "message": "x" * 5000}}
    reader, _ = read(sse(("error", long_error)))
    assert reader.upstream_error is not None
    assert reader.upstream_error.message == "x" * 300

    reader, _ = read(b"event: error\ndata: not json\n\n")
    assert reader.upstream_error is not None
    assert reader.upstream_error.code == "upstream_stream_interrupted"


def test_ping_is_not_output():
    reader, events = read(sse(("ping", {"type": "ping"})))
    assert events[0].name == "ping"
    assert (reader.output_events, reader.output_chars, reader.completed) == (0, 0, False)


# --------------------------------------------------------------------------------------------------
# Request building
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        "https://api.anthropic.com",
        "https://api.anthropic.com/",
        "https://api.anthropic.com/v1",
        "https://api.anthropic.com/v1/",
    ],
)
def test_the_url_is_built_from_either_base_url_form(base_url):
    call = PROVIDER.call({"messages": []}, route=route(base_url), stream=False, client_headers={})
    assert call.url == "https://api.anthropic.com/v1/messages"
    assert call.method == "POST"


def test_a_proxy_base_url_keeps_its_path():
    call = PROVIDER.call({}, route=route("https://proxy.example/anthropic/v1"), stream=False, client_headers={})
    assert call.url == "https://proxy.example/anthropic/v1/messages"


def test_default_headers_auth_and_no_client_credentials_upstream():
    client_headers = {"x-api-key": b"sk-ob-customer-key", "authorization": b"Bearer sk-ob-customer-key"}
    call = PROVIDER.call({}, route=route(), stream=False, client_headers=client_headers)
    assert call.headers == {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": SECRET}


def test_the_clients_anthropic_version_and_beta_pass_through():
    client_headers = {
        "anthropic-version": b"2023-01-01",
        "anthropic-beta": b"prompt-caching-2024-07-31,output-128k-2025-02-19",
    }
    call = PROVIDER.call({}, route=route(), stream=True, client_headers=client_headers)
    assert call.headers["anthropic-version"] == "2023-01-01"
    assert call.headers["anthropic-beta"] == "prompt-caching-2024-07-31,output-128k-2025-02-19"


def test_no_auth_header_without_a_secret():
    call = PROVIDER.call({}, route=route(secret=""), stream=False, client_headers={})
    assert "x-api-key" not in call.headers


def test_the_body_gets_the_upstream_model_and_a_stream_flag_that_matches_the_call():
    body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "héllo"}]}
    call = PROVIDER.call(body, route=route(), stream=True, client_headers={})
    assert body["model"] == "claude-x"  # this attempt's own copy, changed in place
    assert call.body is not None
    assert json.loads(call.body) == {**body, "stream": True}

    body = {"model": "m", "stream": True, "messages": []}
    assert (
        json.loads(PROVIDER.call(body, route=route(), stream=False, client_headers={}).body or b"")["stream"] is False
    )
    body = {"model": "m", "messages": []}
    assert "stream" not in json.loads(PROVIDER.call(body, route=route(), stream=False, client_headers={}).body or b"")


def test_probe_call_is_the_free_models_api():
    # docs.anthropic.com/en/api/models: GET /v1/models/{model_id}, the key and the version headers
    call = PROVIDER.probe_call(
        kind="chat", upstream_model="claude-x", base_url="https://api.anthropic.com/v1", secret=SECRET
    )
    assert (call.method, call.url, call.body) == ("GET", "https://api.anthropic.com/v1/models/claude-x", None)
    assert call.headers == {"anthropic-version": "2023-06-01", "x-api-key": SECRET}


def test_count_tokens_call():
    body = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}]}
    call = PROVIDER.count_tokens_call(
        body, route=route(), client_headers={"anthropic-beta": b"token-counting-2024-11-01"}
    )
    assert call is not None
    assert call.url == "https://api.anthropic.com/v1/messages/count_tokens"
    assert call.headers["x-api-key"] == SECRET
    assert call.headers["anthropic-beta"] == "token-counting-2024-11-01"
    assert json.loads(call.body or b"") == {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}


# --------------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------------


def error_body(kind: str, message: str, **extra) -> bytes:
    return json.dumps(
        {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_01", **extra}
    ).encode()


RATE = "Number of request tokens has exceeded your per-minute rate limit."


@pytest.mark.parametrize(("header", "value", "seconds"), [("retry-after", "3", 3), ("Retry-After", "1.5", 2)])
def test_429_is_rate_limited_with_the_upstreams_retry_after(header, value, seconds):
    failure = PROVIDER.failure(status=429, body=error_body("rate_limit_error", RATE), headers={header: value})
    assert isinstance(failure.error, RateLimited)
    assert failure.error.code == "upstream_rate_limited"
    assert failure.error.status == 429
    assert failure.error.retry_after == seconds
    assert RATE in failure.error.message
    assert not failure.retryable


def test_429_without_retry_after_defaults_to_one_second():
    failure = PROVIDER.failure(status=429, body=b"", headers={})
    assert failure.error.retry_after == 1


@pytest.mark.parametrize(
    ("status", "kind", "cls"),
    [
        (529, "overloaded_error", UpstreamUnavailable),
        (500, "api_error", UpstreamError),
        (502, "api_error", UpstreamError),
        (503, "api_error", UpstreamUnavailable),
        (504, "timeout_error", UpstreamTimeout),
    ],
)
def test_5xx_and_overloaded_are_retryable_upstream_errors(status, kind, cls):
    failure = PROVIDER.failure(status=status, body=error_body(kind, "Internal server error"), headers={})
    assert type(failure.error) is cls
    assert failure.retryable
    assert f"HTTP {status}" in failure.error.message


@pytest.mark.parametrize("status", [400, 422])
def test_400_and_422_are_the_customers_invalid_request(status):
    message = "messages.0.content: Input should be a valid list"
    failure = PROVIDER.failure(status=status, body=error_body("invalid_request_error", message), headers={})
    assert type(failure.error) is InvalidRequest
    assert failure.error.message == message
    assert failure.error.status == 400
    assert not failure.retryable


def test_413_is_request_too_large():
    message = "Request exceeds the maximum allowed number of bytes."
    failure = PROVIDER.failure(status=413, body=error_body("request_too_large", message), headers={})
    assert type(failure.error) is RequestTooLarge
    assert (failure.error.status, failure.error.message, failure.retryable) == (413, message, False)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, "authentication_error"), (403, "permission_error"), (404, "not_found_error"), (402, "billing_error")],
)
def test_a_refused_platform_request_is_an_upstream_error_not_the_customers(status, kind):
    failure = PROVIDER.failure(status=status, body=error_body(kind, f"invalid x-api-key {SECRET}"), headers={})
    assert type(failure.error) is UpstreamError
    assert failure.error.message == f"The upstream provider refused the platform's request (HTTP {status})."
    assert not failure.retryable


def test_the_platforms_upstream_credit_running_out_is_not_the_customers_bad_request():
    message = "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing."
    failure = PROVIDER.failure(status=400, body=error_body("invalid_request_error", message), headers={})
    assert type(failure.error) is UpstreamError
    assert "credit" not in failure.error.message


def test_no_secret_reaches_an_error_message():
    body = error_body("invalid_request_error", f"bad header x-api-key: {SECRET}-0123456789abcdef")
    failure = PROVIDER.failure(status=400, body=body, headers={"x-api-key": SECRET, "request-id": "req_1"})
    assert SECRET not in failure.error.message
    assert "req_1" not in failure.error.message
    assert "sk-***" in failure.error.message


def test_upstream_messages_are_shortened():
    failure = PROVIDER.failure(status=400, body=error_body("invalid_request_error", "y" * 1000), headers={})
    assert failure.error.message == "y" * 300


def test_usage_in_an_error_body_is_reported():
    body = error_body("invalid_request_error", "prompt is too long", usage={"input_tokens": 17, "output_tokens": 0})
    failure = PROVIDER.failure(status=400, body=body, headers={})
    assert failure.usage == TokenUsage(input_tokens=17)
    assert PROVIDER.failure(status=400, body=error_body("invalid_request_error", "x"), headers={}).usage is None


def test_a_non_json_error_body_still_maps():
    failure = PROVIDER.failure(status=502, body=b"<html><body>Bad gateway</body></html>", headers={})
    assert type(failure.error) is UpstreamError
    assert failure.retryable
    failure = PROVIDER.failure(status=400, body=b"<html>nope</html>", headers={})
    assert type(failure.error) is InvalidRequest
    assert failure.usage is None


# --------------------------------------------------------------------------------------------------
# Against the fake upstream (a real HTTP server on 127.0.0.1)
# --------------------------------------------------------------------------------------------------

PROMPT = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "Hello there friend"}],
}
FAKE_TEXT = "Hello from the fake upstream. This is a"  # DEFAULT_CHUNKS (8) words


@pytest.fixture(scope="module")
def fake():
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(fake):
    fake.reset()
    with httpx.Client(timeout=10) as client:
        yield fake, client


def messages_call(fake: FakeUpstream, *, stream: bool, client_headers=None):
    return PROVIDER.call(dict(PROMPT), route=route(fake.url), stream=stream, client_headers=client_headers or {})


def send(client: httpx.Client, call) -> httpx.Response:
    return client.request(call.method, call.url, headers=call.headers, content=call.body)


def stream_through(client: httpx.Client, call) -> tuple[AnthropicReader, list, bytes]:
    """Feed the streamed body to a reader as it arrives; a cut connection ends the stream."""
    reader, events, received = AnthropicReader(), [], b""
    with client.stream(call.method, call.url, headers=call.headers, content=call.body) as response:
        assert response.status_code == 200
        try:
            for chunk in response.iter_raw():
                received += chunk
                events += reader.feed(chunk)
        except httpx.HTTPError:
            pass
    return reader, events, received


def test_fake_non_stream(upstream):
    fake, client = upstream
    call = messages_call(fake, stream=False)

    response = send(client, call)
    reply = PROVIDER.reply(response.content)

    assert response.status_code == 200
    assert reply.usage == TokenUsage(input_tokens=3, output_tokens=8)
    assert reply.output_bytes == len(FAKE_TEXT)
    assert reply.data is not None and reply.data["model"] == "claude-x"
    sent = fake.last_request
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == SECRET
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in sent["headers"]
    assert sent["json"]["model"] == "claude-x"


def test_fake_stream(upstream):
    fake, client = upstream
    call = PROVIDER.call(
        dict(PROMPT),
        route=route(fake.url + "/v1"),
        stream=True,
        client_headers={"anthropic-beta": b"fine-grained-tool-streaming-2025-05-14"},
    )

    reader, events, received = stream_through(client, call)

    assert reader.completed
    assert reader.upstream_error is None
    assert reader.usage == TokenUsage(input_tokens=3, output_tokens=8)
    assert (reader.output_events, reader.output_chars) == (8, len(FAKE_TEXT))
    assert b"".join(e.raw for e in events) == received
    assert [e.final for e in events] == [False] * (len(events) - 1) + [True]
    assert events[-1].name == "message_stop"
    assert fake.last_request["json"]["stream"] is True
    assert fake.last_request["headers"]["anthropic-beta"] == "fine-grained-tool-streaming-2025-05-14"


def test_fake_tool_call_stream_and_reply(upstream):
    fake, client = upstream
    tool_call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    fake.script(tool_call=tool_call)
    fake.script(tool_call=tool_call)

    reader, _, _ = stream_through(client, messages_call(fake, stream=True))
    reply = PROVIDER.reply(send(client, messages_call(fake, stream=False)).content)

    expected = len("get_weather") + len(json.dumps({"city": "Paris"}))
    assert reader.completed
    assert reader.output_chars == expected
    assert reply.output_bytes == expected
    assert reply.data is not None and reply.data["stop_reason"] == "tool_use"


def test_fake_cache_tokens_stream_and_reply(upstream):
    fake, client = upstream
    tokens = {"prompt": 10, "completion": 5, "cache_read": 7, "cache_creation": 3}
    fake.script(tokens=tokens)
    fake.script(tokens=tokens)
    expected = TokenUsage(input_tokens=10, output_tokens=5, cached_input_tokens=7, cache_write_tokens=3)

    reader, _, _ = stream_through(client, messages_call(fake, stream=True))
    reply = PROVIDER.reply(send(client, messages_call(fake, stream=False)).content)

    assert reader.usage == expected
    assert reply.usage == expected


def test_fake_cut_stream_has_output_but_no_usage(upstream):
    fake, client = upstream
    fake.script(cut_after_chunks=2)

    reader, events, _ = stream_through(client, messages_call(fake, stream=True))

    assert not reader.completed
    assert reader.usage is None  # the lifecycle estimates it
    assert reader.upstream_error is None
    assert (reader.output_events, reader.output_chars) == (2, len("Hello from"))
    assert not any(e.final for e in events)


def test_fake_error_event_mid_stream(upstream):
    fake, client = upstream
    fake.script(status=500, error_after_chunks=2)

    reader, events, _ = stream_through(client, messages_call(fake, stream=True))

    assert "error" not in {e.name for e in events}  # not forwarded: the lifecycle sends its own
    assert events[-1].name == "content_block_delta"
    assert not reader.completed
    assert reader.usage is None
    assert reader.output_events == 2
    assert isinstance(reader.upstream_error, UpstreamError)
    assert reader.upstream_error.code == "upstream_stream_interrupted"
    assert reader.upstream_error.message == "Internal server error"


def test_fake_429_passes_on_the_retry_after(upstream):
    fake, client = upstream
    fake.script(status=429, retry_after=3)

    response = send(client, messages_call(fake, stream=False))
    failure = PROVIDER.failure(status=response.status_code, body=response.content, headers=response.headers)

    assert response.status_code == 429
    assert isinstance(failure.error, RateLimited)
    assert failure.error.code == "upstream_rate_limited"
    assert failure.error.retry_after == 3
    assert not failure.retryable


def test_fake_529_is_overloaded_and_retryable(upstream):
    fake, client = upstream
    fake.script(status=529)

    response = send(client, messages_call(fake, stream=True))
    failure = PROVIDER.failure(status=response.status_code, body=response.content, headers=response.headers)

    assert response.status_code == 529
    assert type(failure.error) is UpstreamUnavailable
    assert failure.retryable


def test_fake_wrong_key_is_a_refused_platform_request(upstream):
    fake, client = upstream
    fake.script(api_key="sk-ant-the-right-one")

    response = send(client, messages_call(fake, stream=False))
    failure = PROVIDER.failure(status=response.status_code, body=response.content, headers=response.headers)

    assert response.status_code == 401
    assert type(failure.error) is UpstreamError
    assert not failure.retryable
    assert SECRET not in failure.error.message


def test_fake_probe_and_count_tokens(upstream):
    fake, client = upstream
    probe = PROVIDER.probe_call(kind="chat", upstream_model="claude-x", base_url=fake.url, secret=SECRET)
    answer = send(client, probe)
    assert answer.status_code == 200 and answer.json()["type"] == "model" and answer.json()["id"] == "claude-x"
    assert (fake.last_request["method"], fake.last_request["path"]) == ("GET", "/v1/models/claude-x")

    count = PROVIDER.count_tokens_call(dict(PROMPT), route=route(fake.url), client_headers={})
    assert count is not None
    response = send(client, count)
    assert response.status_code == 200
    assert response.json() == {"input_tokens": 3}
    assert fake.last_request["path"] == "/v1/messages/count_tokens"
    assert fake.last_request["json"]["model"] == "claude-x"
