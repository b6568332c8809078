"""The OpenAI Responses and Images wire adapters: usage normalisation (golden, from OpenAI's
documented payloads), the Responses SSE reader (final events held, failures, the stored id),
image counting and the multipart encoding of an edit. Pure: no network."""

from __future__ import annotations

import json
from email import policy
from email.parser import BytesParser

import pytest

from billing.money import TokenUsage
from usage.gateway.endpoints.images import parse_multipart
from usage.gateway.providers.openai import (
    OpenAIImageEditsProvider,
    OpenAIImagesProvider,
    OpenAIResponsesProvider,
    ResponsesReader,
)
from usage.gateway.providers.openai.images import FilePart
from usage.gateway.state import RouteInfo

ROUTE = RouteInfo(
    id=1, provider="openai", base_url="https://api.openai.com/v1/", upstream_model="gpt-up", secret="sk-x", timeout=30.0
)

# The response of OpenAI's API reference ("Create a model response", reasoning example).
RESPONSE = {
    "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
    "object": "response",
    "created_at": 1741476542,
    "status": "completed",
    "model": "o4-mini-2025-04-16",
    "output": [
        {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Thinking"}]},
        {
            "id": "msg_1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "In a peaceful grove", "annotations": []}],
        },
        {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "get", "arguments": '{"a":1}'},
    ],
    "usage": {
        "input_tokens": 328,
        "input_tokens_details": {"cached_tokens": 128},
        "output_tokens": 52,
        "output_tokens_details": {"reasoning_tokens": 20},
        "total_tokens": 380,
    },
}


def sse(kind: str, data: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps({"type": kind, **data}).encode() + b"\n\n"


def test_a_responses_reply_is_normalised_like_chat_cached_tokens_taken_out():
    reply = OpenAIResponsesProvider().reply(json.dumps(RESPONSE).encode())
    assert reply.usage == TokenUsage(input_tokens=200, cached_input_tokens=128, output_tokens=52, reasoning_tokens=20)
    # text of every kind of output item: summary, message text, function name and arguments
    assert reply.output_bytes == len("Thinking") + len("In a peaceful grove") + len("get") + len('{"a":1}')
    assert OpenAIResponsesProvider().stored_id(reply.data, None) == RESPONSE["id"]


def test_the_responses_call_goes_to_responses_with_the_upstream_model():
    body = {"model": "gpt-5", "input": "Hi"}
    call = OpenAIResponsesProvider().call(body, route=ROUTE, stream=True, client_headers={})
    assert (call.method, call.url) == ("POST", "https://api.openai.com/v1/responses")
    assert json.loads(call.body or b"") == {
        "model": "gpt-up",
        "input": "Hi",
    }  # no stream_options: not a Responses field
    assert call.headers["Authorization"] == "Bearer sk-x"


@pytest.mark.parametrize("piece", [1, 7, 10_000])
def test_the_reader_counts_output_holds_the_final_event_and_keeps_the_id(piece):
    created = {"response": {"id": "resp_1", "status": "in_progress", "usage": None}}
    stream = (
        sse("response.created", created)
        + sse("response.output_text.delta", {"delta": "Héllo", "item_id": "msg_1"})
        + b": keep-alive\n\n"
        + sse("response.function_call_arguments.delta", {"delta": '{"a"', "item_id": "fc_1"})
        + sse("response.completed", {"response": RESPONSE | {"id": "resp_1"}})
    )
    reader, events = ResponsesReader(), []
    for start in range(0, len(stream), piece):
        events += reader.feed(stream[start : start + piece])
    assert [e.name for e in events] == [
        "response.created",
        "response.output_text.delta",
        "",
        "response.function_call_arguments.delta",
        "response.completed",
    ]
    assert [e.final for e in events] == [False, False, False, False, True]
    assert b"".join(e.raw for e in events) == stream  # untouched bytes, for the pass-through
    assert (reader.output_events, reader.output_chars) == (2, len("Héllo".encode()) + len('{"a"'))
    assert reader.completed and reader.upstream_error is None
    assert reader.usage == TokenUsage(input_tokens=200, cached_input_tokens=128, output_tokens=52, reasoning_tokens=20)
    assert OpenAIResponsesProvider().stored_id(None, reader) == "resp_1"


def test_an_incomplete_response_is_a_final_success():
    reader = ResponsesReader()
    events = reader.feed(sse("response.incomplete", {"response": RESPONSE | {"status": "incomplete"}}))
    assert events[0].final and reader.completed and reader.upstream_error is None


@pytest.mark.parametrize(
    ("kind", "data", "message"),
    [
        ("response.failed", {"response": {"id": "r", "error": {"code": "server_error", "message": "boom"}}}, "boom"),
        ("error", {"code": "rate_limit_exceeded", "message": "slow down", "param": None}, "slow down"),
        ("error", {"error": {"type": "server_error", "message": "nested"}}, "nested"),
    ],
)
def test_a_failure_inside_the_stream_stops_it_and_is_not_forwarded(kind, data, message):
    reader = ResponsesReader()
    before = sse("response.output_text.delta", {"delta": "partial"})
    events = reader.feed(before + sse(kind, data) + sse("response.output_text.delta", {"delta": "never"}))
    assert [e.raw for e in events] == [before]
    assert reader.upstream_error is not None and reader.upstream_error.message == message
    assert not reader.completed


# --- images ----------------------------------------------------------------------------------------

# gpt-image-1's generation answer, as the Images API reference shows it (b64 shortened).
IMAGES = {
    "created": 1713833628,
    "data": [{"b64_json": "iVBORw0KGgo="}, {"b64_json": "iVBORw0KGgo="}],
    "usage": {
        "total_tokens": 4210,
        "input_tokens": 50,
        "output_tokens": 4160,
        "input_tokens_details": {"text_tokens": 40, "image_tokens": 10},
    },
}


def test_an_images_reply_counts_images_and_bills_no_image_tokens_as_output():
    reply = OpenAIImagesProvider().reply(json.dumps(IMAGES).encode())
    # the image's own 4,160 tokens are in the per-image price: output 0; the prompt (text and
    # input image tokens) is input
    assert reply.usage == TokenUsage(input_tokens=50, output_tokens=0, images=2)


def test_an_images_reply_without_usage_still_counts_its_images():
    reply = OpenAIImagesProvider().reply(json.dumps({"created": 1, "data": [{"url": "https://x/1.png"}]}).encode())
    assert (reply.usage, reply.images, reply.output_bytes) == (None, 1, 0)  # the lifecycle estimates the prompt


def test_an_edit_is_sent_as_multipart_that_reads_back_the_same():
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20
    body = {
        "model": "gpt-image-2",
        "prompt": 'Make it "blue"',
        "n": 2,
        "image": [FilePart("a.png", "image/png", png), FilePart('b"\r\n.png', "image/png", png)],
        "mask": FilePart("mask.png", "image/png", png),
    }
    call = OpenAIImageEditsProvider().call(dict(body), route=ROUTE, stream=False, client_headers={})
    assert call.url == "https://api.openai.com/v1/images/edits"
    content_type = call.headers["Content-Type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + (call.body or b"")
    )
    names = [part.get_param("name", header="content-disposition") for part in message.iter_parts()]
    assert names == ["model", "prompt", "n", "image[]", "image[]", "mask"]
    # the gateway's own parser reads it back to the same request (the upstream model set)
    again = parse_multipart(call.body or b"", content_type)
    assert again["model"] == "gpt-up" and again["prompt"] == 'Make it "blue"' and again["n"] == 2
    assert [part.data for part in again["image"]] == [png, png] and again["mask"].data == png
    assert again["image"][1].filename == "b%22.png"  # a quote or a line break cannot break the header
