"""POST /v1/chat/completions with stream=true: pass-through, usage, and failures mid-stream (§2.2)."""

from __future__ import annotations

import json
import math
import socket
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import openai
import pytest

from tests.gateway.support import MSG, assert_ids, assert_outcome, cost_of

PIECES = ["One", " two", " three", " four", " five"]


def sse_data(raw: bytes) -> list[bytes]:
    """The payloads of the `data:` events of an SSE body, in order."""
    events = []
    for event in raw.split(b"\n\n"):
        event = event.strip()
        if event.startswith(b"data:"):
            events.append(event[len(b"data:") :].strip())
    return events


def estimated_tokens(body: bytes, forwarded: list[bytes]) -> dict[str, int]:
    """The gateway's estimate when the upstream reported no usage: about 4 bytes a token, of the
    request body and of the text generated so far (not of the JSON around it)."""
    text = b"".join(
        (choice["delta"].get("content") or "").encode() for p in forwarded for choice in json.loads(p)["choices"]
    )
    return {"input_tokens": math.ceil(len(body) / 4), "output_tokens": math.ceil(len(text) / 4)}


# --- success ---------------------------------------------------------------------------------------


def test_sdk_stream_without_include_usage(gateway):
    # given pinned upstream usage
    gateway.upstream.script(tokens={"prompt": 100, "completion": 8})
    # when the customer streams without asking for usage
    raw = gateway.openai().chat.completions.with_raw_response.create(model="gpt-5", messages=MSG, stream=True)
    chunks = list(raw.parse())
    # then every chunk parses, the text is whole, and no usage chunk reached the client
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from the fake upstream. This is a"
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    # the upstream was asked for usage anyway
    sent = gateway.upstream.requests[-1]["json"]
    assert (sent["stream"], sent["stream_options"]) == (True, {"include_usage": True})
    request_id, _ = assert_ids(raw.headers)
    cost = cost_of(input_tokens=100, output_tokens=8)
    assert cost == Decimal("0.000205")
    row = assert_outcome(gateway, request_id, billing_result="billed", status=200, cost=cost)
    assert (row.stream, row.input_tokens, row.output_tokens, row.tokens_estimated) == (True, 100, 8, False)
    assert row.output_reached_client is True
    assert row.started_at <= row.first_byte_at <= row.finished_at


def test_sdk_stream_with_include_usage(gateway):
    gateway.upstream.script(tokens={"prompt": 1000, "cached": 400, "completion": 50, "reasoning": 20})
    raw = gateway.openai().chat.completions.with_raw_response.create(
        model="gpt-5", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    # then the last chunk is the usage chunk, exactly as OpenAI sends it
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (1000, 50)
    assert usage.prompt_tokens_details.cached_tokens == 400
    assert all(c.usage is None for c in chunks[:-1])
    assert gateway.upstream.requests[-1]["json"]["stream_options"] == {"include_usage": True}
    request_id, _ = assert_ids(raw.headers)
    row = assert_outcome(gateway, request_id, billing_result="billed", status=200, cost=Decimal("0.0013"))
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens, row.reasoning_tokens) == (600, 400, 50, 20)


def test_stream_options_of_the_client_are_kept(gateway):
    # include_usage=false is the client's choice: forwarded to the client as asked, upstream still counts
    gateway.upstream.script(tokens={"prompt": 100, "completion": 8})
    body = {"model": "gpt-5", "messages": MSG, "stream": True, "stream_options": {"include_usage": False}}
    response = gateway.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_data(response.content)
    assert events[-1] == b"[DONE]"
    assert all(json.loads(e).get("usage") is None for e in events[:-1])
    assert gateway.upstream.requests[-1]["json"]["stream_options"] == {"include_usage": True}
    request_id, _ = assert_ids(response.headers)
    assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=100, output_tokens=8)
    )


