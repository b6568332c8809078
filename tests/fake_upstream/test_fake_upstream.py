"""The fake upstream speaks each provider's wire format well enough for the official SDKs, and its
scripted faults surface as the errors a real client would see."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import aiohttp
import anthropic
import openai
import pytest

try:  # the SDKs' HTTP client (renamed httpx2 in recent SDK releases)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

from openbili.fake_upstream import PNG_BYTES, FakeUpstream, Scenario, count_words, serve

CHAT = [{"role": "user", "content": "one two three"}]
CLAUDE = "claude-fake-1"


def oai(fake, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-test", max_retries=0, **kw)


def claude(fake, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0, **kw)


def sse_events(raw: bytes, sep: bytes = b"\n\n") -> list[dict]:
    """Parse SSE text into [{"event": ..., "data": ...}] (data JSON-decoded unless [DONE])."""
    out = []
    for block in raw.split(sep):
        if not block.strip():
            continue
        ev: dict = {}
        for line in block.decode().splitlines():
            name, _, value = line.partition(": ")
            ev[name] = value
        if "data" in ev and ev["data"] != "[DONE]":
            ev["data"] = json.loads(ev["data"])
        out.append(ev)
    return out


async def post(url: str, body: dict, headers: dict | None = None, **kw) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers or {}, **kw) as r:
        return r.status, dict(r.headers), await r.read()


BEARER = {"Authorization": "Bearer sk-test"}
ANTHROPIC_HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


# --------------------------------------------------------------------------------------------------
# OpenAI Chat Completions
# --------------------------------------------------------------------------------------------------


def test_chat_non_stream_parses_with_sdk(fake_upstream):
    r = oai(fake_upstream).chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "gpt-4o-mini"
    assert r.choices[0].message.content == "Hello from the fake upstream. This is a"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 3
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == 11
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    assert r.system_fingerprint == "fp_fake"


async def test_chat_non_stream_raw_fields(fake_upstream):
    status, headers, raw = await post(
        fake_upstream.url + "/v1/chat/completions", {"model": "m", "messages": CHAT}, BEARER
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    body = json.loads(raw)
    choice = body["choices"][0]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": choice["message"]["content"], "refusal": None, "annotations": []},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert body["usage"]["completion_tokens_details"] == {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}
    assert isinstance(body["created"], int)


def test_chat_any_path_prefix_and_max_tokens(fake_upstream):
    client = openai.OpenAI(base_url=fake_upstream.url + "/openai/v1", api_key="x", max_retries=0)
    r = client.chat.completions.create(model="gpt-4o", messages=CHAT, max_completion_tokens=3)
    assert r.choices[0].message.content == "Hello from the"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    r = client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=2)
    assert r.usage.completion_tokens == 2
    assert fake_upstream.requests[-1]["path"] == "/openai/v1/chat/completions"
    assert fake_upstream.requests[-1]["json"]["max_tokens"] == 2


def test_prompt_token_formula():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a b c"}, {"type": "image_url", "image_url": {}}]},
    ]
    assert count_words(messages) == 5


def test_chat_stream_without_usage(fake_upstream):
    stream = oai(fake_upstream).chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the fake upstream. This is a"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)


async def test_chat_stream_raw_with_include_usage(fake_upstream):
    body = {"model": "m", "messages": CHAT, "stream": True, "stream_options": {"include_usage": True}}
    status, headers, raw = await post(fake_upstream.url + "/v1/chat/completions", body, BEARER)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == {"data": "[DONE]"}
    chunks = [e["data"] for e in events[:-1]]
    assert len(chunks) == 1 + 8 + 1 + 1  # role, content pieces, finish, usage
    assert all("usage" in c for c in chunks)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert chunks[-1]["usage"]["prompt_tokens"] == 3


def test_chat_stream_with_include_usage_sdk(fake_upstream):
    stream = oai(fake_upstream).chat.completions.create(
        model="gpt-4o-mini", messages=CHAT, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == 11


async def test_stream_chunks_are_flushed_incrementally(fake_upstream):
    fake_upstream.configure(chunks=3, chunk_delay_ms=80)
    body = {"model": "m", "messages": CHAT, "stream": True}
    arrivals = []
    async with (
        aiohttp.ClientSession() as s,
        s.post(fake_upstream.url + "/v1/chat/completions", json=body, headers=BEARER) as r,
    ):
        t0 = time.monotonic()
        async for line in r.content:
            if line.startswith(b"data: "):
                arrivals.append(time.monotonic() - t0)
    assert len(arrivals) == 1 + 3 + 1 + 1
    assert arrivals[0] < 0.06  # the role chunk is not held back
    assert arrivals[-1] - arrivals[0] >= 0.2  # pieces arrive spread over the chunk delays


def test_chat_tool_call_non_stream_and_stream(fake_upstream):
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    client = oai(fake_upstream)
    fake_upstream.script(tool_call={"arguments": {"city": "Paris"}})
    r = client.chat.completions.create(model="gpt-4o", messages=CHAT, tools=tools)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert fake_upstream.last_request["json"]["tools"] == tools  # recorded as received

    fake_upstream.script(tool_call=True)
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=CHAT, tools=tools, stream=True))
    first = chunks[0].choices[0].delta.tool_calls[0]
    assert first.id.startswith("call_")
    assert first.function.name == "get_weather"
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments for c in chunks if c.choices[0].delta.tool_calls)
    assert json.loads(args) == {}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_content_and_tokens_override(fake_upstream):
    fake_upstream.script(content="Bonjour le monde", tokens={"prompt": 100, "cached": 40, "reasoning": 7})
    r = oai(fake_upstream).chat.completions.create(model="o3", messages=CHAT)
    assert r.choices[0].message.content == "Bonjour le monde"
    assert r.usage.prompt_tokens == 100
    assert r.usage.prompt_tokens_details.cached_tokens == 40
    assert r.usage.completion_tokens == 3 + 7  # pieces + reasoning
    assert r.usage.completion_tokens_details.reasoning_tokens == 7
    with pytest.raises(ValueError, match="unknown tokens key"):
        Scenario(tokens={"bogus": 1})


def test_no_usage(fake_upstream):
    client = oai(fake_upstream)
    fake_upstream.script(no_usage=True)
    assert client.chat.completions.create(model="m", messages=CHAT).usage is None
    fake_upstream.script(no_usage=True)
    chunks = list(
        client.chat.completions.create(model="m", messages=CHAT, stream=True, stream_options={"include_usage": True})
    )
    assert all(c.choices for c in chunks)  # no usage-only chunk
    assert all(c.usage is None for c in chunks)


def test_models_list(fake_upstream):
    ids = [m.id for m in oai(fake_upstream).models.list()]
    assert "gpt-4o-mini" in ids


async def test_missing_bearer_is_401_in_openai_format(fake_upstream):
    status, _, raw = await post(fake_upstream.url + "/v1/chat/completions", {"model": "m", "messages": CHAT})
    assert status == 401
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "tools": True}, BEARER),
        ("/v1/messages", {"model": CLAUDE, "max_tokens": 5, "messages": CHAT, "tools": 1.5}, ANTHROPIC_HEADERS),
    ],
)
async def test_tools_that_are_no_list_are_a_400_not_a_crash(fake_upstream, path, body, headers):
    # the gateway passes `tools` through unchecked: a real upstream refuses it (the /v1 fuzz
    # found the fake answering 500, which the gateway then reported as the upstream failing)
    status, _, raw = await post(fake_upstream.url + path, body, headers)
    assert status == 400
    assert "tools" in raw.decode()


def test_scenario_api_key(fake_upstream):
    fake_upstream.script(api_key="right")
    with pytest.raises(openai.AuthenticationError):
        oai(fake_upstream).chat.completions.create(model="m", messages=CHAT)


# --------------------------------------------------------------------------------------------------
# OpenAI Images and Responses
# --------------------------------------------------------------------------------------------------


def test_images_b64_and_url(fake_upstream):
    client = oai(fake_upstream)
    r = client.images.generate(model="gpt-image-1", prompt="a red square", n=2, quality="low")
    assert len(r.data) == 2
    assert base64.b64decode(r.data[0].b64_json) == PNG_BYTES
    assert PNG_BYTES.startswith(b"\x89PNG\r\n\x1a\n")
    assert r.usage.input_tokens == 3
    assert r.usage.input_tokens_details.text_tokens == 3
    assert r.usage.input_tokens_details.image_tokens == 0
    assert r.usage.output_tokens == 2 * 272
    assert r.usage.total_tokens == 3 + 544

    r = client.images.generate(model="dall-e-3", prompt="x", response_format="url")
    url = r.data[0].url
    assert url.startswith(fake_upstream.url + "/files/") and url.endswith(".png")
    with urllib.request.urlopen(url) as resp:
        assert resp.read() == PNG_BYTES


def test_responses_non_stream(fake_upstream):
    r = oai(fake_upstream).responses.create(model="gpt-4o", input="say hello please", instructions="be nice")
    assert r.object == "response"
    assert r.status == "completed"
    assert r.output[0].type == "message"
    assert r.output[0].content[0].type == "output_text"
    assert r.output_text == "Hello from the fake upstream. This is a"
    assert r.usage.input_tokens == 5
    assert r.usage.output_tokens == 8
    assert r.usage.total_tokens == 13
    assert r.usage.input_tokens_details.cached_tokens == 0
    assert r.usage.output_tokens_details.reasoning_tokens == 0


def test_responses_stream(fake_upstream):
    events = list(oai(fake_upstream).responses.create(model="gpt-4o", input="hi", stream=True))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[4:12] == ["response.output_text.delta"] * 8
    assert types[12:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == events[12].text
    final = events[-1].response
    assert final.status == "completed"
    assert final.usage.output_tokens == 8
    assert final.usage.input_tokens == 1


async def test_responses_stream_raw_event_names_and_max_output(fake_upstream):
    body = {"model": "gpt-4o", "input": "hi", "stream": True, "max_output_tokens": 2}
    _, _, raw = await post(fake_upstream.url + "/v1/responses", body, BEARER)
    events = sse_events(raw)
    assert all(e["event"] == e["data"]["type"] for e in events)
    last = events[-1]["data"]
    assert last["type"] == "response.incomplete"  # as OpenAI does when max_output_tokens cuts the reply
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["usage"]["output_tokens"] == 2


# --------------------------------------------------------------------------------------------------
# Anthropic Messages
# --------------------------------------------------------------------------------------------------


def test_anthropic_non_stream(fake_upstream):
    m = claude(fake_upstream).messages.create(
        model=CLAUDE, max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hello there"}]
    )
    assert m.type == "message"
    assert m.id.startswith("msg_")
    assert m.content[0].text == "Hello from the fake upstream. This is a"
    assert m.stop_reason == "end_turn"
    assert m.usage.input_tokens == 4
    assert m.usage.output_tokens == 8
    assert m.usage.cache_read_input_tokens == 0
    assert m.usage.cache_creation_input_tokens == 0
    headers = fake_upstream.last_request["headers"]
    # this SDK generation sends the key as a Bearer token; older ones use x-api-key (both accepted)
    assert "sk-ant-test" in (headers.get("x-api-key"), headers.get("authorization", "").removeprefix("Bearer "))
    assert "anthropic-version" in headers


def test_anthropic_stream_final_message(fake_upstream):
    fake_upstream.script(tokens={"cache_read": 30, "cache_creation": 5})
    with claude(fake_upstream).messages.stream(
        model=CLAUDE, max_tokens=3, messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the"
    assert final.stop_reason == "max_tokens"
    assert final.usage.input_tokens == 1
    assert final.usage.output_tokens == 3
    assert final.usage.cache_read_input_tokens == 30
    assert final.usage.cache_creation_input_tokens == 5


async def test_anthropic_stream_raw_events(fake_upstream):
    body = {"model": CLAUDE, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    _, _, raw = await post(fake_upstream.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    events = sse_events(raw)
    assert [e["event"] for e in events] == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 8,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(e["event"] == e["data"]["type"] for e in events)
    start = events[0]["data"]["message"]
    assert start["usage"]["output_tokens"] == 1
    assert start["usage"]["input_tokens"] == 1
    assert events[3]["data"]["delta"] == {"type": "text_delta", "text": "Hello"}
    assert events[-2]["data"]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2]["data"]["usage"] == {"output_tokens": 8}


def test_anthropic_tool_use_stream(fake_upstream):
    fake_upstream.script(tool_call={"arguments": {"q": "weather"}})
    tools = [{"name": "search", "description": "d", "input_schema": {"type": "object"}}]
    with claude(fake_upstream).messages.stream(
        model=CLAUDE, max_tokens=50, tools=tools, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use"
    assert final.content[0].name == "search"
    assert final.content[0].input == {"q": "weather"}


async def test_anthropic_auth_and_version_headers(fake_upstream):
    url = fake_upstream.url + "/v1/messages"
    body = {"model": CLAUDE, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    status, _, raw = await post(url, body, {"anthropic-version": "2023-06-01"})
    assert status == 401
    assert json.loads(raw)["error"]["type"] == "authentication_error"
    status, _, raw = await post(url, body, {"x-api-key": "k"})
    assert status == 400
    assert json.loads(raw)["type"] == "error"
    status, _, raw = await post(url, {"model": CLAUDE, "messages": []}, ANTHROPIC_HEADERS)
    assert status == 400  # max_tokens is required by Anthropic


def test_anthropic_errors(fake_upstream):
    fake_upstream.script(status=529)
    with pytest.raises(anthropic.OverloadedError) as exc:
        claude(fake_upstream).messages.create(model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["error"]["type"] == "overloaded_error"

    fake_upstream.script(status=529, error_after_chunks=2)
    stream_cm = claude(fake_upstream).messages.stream(
        model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "x"}]
    )
    with pytest.raises(anthropic.APIStatusError), stream_cm as stream:  # mid-stream `event: error`
        list(stream.text_stream)


# --------------------------------------------------------------------------------------------------
# Gemini
# --------------------------------------------------------------------------------------------------

GEMINI_BODY = {
    "systemInstruction": {"parts": [{"text": "be brief"}]},
    "contents": [{"role": "user", "parts": [{"text": "hello gemini"}]}],
}


async def test_gemini_non_stream(fake_upstream):
    url = fake_upstream.url + "/v1beta/models/gemini-2.5-flash:generateContent"
    status, _, raw = await post(url, GEMINI_BODY, {"x-goog-api-key": "g"})
    assert status == 200
    body = json.loads(raw)
    cand = body["candidates"][0]
    assert cand["content"] == {"parts": [{"text": "Hello from the fake upstream. This is a"}], "role": "model"}
    assert cand["finishReason"] == "STOP"
    assert cand["index"] == 0
    usage = body["usageMetadata"]
    assert (usage["promptTokenCount"], usage["candidatesTokenCount"], usage["totalTokenCount"]) == (4, 8, 12)
    assert "cachedContentTokenCount" not in usage
    assert body["modelVersion"] == "gemini-2.5-flash"
    assert body["responseId"]


async def test_gemini_stream_sse_and_key_param(fake_upstream):
    fake_upstream.script(tokens={"cached": 2, "reasoning": 5})
    url = fake_upstream.url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=g"
    body = {**GEMINI_BODY, "generationConfig": {"maxOutputTokens": 4}}
    status, headers, raw = await post(url, body)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert raw.endswith(b"\r\n\r\n")
    events = sse_events(raw, b"\r\n\r\n")
    assert set(events[0]) == {"data"}
    chunks = [e["data"] for e in events]
    assert len(chunks) == 4
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == "Hello from the fake"
    assert "finishReason" not in chunks[0]["candidates"][0]
    assert chunks[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    usage = chunks[-1]["usageMetadata"]
    assert usage["candidatesTokenCount"] == 4
    assert usage["thoughtsTokenCount"] == 5
    assert usage["cachedContentTokenCount"] == 2
    assert usage["totalTokenCount"] == 4 + 4 + 5
    assert fake_upstream.last_request["query"]["alt"] == "sse"


async def test_gemini_image_model(fake_upstream):
    url = fake_upstream.url + "/v1beta/models/gemini-2.5-flash-image:generateContent"
    _, _, raw = await post(url, GEMINI_BODY, {"x-goog-api-key": "g"})
    part = json.loads(raw)["candidates"][0]["content"]["parts"][0]
    assert part["inlineData"]["mimeType"] == "image/png"
    assert base64.b64decode(part["inlineData"]["data"]) == PNG_BYTES


async def test_gemini_errors(fake_upstream):
    url = fake_upstream.url + "/v1beta/models/gemini-2.5-flash:generateContent"
    status, _, raw = await post(url, GEMINI_BODY)
    assert status == 401
    assert json.loads(raw)["error"]["status"] == "UNAUTHENTICATED"
    fake_upstream.script(status=429, retry_after=7)
    status, headers, raw = await post(url, GEMINI_BODY, {"x-goog-api-key": "g"})
    assert status == 429
    assert headers["Retry-After"] == "7"
    assert json.loads(raw) == {
        "error": {"code": 429, "message": json.loads(raw)["error"]["message"], "status": "RESOURCE_EXHAUSTED"}
    }


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------


def test_503_is_internal_server_error(fake_upstream):
    fake_upstream.script(status=503)
    with pytest.raises(openai.InternalServerError) as exc:
        oai(fake_upstream).chat.completions.create(model="m", messages=CHAT)
    assert exc.value.status_code == 503
    assert exc.value.body["type"] == "server_error"
    # consumed: the next request succeeds
    assert oai(fake_upstream).chat.completions.create(model="m", messages=CHAT).choices


def test_429_with_retry_after(fake_upstream):
    fake_upstream.script(status=429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as exc:
        oai(fake_upstream).chat.completions.create(model="m", messages=CHAT)
    assert exc.value.response.headers["retry-after"] == "3"
    assert exc.value.code == "rate_limit_exceeded"


def test_error_body_carrying_usage(fake_upstream):
    fake_upstream.script(status=500, usage={"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16})
    with pytest.raises(openai.InternalServerError) as exc:
        oai(fake_upstream).chat.completions.create(model="m", messages=CHAT)
    assert exc.value.response.json()["usage"] == {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}

    fake_upstream.script(status=400, usage=True)  # computed from the request
    with pytest.raises(openai.BadRequestError) as exc:
        oai(fake_upstream).chat.completions.create(model="m", messages=CHAT)
    assert exc.value.response.json()["usage"]["prompt_tokens"] == 3


def test_cut_stream_raises(fake_upstream):
    fake_upstream.script(cut_after_chunks=3)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in oai(fake_upstream).chat.completions.create(model="m", messages=CHAT, stream=True):
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "Hello", " from", " the"]


def test_cut_non_stream_raises(fake_upstream):
    fake_upstream.script(cut_after_chunks=0)
    with pytest.raises(openai.APIConnectionError):
        oai(fake_upstream).chat.completions.create(model="m", messages=CHAT)


def test_cut_anthropic_stream_raises(fake_upstream):
    fake_upstream.script(cut_after_chunks=2)
    stream_cm = claude(fake_upstream).messages.stream(
        model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "x"}]
    )
    with pytest.raises((anthropic.APIConnectionError, httpx.RemoteProtocolError)), stream_cm as stream:
        list(stream.text_stream)


def test_slow_first_byte_times_out(fake_upstream):
    fake_upstream.script(delay_first_byte_ms=600)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        oai(fake_upstream, timeout=0.2).chat.completions.create(model="m", messages=CHAT)
    assert time.monotonic() - started < 0.55


def test_hang_times_out(fake_upstream):
    fake_upstream.script(hang=True)
    with pytest.raises(anthropic.APITimeoutError):
        claude(fake_upstream, timeout=0.2).messages.create(
            model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )


def test_chunk_delay_scenario_and_mid_stream_openai_error(fake_upstream):
    fake_upstream.script(chunk_delay_ms=30, status=500, error_after_chunks=2)
    started = time.monotonic()
    with pytest.raises(openai.APIError) as exc:
        list(oai(fake_upstream).chat.completions.create(model="m", messages=CHAT, stream=True))
    assert time.monotonic() - started >= 0.05
    assert exc.value.body["type"] == "server_error"


def test_scenarios_match_model_and_repeat(fake_upstream):
    client = oai(fake_upstream)
    fake_upstream.script(model="bad", status=502, times=2)
    assert client.chat.completions.create(model="good", messages=CHAT).choices
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="bad", messages=CHAT)
    assert client.chat.completions.create(model="bad", messages=CHAT).choices
    assert fake_upstream.pending == []


def test_scenarios_without_path_skip_models_probe(fake_upstream):
    fake_upstream.script(status=500)
    assert list(oai(fake_upstream).models.list())  # does not consume the scenario
    assert len(fake_upstream.pending) == 1
    fake_upstream.script(status=503, path="/models")
    fake_upstream.reset()
    assert fake_upstream.pending == []


def test_gate_holds_answers_until_opened(fake_upstream):
    import concurrent.futures

    fake_upstream.script(gate="g", times=3)
    client = oai(fake_upstream, timeout=10)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(client.chat.completions.create, model="m", messages=CHAT) for _ in range(3)]
        deadline = time.monotonic() + 10
        while fake_upstream.waiting_at("g") < 3:
            assert time.monotonic() < deadline, "the requests never reached the gate"
            time.sleep(0.01)
        assert not any(call.done() for call in calls)  # held, not answered
        urllib.request.urlopen(urllib.request.Request(fake_upstream.url + "/__fake__/gate/g", method="POST"))
        assert all(call.result().choices for call in calls)
    assert fake_upstream.waiting_at("g") == 0
    fake_upstream.reset()  # closes the gate again
    fake_upstream.script(gate="g")
    with pytest.raises(openai.APITimeoutError):
        oai(fake_upstream, timeout=0.3).chat.completions.create(model="m", messages=CHAT)


async def test_http_control_endpoints(fake_upstream):
    base = fake_upstream.url + "/__fake__"
    async with aiohttp.ClientSession() as s:
        async with s.post(base + "/script", json={"scenarios": [{"status": 503}, {"content": "scripted"}]}) as r:
            assert r.status == 200
            assert (await r.json())["queued"] == 2
        async with s.post(base + "/script", json={"nonsense": 1}) as r:
            assert r.status == 400
        async with s.get(base + "/script") as r:
            assert (await r.json())["scenarios"] == [{"status": 503}, {"content": "scripted"}]

    client = oai(fake_upstream)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=CHAT, max_tokens=7)
    assert client.chat.completions.create(model="m", messages=CHAT).choices[0].message.content == "scripted"

    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/requests") as r:
            recorded = (await r.json())["requests"]
        assert [x["json"].get("max_tokens") for x in recorded] == [7, None]
        assert recorded[0]["headers"]["authorization"] == "Bearer sk-test"
        async with s.post(base + "/reset") as r:
            assert r.status == 200
    assert fake_upstream.requests == []


# --------------------------------------------------------------------------------------------------
# Running modes
# --------------------------------------------------------------------------------------------------


async def test_serve_in_current_loop_without_recording():
    fake = await serve(chunks=2, record=False)
    try:
        status, _, raw = await post(fake.url + "/v1/chat/completions", {"model": "m", "messages": CHAT}, BEARER)
        assert status == 200
        assert json.loads(raw)["choices"][0]["message"]["content"] == "Hello from"
        assert fake.requests == []
    finally:
        await fake.astop()


def test_threaded_context_manager_stops_with_hanging_request():
    with FakeUpstream(latency_ms=1) as fake:
        fake.script(hang=True)

        async def fire() -> None:
            body = {"model": "m", "messages": CHAT}
            with pytest.raises(asyncio.TimeoutError):
                await post(fake.url + "/v1/chat/completions", body, BEARER, timeout=aiohttp.ClientTimeout(total=0.1))

        asyncio.run(fire())
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 1


def test_cli_runs_until_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "openbili.fake_upstream", "--port", "0", "--chunks", "2", "--no-record"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        r = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="m", messages=CHAT
        )
        assert r.choices[0].message.content == "Hello from"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
