"""The OpenAI-compatible provider: usage normalisation (golden, from OpenAI's documented payloads),
SSE framing, the hidden usage chunk, error events and failure mapping. Pure: no network."""

from __future__ import annotations

import json

import pytest

from billing.money import TokenUsage
from openbili.core.errors import InvalidRequest, RateLimited, RequestTooLarge, UpstreamError, UpstreamUnavailable
from usage.gateway.providers.openai import OpenAIProvider, OpenAIReader, usage_from_openai
from usage.gateway.state import RouteInfo

ROUTE = RouteInfo(
    id=1, provider="openai", base_url="https://api.openai.com/v1/", upstream_model="gpt-up", secret="sk-x", timeout=30.0
)

# The chat completion of OpenAI's API reference ("Create chat completion", default example).
COMPLETION = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The image shows a wooden boardwalk.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # the reference example: nothing cached
        (COMPLETION["usage"], TokenUsage(input_tokens=1117, output_tokens=46)),
        # the prompt-caching guide: cached tokens are counted INSIDE prompt_tokens, so subtracted
        (
            {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
            TokenUsage(input_tokens=86, cached_input_tokens=1920, output_tokens=300),
        ),
        # the reasoning guide: reasoning tokens are part of completion_tokens, reported beside
        (
            {
                "prompt_tokens": 9,
                "completion_tokens": 1843,
                "total_tokens": 1852,
                "completion_tokens_details": {"reasoning_tokens": 1024},
            },
            TokenUsage(input_tokens=9, output_tokens=1843, reasoning_tokens=1024),
        ),
        # a stream's usage chunk (older servers send no details at all)
        ({"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}, TokenUsage(input_tokens=9, output_tokens=9)),
        # null details, as some compatible servers send
        (
            {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": None},
            TokenUsage(input_tokens=5, output_tokens=2),
        ),
    ],
)
def test_usage_is_normalised_once(usage, expected):
    assert usage_from_openai(usage) == expected


def test_no_usage_is_none_not_zero():
    assert usage_from_openai(None) is None
    assert usage_from_openai("nonsense") is None


def test_the_call_sets_the_upstream_model_asks_for_stream_usage_and_keeps_the_client_options():
    body = {"model": "gpt-5", "messages": [], "stream": True, "stream_options": {"include_obfuscation": False}}
    call = OpenAIProvider().call(body, route=ROUTE, stream=True, client_headers={})
    assert (call.method, call.url) == ("POST", "https://api.openai.com/v1/chat/completions")
    assert call.headers["Authorization"] == "Bearer sk-x"
    sent = json.loads(call.body)
    assert sent["model"] == "gpt-up"
    assert sent["stream_options"] == {"include_obfuscation": False, "include_usage": True}


def test_a_reply_keeps_its_bytes_and_reports_usage_and_text_size():
    raw = json.dumps(COMPLETION).encode()
    reply = OpenAIProvider().reply(raw)
    assert reply.data == COMPLETION
    assert reply.usage == TokenUsage(input_tokens=1117, output_tokens=46)
    assert reply.output_bytes == len(b"The image shows a wooden boardwalk.")
    with pytest.raises(UpstreamError):
        OpenAIProvider().reply(b"{not json")


def chunk(delta: dict, finish=None) -> bytes:
    data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": []}
    data["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return b"data: " + json.dumps(data).encode() + b"\n\n"


STREAM = (
    chunk({"role": "assistant", "content": "", "refusal": None})
    + chunk({"content": "Hello"})
    + chunk({"content": " world"})
    + chunk({}, finish="stop")
    + b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\n' + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("piece", [1, 7, 64, len(STREAM)])
def test_the_reader_frames_events_whatever_the_chunking(piece):
    reader = OpenAIReader()
    events = []
    for start in range(0, len(STREAM), piece):
        events += reader.feed(STREAM[start : start + piece])
    assert b"".join(event.raw for event in events) == STREAM  # byte for byte: pass-through
    assert [(e.final, e.hidden) for e in events] == [(False, False)] * 4 + [(False, True), (True, False)]
    assert reader.completed
    assert reader.usage == TokenUsage(input_tokens=9, output_tokens=2)
    # only the chunks that carried text are output (the role and finish chunks are not)
    assert (reader.output_events, reader.output_chars) == (2, len("Hello world"))


def test_an_error_event_stops_the_stream_and_is_not_forwarded():
    reader = OpenAIReader()
    error = b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n'
    events = reader.feed(chunk({"content": "Hi"}) + error + chunk({"content": " more"}))
    assert [json.loads(e.raw[6:])["choices"][0]["delta"] for e in events] == [{"content": "Hi"}]
    assert reader.upstream_error is not None
    assert reader.upstream_error.code == "upstream_stream_interrupted"
    assert reader.upstream_error.message == "The server had an error"
    assert not reader.completed
    assert reader.feed(chunk({"content": " ignored"})) == []


@pytest.mark.parametrize(
    ("status", "headers", "error_class", "code", "retryable"),
    [
        (400, {}, InvalidRequest, "invalid_request", False),
        (413, {}, RequestTooLarge, "request_too_large", False),
        (429, {"Retry-After": "2.5"}, RateLimited, "upstream_rate_limited", False),
        (401, {}, UpstreamError, "upstream_error", False),  # the route's key: not the customer's fault
        (500, {}, UpstreamError, "upstream_error", True),
        (503, {}, UpstreamUnavailable, "upstream_unavailable", True),  # OpenAI's "overloaded"
    ],
)
def test_failures_map_to_the_contract(status, headers, error_class, code, retryable):
    body = json.dumps({"error": {"message": "nope", "type": "x"}, "usage": {"prompt_tokens": 3}}).encode()
    failure = OpenAIProvider().failure(status=status, body=body, headers=headers)
    assert type(failure.error) is error_class
    assert (failure.error.code, failure.retryable) == (code, retryable)
    assert failure.usage == TokenUsage(input_tokens=3)
    if status == 429:
        assert failure.error.retry_after == 3  # whole seconds, rounded up
    if status == 401:
        assert "nope" not in failure.error.message  # an upstream's words about our key stay ours