def test_raw_stream_chunks_arrive_as_the_upstream_sends_them(gateway):
    # given an upstream that takes 200 ms per piece (five pieces: about one second in all)
    gateway.upstream.script(content=PIECES, chunk_delay_ms=200, tokens={"prompt": 10, "completion": 5})
    body = {"model": "gpt-5", "messages": MSG, "stream": True}
    arrivals: list[tuple[float, bytes]] = []
    started = time.monotonic()
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {gateway.secret}"},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append((time.monotonic() - started, line.encode()))
        headers = response.headers
    total = arrivals[-1][0]
    # then the first chunk was read long before the upstream finished, and the rest trickled in
    assert total >= 0.9
    assert arrivals[0][0] < 0.4 * total
    content_times = [t for t, line in arrivals if b'"content":"' in line and b'"content":""' not in line]
    assert len(content_times) == 5
    assert content_times[0] < content_times[-1] - 0.5
    assert arrivals[-1][1] == b"data: [DONE]"
    request_id, _ = assert_ids(headers)
    assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=10, output_tokens=5)
    )


# --- failures --------------------------------------------------------------------------------------


def test_sdk_stream_cut_by_upstream_raises_and_is_failed_but_billable(gateway):
    # given an upstream that drops the connection after three pieces (no usage ever reported)
    gateway.upstream.script(cut_after_chunks=3, chunk_delay_ms=10)
    raw = gateway.openai().chat.completions.with_raw_response.create(model="gpt-5", messages=MSG, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in raw.parse():
            received.append(chunk)
    # then the SDK raised (it was told by an error event, not by a broken connection)
    assert type(caught.value) is openai.APIError
    assert caught.value.body["code"] == "upstream_stream_interrupted"
    assert "".join(c.choices[0].delta.content or "" for c in received) == "Hello from the"
    request_id, trace_id = assert_ids(raw.headers)
    assert (caught.value.body["request_id"], caught.value.body["trace_id"]) == (request_id, trace_id)
    row = gateway.row(request_id)
    assert row.tokens_estimated is True
    assert row.output_tokens > 0
    assert_outcome(
        gateway,
        request_id,
        billing_result="failed_but_billable",
        status=200,
        cost=cost_of(input_tokens=row.input_tokens, output_tokens=row.output_tokens),
        error_class="stream_interrupted",
        error_code="upstream_stream_interrupted",
    )
    assert row.output_reached_client is True
    assert row.client_disconnected_at is None


def test_raw_stream_cut_ends_with_an_error_event_and_no_done(gateway):
    gateway.upstream.script(cut_after_chunks=3, chunk_delay_ms=10)
    body = json.dumps({"model": "gpt-5", "messages": MSG, "stream": True}).encode()
    response = gateway.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    events = sse_data(response.content)
    assert b"[DONE]" not in events
    *forwarded, last = events
    assert len(forwarded) == 4  # the role chunk and three pieces
    error = json.loads(last)["error"]
    request_id, trace_id = assert_ids(response.headers)
    assert error["code"] == "upstream_stream_interrupted"
    assert (error["request_id"], error["trace_id"]) == (request_id, trace_id)
    assert set(error) == {"message", "type", "code", "param", "request_id", "trace_id"}
    # the tokens are estimated from what was streamed; billed exactly at that estimate
    tokens = estimated_tokens(body, forwarded)
    row = assert_outcome(
        gateway,
        request_id,
        billing_result="failed_but_billable",
        status=200,
        cost=cost_of(**tokens),
        error_class="stream_interrupted",
        error_code="upstream_stream_interrupted",
    )
    assert (row.input_tokens, row.output_tokens, row.tokens_estimated) == (
        tokens["input_tokens"],
        tokens["output_tokens"],
        True,
    )
    assert row.output_reached_client is True
    assert row.first_byte_at is not None


def test_upstream_error_event_mid_stream(gateway):
    # given an upstream that sends three pieces and then an error event
    gateway.upstream.script(error_after_chunks=3, status=500, message="overloaded mid-stream")
    body = json.dumps({"model": "gpt-5", "messages": MSG, "stream": True}).encode()
    response = gateway.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    events = sse_data(response.content)
    assert b"[DONE]" not in events
    *forwarded, last = events
    assert len(forwarded) == 4
    assert json.loads(last)["error"]["code"] == "upstream_stream_interrupted"
    request_id, _ = assert_ids(response.headers)
    tokens = estimated_tokens(body, forwarded)
    row = assert_outcome(
        gateway,
        request_id,
        billing_result="failed_but_billable",
        status=200,
        cost=cost_of(**tokens),
        error_class="stream_interrupted",
        error_code="upstream_stream_interrupted",
    )
    assert row.tokens_estimated is True and row.output_reached_client is True


def test_sdk_upstream_error_event_mid_stream_raises(gateway):
    gateway.upstream.script(error_after_chunks=2)
    stream = gateway.openai().chat.completions.create(model="gpt-5", messages=MSG, stream=True)
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert type(caught.value) is openai.APIError
    assert caught.value.body["code"] == "upstream_stream_interrupted"
    request_id = caught.value.body["request_id"]
    row = gateway.row(request_id)
    assert_outcome(
        gateway,
        request_id,
        billing_result="failed_but_billable",
        status=200,
        cost=cost_of(input_tokens=row.input_tokens, output_tokens=row.output_tokens),
        error_class="stream_interrupted",
        error_code="upstream_stream_interrupted",
    )


def test_stream_cut_right_after_it_began(gateway):
    # given an upstream that sends its (empty) role chunk and then drops the connection: the stream
    # had begun, so the upstream had read the prompt; no text was generated
    gateway.upstream.script(cut_after_chunks=0)
    body = json.dumps({"model": "gpt-5", "messages": MSG, "stream": True}).encode()
    response = gateway.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    events = sse_data(response.content)
    assert b"[DONE]" not in events
    *forwarded, last = events
    assert len(forwarded) == 1
    assert json.loads(last)["error"]["code"] == "upstream_stream_interrupted"
    request_id, _ = assert_ids(response.headers)
    tokens = estimated_tokens(body, forwarded)
    assert tokens["output_tokens"] == 0
    row = assert_outcome(
        gateway,
        request_id,
        billing_result="failed_but_billable",
        status=200,
        cost=cost_of(**tokens),
        error_class="stream_interrupted",
        error_code="upstream_stream_interrupted",
    )
    assert (row.input_tokens, row.output_tokens, row.tokens_estimated) == (tokens["input_tokens"], 0, True)


def test_client_disconnect_mid_stream_is_failed_but_billable(gateway):
    # given an upstream still streaming (200 ms a piece, eight pieces)
    gateway.upstream.script(chunk_delay_ms=200, tokens={"prompt": 100, "completion": 8})
    body = json.dumps({"model": "gpt-5", "messages": MSG, "stream": True}).encode()
    host, port = gateway.url.removeprefix("http://").split(":")
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {gateway.secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    # when the client reads two data events and then closes the connection
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while received.count(b"data:") < 2:
            data = sock.recv(65536)
            assert data, "the gateway closed the stream early"
            received += data
    head = received.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 200")
    request_id = next(
        line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("x-request-id:")
    )
    # then the row records the disconnect, and the consumed tokens are billed
    row = gateway.row(request_id)
    assert row.client_disconnected_at is not None
    assert row.started_at <= row.client_disconnected_at <= row.finished_at
    assert row.tokens_estimated is True  # the upstream never got to report its usage
    assert row.input_tokens == math.ceil(len(body) / 4)
    assert row.output_tokens > 0
    row = assert_outcome(
        gateway,
        request_id,
        billing_result="failed_but_billable",
        status=200,
        cost=cost_of(input_tokens=row.input_tokens, output_tokens=row.output_tokens),
        error_class="stream_interrupted",
        error_code="client_disconnected",
    )
    assert row.output_reached_client is True
    # the gateway stopped relaying once the client was gone (the whole answer takes 1.6 s)
    assert row.finished_at - row.started_at < timedelta(seconds=1.2)


def test_stream_without_upstream_usage_is_billed_at_the_estimate(gateway):
    # given an upstream that completes the stream but never reports usage
    gateway.upstream.script(no_usage=True)
    body = json.dumps({"model": "gpt-5", "messages": MSG, "stream": True}).encode()
    response = gateway.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    *forwarded, done = sse_data(response.content)
    assert done == b"[DONE]"
    tokens = estimated_tokens(body, forwarded)
    assert tokens["output_tokens"] == math.ceil(len(b"Hello from the fake upstream. This is a") / 4)
    request_id, _ = assert_ids(response.headers)
    row = assert_outcome(gateway, request_id, billing_result="billed", status=200, cost=cost_of(**tokens))
    assert row.tokens_estimated is True
