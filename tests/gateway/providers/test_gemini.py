"""The Gemini provider: usage normalisation, SSE framing, error mapping, request building.

The golden payloads copy the shape and numbers of Gemini's documented payloads: the API reference
(ai.google.dev/api/generate-content: GenerateContentResponse, UsageMetadata, ModalityTokenCount),
the caching, thinking, image-generation and grounding guides (ai.google.dev/gemini-api/docs/...),
and the error table of ai.google.dev/gemini-api/docs/troubleshooting. The last section runs the
provider's requests against the real fake upstream server (openbili.fake_upstream).
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
from usage.gateway.providers import provider_for
from usage.gateway.providers.gemini import GeminiProvider, GeminiReader, usage_from_gemini
from usage.gateway.state import RouteInfo
from usage.gateway.translate import translation_for

SECRET = "AIzaSyDummyKeyForTests0000000000000000"
PROVIDER = GeminiProvider()
PROMPT = {"contents": [{"role": "user", "parts": [{"text": "Explain how AI works"}]}]}


def route(base_url: str = "https://generativelanguage.googleapis.com", secret: str = SECRET) -> RouteInfo:
    return RouteInfo(
        id=1, provider="gemini", base_url=base_url, upstream_model="gemini-2.5-flash", secret=secret, timeout=30.0
    )


def sse(*chunks: dict, eol: str = "\r\n") -> bytes:
    """Chunks framed the way Google sends them: one `data:` line each, CRLF line ends."""
    return "".join(f"data: {json.dumps(c, separators=(',', ':'))}{eol}{eol}" for c in chunks).encode()


def read(stream: bytes, *cuts: int) -> tuple[GeminiReader, list]:
    reader, events, last = GeminiReader(), [], 0
    for cut in (*cuts, len(stream)):
        events += reader.feed(stream[last:cut])
        last = cut
    return reader, events


def text_chunk(text: str, usage: dict | None = None, finish: str | None = None) -> dict:
    candidate: dict = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    chunk: dict = {"candidates": [candidate]}
    if usage is not None:
        chunk["usageMetadata"] = usage
    return chunk | {"modelVersion": "gemini-2.5-flash", "responseId": "mbJfaOvJBorR1MkPpvDI2AQ"}


# The API reference's generateContent example response (text, gemini-2.5-flash, thinking on).
REPLY = {
    "candidates": [
        {
            "content": {"parts": [{"text": "AI learns patterns from data."}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 8,
        "candidatesTokenCount": 7,
        "totalTokenCount": 1211,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
        "thoughtsTokenCount": 1196,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "mbJfaOvJBorR1MkPpvDI2AQ",
}


# --------------------------------------------------------------------------------------------------
# Usage: golden
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # API reference, UsageMetadata: plain text, no thinking (gemini-2.0-flash)
        (
            {"promptTokenCount": 11, "candidatesTokenCount": 72, "totalTokenCount": 83},
            TokenUsage(input_tokens=11, output_tokens=72),
        ),
        # Thinking guide (docs/thinking, "usage_metadata.thoughts_token_count"): thoughts are billed
        # as output, beside the candidates; reported as reasoning
        (REPLY["usageMetadata"], TokenUsage(input_tokens=8, output_tokens=1203, reasoning_tokens=1196)),
        # Caching guide (docs/caching): cachedContentTokenCount is INSIDE promptTokenCount
        (
            {
                "promptTokenCount": 696219,
                "cachedContentTokenCount": 696190,
                "candidatesTokenCount": 214,
                "totalTokenCount": 696433,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 696219}],
                "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 696190}],
            },
            TokenUsage(input_tokens=29, cached_input_tokens=696190, output_tokens=214),
        ),
        # Grounding guide (docs/google-search): the search results fed back are tool-use prompt
        # tokens, reported beside the prompt and billed as input
        (
            {
                "promptTokenCount": 12,
                "candidatesTokenCount": 240,
                "toolUsePromptTokenCount": 158,
                "thoughtsTokenCount": 30,
                "totalTokenCount": 440,
                "toolUsePromptTokensDetails": [{"modality": "TEXT", "tokenCount": 158}],
            },
            TokenUsage(input_tokens=170, output_tokens=270, reasoning_tokens=30),
        ),
        # Image generation guide (docs/image-generation): per-modality details break down the
        # totals, they are not added to them (1290 tokens per 1024x1024 image). The image's own
        # tokens are billed per image (the catalog's per_image), so only the 12 text tokens are output.
        (
            {
                "promptTokenCount": 265,
                "candidatesTokenCount": 1302,
                "totalTokenCount": 1567,
                "promptTokensDetails": [
                    {"modality": "TEXT", "tokenCount": 7},
                    {"modality": "IMAGE", "tokenCount": 258},
                ],
                "candidatesTokensDetails": [
                    {"modality": "TEXT", "tokenCount": 12},
                    {"modality": "IMAGE", "tokenCount": 1290},
                ],
            },
            TokenUsage(input_tokens=265, output_tokens=12),
        ),
        # a total absent but its breakdown present: the breakdown's sum
        (
            {
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 7}, {"modality": "AUDIO", "tokenCount": 93}],
                "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 5}],
            },
            TokenUsage(input_tokens=100, output_tokens=5),
        ),
        # a blocked prompt: promptTokenCount only, nothing generated
        ({"promptTokenCount": 9, "totalTokenCount": 9}, TokenUsage(input_tokens=9)),
        # nulls, negatives, garbage and int64-as-string (proto3 JSON) are tolerated
        (
            {"promptTokenCount": "40", "candidatesTokenCount": None, "cachedContentTokenCount": -3, "x": 1},
            TokenUsage(input_tokens=40),
        ),
        # cache larger than the prompt (never seen, never negative)
        ({"promptTokenCount": 5, "cachedContentTokenCount": 9}, TokenUsage(cached_input_tokens=9)),
        ({}, TokenUsage()),
    ],
)
def test_usage_normalisation(usage, expected):
    assert usage_from_gemini(usage) == expected


@pytest.mark.parametrize("missing", [None, [], "usage", 3])
def test_missing_usage_is_none(missing):
    assert usage_from_gemini(missing) is None


def test_reply_parses_usage_and_output_bytes():
    reply = PROVIDER.reply(json.dumps(REPLY).encode())
    assert reply.data == REPLY
    assert reply.usage == TokenUsage(input_tokens=8, output_tokens=1203, reasoning_tokens=1196)
    assert reply.output_bytes == len("AI learns patterns from data.")


def test_reply_without_usage_metadata_reports_none():
    body = {k: v for k, v in REPLY.items() if k != "usageMetadata"}
    assert PROVIDER.reply(json.dumps(body).encode()).usage is None


def test_reply_counts_generated_images_and_function_calls():
    # Image generation guide: text and inlineData image parts in one candidate.
    data = {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {"text": "Here is a cat: "},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 2590},
    }
    reply = PROVIDER.reply(json.dumps(data).encode())
    assert reply.usage == TokenUsage(input_tokens=7, output_tokens=2590, images=2)
    assert reply.output_bytes == len("Here is a cat: ") + len("get_weather") + len('{"city": "Paris"}')


def test_malformed_reply_is_an_upstream_error():
    with pytest.raises(UpstreamError):
        PROVIDER.reply(b"<html>oops")
    assert PROVIDER.reply(b"[1]").data is None


# --------------------------------------------------------------------------------------------------
# Stream framing
# --------------------------------------------------------------------------------------------------

# The streaming section of the text-generation guide: three chunks, usageMetadata on each (the
# prompt count from the first; cumulative candidates), finishReason and final usage on the last.
STREAM = sse(
    text_chunk("AI ", {"promptTokenCount": 8, "totalTokenCount": 8}),
    text_chunk("learns ", {"promptTokenCount": 8, "candidatesTokenCount": 2, "totalTokenCount": 10}),
    text_chunk(
        "patterns.",
        {"promptTokenCount": 8, "candidatesTokenCount": 4, "thoughtsTokenCount": 20, "totalTokenCount": 32},
        finish="STOP",
    ),
)


def test_stream_whole():
    reader, events = read(STREAM)
    assert len(events) == 3
    assert b"".join(e.raw for e in events) == STREAM
    assert [e.data["candidates"][0]["content"]["parts"][0]["text"] for e in events] == ["AI ", "learns ", "patterns."]
    assert not any(e.final for e in events)  # Gemini has no terminator: nothing is held back
    assert reader.completed
    assert reader.usage == TokenUsage(input_tokens=8, output_tokens=24, reasoning_tokens=20)
    assert reader.output_events == 3
    assert reader.output_chars == len("AI learns patterns.")
    assert reader.upstream_error is None


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_stream_split_at_every_byte_gives_the_same_events(cut):
    whole_reader, whole = read(STREAM)
    reader, events = read(STREAM, cut)
    assert [e.raw for e in events] == [e.raw for e in whole]
    assert [e.data for e in events] == [e.data for e in whole]
    assert reader.usage == whole_reader.usage
    assert reader.completed and reader.output_chars == whole_reader.output_chars


def test_stream_byte_by_byte_with_lf_framing():
    stream = STREAM.replace(b"\r\n", b"\n")
    reader, events = read(stream, *range(1, len(stream)))
    assert len(events) == 3 and reader.completed
    assert reader.usage == TokenUsage(input_tokens=8, output_tokens=24, reasoning_tokens=20)


def test_the_last_usage_is_authoritative_and_input_usage_is_known_early():
    reader = GeminiReader()
    reader.feed(STREAM[: STREAM.index(b"data:", 10)])  # the first chunk only
    assert not reader.completed
    assert reader.input_usage == TokenUsage(input_tokens=8)
    reader.feed(STREAM[STREAM.index(b"data:", 10) :])
    assert reader.usage == TokenUsage(input_tokens=8, output_tokens=24, reasoning_tokens=20)


def test_a_cut_stream_is_not_completed():
    reader, events = read(STREAM[: STREAM.rindex(b"data:")])
    assert len(events) == 2
    assert not reader.completed
    assert reader.usage == TokenUsage(input_tokens=8, output_tokens=2)


def test_error_inside_the_stream_stops_there():
    # A 200 stream that breaks: Google sends the error object as the next data event.
    error = {
        "error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}
    }
    stream = sse(text_chunk("AI ", {"promptTokenCount": 8}), error, text_chunk("never"))
    reader, events = read(stream)
    assert len(events) == 1  # neither the error event nor anything after it is forwarded
    assert isinstance(reader.upstream_error, UpstreamError)
    assert reader.upstream_error.code == "upstream_stream_interrupted"
    assert reader.upstream_error.message == "The model is overloaded. Please try again later."
    assert not reader.completed
    assert reader.input_usage == TokenUsage(input_tokens=8)


def test_stream_images_are_counted_into_usage():
    image = {
        "candidates": [
            {"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBOR"}}]}, "finishReason": "STOP"}
        ],
        "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 1290},
    }
    reader, _ = read(sse(text_chunk("A cat: "), image))
    assert reader.completed
    assert reader.usage == TokenUsage(input_tokens=7, output_tokens=1290, images=1)
    assert reader.output_events == 2


def test_blocked_prompt_stream_completes():
    # API reference, PromptFeedback: no candidates, a blockReason, the prompt's usage.
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9}}
    reader, events = read(sse(blocked))
    assert reader.completed and len(events) == 1
    assert reader.usage == TokenUsage(input_tokens=9)
    assert reader.output_events == 0


def test_two_candidates_complete_when_both_finished():
    def chunk(index: int, finish: str | None) -> dict:
        candidate: dict = {"content": {"parts": [{"text": "x"}]}, "index": index}
        return {"candidates": [candidate | ({"finishReason": finish} if finish else {})]}

    reader = GeminiReader()
    reader.feed(sse(chunk(0, None), chunk(1, None), chunk(0, "STOP")))
    assert not reader.completed
    reader.feed(sse(chunk(1, "MAX_TOKENS")))
    assert reader.completed


def test_comments_and_garbage_pass_as_events_without_data():
    reader, events = read(b": keep-alive\r\n\r\ndata: not json\r\n\r\n" + STREAM)
    assert len(events) == 5 and events[0].data is None and events[1].data is None
    assert reader.completed


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "root"),
    [
        ("https://generativelanguage.googleapis.com", "https://generativelanguage.googleapis.com/v1beta"),
        ("https://generativelanguage.googleapis.com/", "https://generativelanguage.googleapis.com/v1beta"),
        ("https://generativelanguage.googleapis.com/v1beta", "https://generativelanguage.googleapis.com/v1beta"),
        ("https://proxy.example/gemini/v1/", "https://proxy.example/gemini/v1"),
    ],
)
def test_call_urls_and_headers(base_url, root):
    body = dict(PROMPT)
    plain = PROVIDER.call(dict(body), route=route(base_url), stream=False, client_headers={})
    streamed = PROVIDER.call(dict(body), route=route(base_url), stream=True, client_headers={})

    assert (plain.method, streamed.method) == ("POST", "POST")
    assert plain.url == f"{root}/models/gemini-2.5-flash:generateContent"
    assert streamed.url == f"{root}/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    for call in (plain, streamed):
        assert call.headers == {"content-type": "application/json", "x-goog-api-key": SECRET}
        assert call.body is not None and json.loads(call.body) == PROMPT  # the body as given, no model in it
        assert "key=" not in call.url  # the key never goes in the URL (logs, proxies)


def test_call_accepts_a_models_prefixed_upstream_model_and_no_secret():
    r = RouteInfo(id=1, provider="gemini", base_url="https://g", upstream_model="models/gemini-x", secret="", timeout=1)
    call = PROVIDER.call(dict(PROMPT), route=r, stream=False, client_headers={})
    assert call.url == "https://g/v1beta/models/gemini-x:generateContent"
    assert "x-goog-api-key" not in call.headers


@pytest.mark.parametrize("kind", ["chat", "image"])
def test_probe_call_is_a_free_models_get(kind):
    probe = PROVIDER.probe_call(
        kind=kind,
        upstream_model="gemini-2.5-flash",
        base_url="https://generativelanguage.googleapis.com",
        secret=SECRET,
    )
    assert probe.method == "GET"
    assert probe.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
    assert probe.headers == {"x-goog-api-key": SECRET}
    assert probe.body is None


def test_registered_and_reached_through_translations():
    """Every client format but image edits reaches the Gemini wire format through a translation."""
    assert isinstance(provider_for("gemini"), GeminiProvider)
    for fmt in ("chat", "messages", "responses", "images"):
        assert translation_for(fmt, GeminiProvider.wire) is not None
    assert translation_for("image_edits", GeminiProvider.wire) is None


# --------------------------------------------------------------------------------------------------
# Failures: the troubleshooting page's table
# --------------------------------------------------------------------------------------------------


def google_error(code: int, status: str, message: str = "msg", details: list | None = None) -> bytes:
    error: dict = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return json.dumps({"error": error}).encode()


@pytest.mark.parametrize(
    ("status", "grpc", "cls", "code", "retryable"),
    [
        (429, "RESOURCE_EXHAUSTED", RateLimited, "upstream_rate_limited", False),
        (503, "UNAVAILABLE", UpstreamUnavailable, "upstream_unavailable", True),
        (500, "INTERNAL", UpstreamError, "upstream_error", True),
        (504, "DEADLINE_EXCEEDED", UpstreamTimeout, "upstream_timeout", True),
        (502, "", UpstreamError, "upstream_error", True),
        (400, "INVALID_ARGUMENT", InvalidRequest, "invalid_request", False),
        (400, "OUT_OF_RANGE", InvalidRequest, "invalid_request", False),
        (413, "", RequestTooLarge, "request_too_large", False),
        # the platform's project: region / billing, not the customer's request
        (400, "FAILED_PRECONDITION", UpstreamError, "upstream_error", False),
        (401, "UNAUTHENTICATED", UpstreamError, "upstream_error", False),
        (403, "PERMISSION_DENIED", UpstreamError, "upstream_error", False),
        (404, "NOT_FOUND", UpstreamError, "upstream_error", False),
    ],
)
def test_failure_mapping(status, grpc, cls, code, retryable):
    failure = PROVIDER.failure(status=status, body=google_error(status, grpc), headers={})
    assert type(failure.error) is cls
    assert failure.error.code == code
    assert failure.retryable is retryable
    assert failure.usage is None


def test_rate_limit_retry_after_from_the_header_first():
    body = google_error(
        429, "RESOURCE_EXHAUSTED", details=[{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "58s"}]
    )
    assert PROVIDER.failure(status=429, body=body, headers={"Retry-After": "3"}).error.retry_after == 3


@pytest.mark.parametrize(
    ("delay", "seconds"), [("7s", 7), ("58.217843437s", 59), ({"seconds": 4, "nanos": 500000000}, 5)]
)
def test_rate_limit_retry_after_from_retry_info(delay, seconds):
    # A real free-tier 429: Help, QuotaFailure and RetryInfo details.
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [{"url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
        },
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaId": "GenerateRequestsPerMinute"}],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
    ]
    body = google_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.", details)
    failure = PROVIDER.failure(status=429, body=body, headers={})
    assert isinstance(failure.error, RateLimited)
    assert failure.error.retry_after == seconds
    assert "You exceeded your current quota." in failure.error.message


def test_rate_limit_without_any_delay_defaults_to_one_second():
    assert PROVIDER.failure(status=429, body=b"", headers={}).error.retry_after == 1


def test_resource_exhausted_under_another_status_is_still_a_rate_limit():
    assert isinstance(
        PROVIDER.failure(status=400, body=google_error(400, "RESOURCE_EXHAUSTED"), headers={}).error, RateLimited
    )


def test_an_invalid_api_key_is_the_routes_fault_not_the_customers():
    # Gemini answers a wrong key with 400 INVALID_ARGUMENT + ErrorInfo API_KEY_INVALID.
    details = [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}
    ]
    failure = PROVIDER.failure(
        status=400, body=google_error(400, "INVALID_ARGUMENT", "API key not valid.", details), headers={}
    )
    assert type(failure.error) is UpstreamError and not failure.retryable


def test_no_key_reaches_an_error_message_and_messages_are_shortened():
    body = google_error(400, "INVALID_ARGUMENT", f"bad key {SECRET} " + "x" * 1000)
    message = PROVIDER.failure(status=400, body=body, headers={}).error.message
    assert SECRET not in message and "AIza***" in message
    assert len(message) <= 300


def test_a_non_json_error_body_still_maps():
    failure = PROVIDER.failure(status=503, body=b"<html>Service Unavailable</html>", headers={})
    assert type(failure.error) is UpstreamUnavailable and failure.retryable


# --------------------------------------------------------------------------------------------------
# Against the fake upstream
# --------------------------------------------------------------------------------------------------


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


def send(client: httpx.Client, call) -> httpx.Response:
    return client.request(call.method, call.url, headers=call.headers, content=call.body)


def test_fake_non_stream(upstream):
    fake, client = upstream
    response = send(client, PROVIDER.call(dict(PROMPT), route=route(fake.url), stream=False, client_headers={}))
    reply = PROVIDER.reply(response.content)
    assert response.status_code == 200
    assert reply.usage is not None and reply.usage.input_tokens == 4 and reply.usage.output_tokens > 0
    sent = fake.last_request
    assert sent["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent["headers"]["x-goog-api-key"] == SECRET


def test_fake_stream(upstream):
    fake, client = upstream
    call = PROVIDER.call(dict(PROMPT), route=route(fake.url), stream=True, client_headers={})
    reader, events = GeminiReader(), []
    with client.stream(call.method, call.url, headers=call.headers, content=call.body) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            events += reader.feed(chunk)
    assert reader.completed and reader.upstream_error is None
    assert reader.usage is not None and reader.usage.output_tokens == len(events)
    assert reader.output_events == len(events)


def test_fake_error_mid_stream(upstream):
    fake, client = upstream
    fake.script(status=503, error_after_chunks=1)
    call = PROVIDER.call(dict(PROMPT), route=route(fake.url), stream=True, client_headers={})
    reader, events = GeminiReader(), []
    with client.stream(call.method, call.url, headers=call.headers, content=call.body) as response:
        for chunk in response.iter_raw():
            events += reader.feed(chunk)
    assert len(events) == 1
    assert reader.upstream_error is not None and not reader.completed


def test_fake_429_and_wrong_key(upstream):
    fake, client = upstream
    fake.script(status=429, retry_after=3)
    response = send(client, PROVIDER.call(dict(PROMPT), route=route(fake.url), stream=False, client_headers={}))
    failure = PROVIDER.failure(status=response.status_code, body=response.content, headers=response.headers)
    assert isinstance(failure.error, RateLimited) and failure.error.retry_after == 3

    fake.script(api_key="AIza-the-right-one")
    response = send(client, PROVIDER.call(dict(PROMPT), route=route(fake.url), stream=False, client_headers={}))
    failure = PROVIDER.failure(status=response.status_code, body=response.content, headers=response.headers)
    assert response.status_code == 400
    assert type(failure.error) is UpstreamError and not failure.retryable


def test_fake_probe(upstream):
    fake, client = upstream
    probe = PROVIDER.probe_call(kind="chat", upstream_model="gemini-2.5-flash", base_url=fake.url, secret=SECRET)
    assert send(client, probe).status_code == 200
    assert fake.last_request is None or "generateContent" not in fake.last_request["path"]
