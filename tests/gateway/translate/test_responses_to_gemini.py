"""Golden tests: OpenAI Responses client ↔ Gemini API (generateContent) upstream.

Pure: no database, no network. Gemini payloads follow the shapes of real GenerateContentResponse
replies and `streamGenerateContent?alt=sse` chunks; every reply and stream event is checked
against the official `openai` SDK types, and every stream is replayed through the SDK's own
accumulator (ResponseStreamState).
"""

from __future__ import annotations

import copy
import itertools

import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from openbili.core.errors import InvalidRequest
from usage.gateway.providers.base import Event
from usage.gateway.translate import chat_to_gemini
from usage.gateway.translate import responses_request as rr
from usage.gateway.translate import responses_to_gemini as t

LIMIT = 8192
NOW = 1_750_000_000
EVENTS = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(autouse=True)
def frozen(monkeypatch):
    monkeypatch.setattr(rr.time, "time", lambda: NOW + 0.75)
    counter = itertools.count(1)
    monkeypatch.setattr(rr, "new_id", lambda prefix: f"{prefix}_{next(counter)}")
    monkeypatch.setattr(t, "_new_call_id", lambda: "call_gen")


def translate(body):
    return t.request(body, max_output_tokens=LIMIT)


def rejected(body, *, param, says=""):
    with pytest.raises(InvalidRequest) as caught:
        translate(body)
    assert caught.value.param == param
    assert says in caught.value.message
    return caught.value


def user(content):
    return {"role": "user", "content": content}


# ------------------------------------------------------------------------------------------------
# request
# ------------------------------------------------------------------------------------------------


def test_a_string_input_is_one_user_content_with_the_default_max_output_tokens():
    assert translate({"model": "gemini-2.5-flash", "input": "Hello"}) == {
        "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
        "generationConfig": {"maxOutputTokens": LIMIT},
    }


def test_instructions_and_system_and_developer_messages_become_the_system_instruction_in_order():
    body = {
        "instructions": "Be terse.",
        "input": [
            user("Hi"),
            {"role": "developer", "content": [{"type": "input_text", "text": "Rule one."}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello", "annotations": []}],
            },
            {"role": "system", "content": "Rule two."},
            user("Again"),
        ],
    }

    out = translate(body)

    assert out["systemInstruction"] == {"parts": [{"text": "Be terse."}, {"text": "Rule one."}, {"text": "Rule two."}]}
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "Hello"}]},
        {"role": "user", "parts": [{"text": "Again"}]},
    ]


def test_a_tool_loop_becomes_function_calls_and_named_function_responses():
    body = {
        "input": [
            user("Weather in Paris and Rome?"),
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Two calls."}]},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "21C"}]},
            {"type": "function_call_output", "call_id": "other", "name": "clock", "output": "noon"},
        ]
    }

    assert translate(body)["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "skip_thought_signature_validator",  # Gemini 3 needs one
                },
                {"functionCall": {"name": "weather", "args": {"city": "Rome"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "weather", "response": {"result": "18C"}}},
                {"functionResponse": {"name": "weather", "response": {"result": "21C"}}},
                {"functionResponse": {"name": "clock", "response": {"result": "noon"}}},
            ],
        },
    ]


def test_images_and_a_pdf():
    body = {
        "input": [
            user(
                [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
                    {"type": "input_image", "image_url": "https://example.com/cat.jpg?x=1"},
                    {"type": "input_image", "image_url": "https://example.com/photo"},
                    {"type": "input_file", "filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
                ]
            )
        ]
    }

    assert translate(body)["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg?x=1"}},
        {"fileData": {"fileUri": "https://example.com/photo"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
    ]


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"type": "item_reference", "id": "msg_1"}, "input[1]"),
        ({"type": "file_search_call", "id": "fs_1"}, "input[1]"),
        ({"type": "function_call_output", "call_id": "nowhere", "output": "x"}, "input[1].call_id"),
        (
            {
                "type": "function_call_output",
                "call_id": "c",
                "name": "f",
                "output": [{"type": "input_image", "image_url": "https://x"}],
            },
            "input[1].output[0].type",
        ),
        (user([{"type": "input_image", "file_id": "file-1", "detail": "auto"}]), "input[1].content[0].file_id"),
        (user([{"type": "input_file", "file_url": "https://example.com/a.pdf"}]), "input[1].content[0]"),
        (user([{"type": "input_image", "image_url": "ftp://example.com/a.png"}]), "input[1].content[0].image_url"),
        ({"role": "user", "content": []}, "input[1].content"),
    ],
)
def test_input_it_cannot_carry_is_refused_naming_where(item, param):
    rejected({"input": [user("Hi"), item]}, param=param)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("previous_response_id", "resp_123"),
        ("conversation", {"id": "conv_123"}),
        ("prompt", {"id": "pmpt_1", "version": "2"}),
        ("background", True),
        ("store", True),
    ],
)
def test_features_needing_openai_stored_state_are_refused(field, value):
    rejected({"input": "Hi", field: value}, param=field, says="OpenAI route")


def test_tools_tool_choice_and_parallel_tool_calls():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    body = {
        "input": "Weather?",
        "tools": [
            {"type": "function", "name": "weather", "description": "Look it up", "parameters": schema, "strict": True},
            {"type": "function", "name": "now", "parameters": None, "strict": None},
        ],
        "tool_choice": {"type": "function", "name": "weather"},
        "parallel_tool_calls": False,  # accepted, not carried (see the module docstring)
    }

    out = translate(body)

    assert out["tools"] == [
        {
            "functionDeclarations": [
                {"name": "weather", "description": "Look it up", "parametersJsonSchema": schema},
                {"name": "now"},
            ]
        }
    ]
    assert out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] is not schema
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}}
    body["tool_choice"] = "required"
    assert translate(body)["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    rejected({"input": "x", "tools": [{"type": "web_search"}]}, param="tools[0]", says="built-in tools")


def test_generation_config_sampling_json_schema_and_thinking():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {
        "input": "x",
        "max_output_tokens": 2048,
        "temperature": 1.5,
        "top_p": 0.9,
        "text": {"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}},
        "reasoning": {"effort": "high", "summary": "auto"},
    }

    config = translate(body)["generationConfig"]

    assert config == {
        "maxOutputTokens": 2048,
        "temperature": 1.5,
        "topP": 0.9,
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
        "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True},
    }
    assert config["responseJsonSchema"] is not schema


def test_json_object_and_thinking_variants():
    assert translate({"input": "x", "text": {"format": {"type": "json_object"}}})["generationConfig"] == {
        "maxOutputTokens": LIMIT,
        "responseMimeType": "application/json",
    }
    low = translate({"input": "x", "reasoning": {"effort": "low"}})["generationConfig"]["thinkingConfig"]
    assert low == {"thinkingBudget": chat_to_gemini.THINKING_BUDGET["low"]}
    assert translate({"input": "x", "reasoning": {"effort": "none"}})["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": 0
    }
    summary_only = translate({"input": "x", "reasoning": {"summary": "detailed"}})["generationConfig"]
    assert summary_only["thinkingConfig"] == {"includeThoughts": True}
    rejected({"input": "x", "temperature": 2.5}, param="temperature")
    rejected({"input": "x", "text": {"format": {"type": "json_schema", "name": "x"}}}, param="text.format.schema")


def test_ignored_fields_pass_and_the_body_is_never_mutated():
    body = {
        "input": [user([{"type": "input_text", "text": "Hi"}])],
        "metadata": {"k": "v"},
        "user": "u-1",
        "safety_identifier": "u-1",
        "service_tier": "flex",
        "truncation": "auto",
        "include": ["reasoning.encrypted_content"],
        "stream": True,
        "store": False,
    }
    before = copy.deepcopy(body)

    assert translate(body) == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "generationConfig": {"maxOutputTokens": LIMIT},
    }
    assert body == before


# ------------------------------------------------------------------------------------------------
# response
# ------------------------------------------------------------------------------------------------

REQUEST = {"model": "gemini-2.5-pro", "input": "Hi", "temperature": 0.5}
USAGE = {"promptTokenCount": 20, "candidatesTokenCount": 6, "thoughtsTokenCount": 10, "cachedContentTokenCount": 8}


def reply(parts, finish="STOP", usage=USAGE):
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-pro",
        "responseId": "abc",
    }


def test_a_reply_with_thoughts_text_and_a_call_golden():
    data = reply(
        [
            {"text": "Thinking it over.", "thought": True},
            {"text": "Hello"},
            {"text": " there", "thoughtSignature": "c2ln"},
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
        ]
    )

    out = t.response(data, request=REQUEST)

    assert out["model"] == "gemini-2.5-pro"
    assert out["status"] == "completed"
    assert out["temperature"] == 0.5
    assert out["output"] == [
        {"id": "rs_2", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Thinking it over."}]},
        {
            "id": "msg_3",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello there", "annotations": [], "logprobs": []}],
        },
        {
            "id": "fc_4",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_gen",
            "name": "weather",
            "arguments": '{"city": "Paris"}',
        },
    ]
    assert out["usage"] == {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
        "output_tokens": 16,
        "output_tokens_details": {"reasoning_tokens": 10},
        "total_tokens": 36,
    }
    assert Response.model_validate(out).output_text == "Hello there"


def test_tool_use_prompt_tokens_count_as_input():
    out = t.response(
        reply([{"text": "x"}], usage={"promptTokenCount": 5, "toolUsePromptTokenCount": 3}), request=REQUEST
    )
    assert out["usage"]["input_tokens"] == 8


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("MAX_TOKENS", "max_output_tokens"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("OTHER", None),
    ],
)
def test_finish_reasons(finish, reason):
    out = t.response(reply([{"text": "x"}], finish=finish), request=REQUEST)

    assert out["status"] == ("incomplete" if reason else "completed")
    assert out["incomplete_details"] == ({"reason": reason} if reason else None)
    Response.model_validate(out)


def test_a_blocked_prompt_is_incomplete_with_no_output():
    data = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}}

    out = t.response(data, request=REQUEST)

    assert (out["status"], out["incomplete_details"], out["output"]) == ("incomplete", {"reason": "content_filter"}, [])
    Response.model_validate(out)


# ------------------------------------------------------------------------------------------------
# stream
# ------------------------------------------------------------------------------------------------


def chunk(parts=None, finish=None, usage=None, **extra):
    data: dict = {"modelVersion": "gemini-2.5-pro", "responseId": "abc", **extra}
    if parts is not None:
        candidate: dict = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        data["candidates"] = [candidate]
    if usage:
        data["usageMetadata"] = usage
    return Event(raw=b"", data=data)


def run(events, request=REQUEST):
    stream = t.Stream(client_wants_usage=True, request=request)
    out = [e for event in events for e in stream.feed(event)]
    parsed = [EVENTS.validate_python(e) for e in out]
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert out[-1]["type"] in ("response.completed", "response.incomplete")
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in parsed:
        state.handle_event(event)
    Response.model_validate(out[-1]["response"])
    return out


def test_a_stream_of_thoughts_text_and_a_call_golden():
    out = run(
        [
            chunk([{"text": "Hmm, ", "thought": True}], usage={"promptTokenCount": 9}),
            chunk([{"text": "weather.", "thought": True}]),
            chunk([{"text": "Let me "}]),
            chunk(
                [
                    {"text": "check."},
                    {"functionCall": {"id": "fc-upstream", "name": "weather", "args": {"city": "Rome"}}},
                ]
            ),
            chunk(
                [{"text": "", "thoughtSignature": "c2ln"}],
                finish="STOP",
                usage={"promptTokenCount": 9, "candidatesTokenCount": 7},
            ),
        ]
    )

    assert [e["type"] for e in out] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert out[3] == {
        "type": "response.reasoning_summary_part.added",
        "sequence_number": 3,
        "item_id": "rs_2",
        "output_index": 0,
        "summary_index": 0,
        "part": {"type": "summary_text", "text": ""},
    }
    assert out[13]["text"] == "Let me check."
    assert out[16]["item"]["call_id"] == "fc-upstream"
    final = out[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message", "function_call"]
    assert final["output"][2]["arguments"] == '{"city": "Rome"}'
    assert final["usage"]["input_tokens"] == 9
    assert final["usage"]["output_tokens"] == 7
    assert final["model"] == "gemini-2.5-pro"


def test_a_stream_stopped_by_max_tokens_or_a_filter_ends_incomplete():
    out = run([chunk([{"text": "Once"}]), chunk([{"text": " upon"}], finish="MAX_TOKENS")])
    assert out[-1]["type"] == "response.incomplete"
    assert out[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out[-1]["response"]["output"][0]["content"][0]["text"] == "Once upon"

    filtered = run([chunk([{"text": "I"}]), chunk([], finish="SAFETY")])
    assert filtered[-1]["response"]["incomplete_details"] == {"reason": "content_filter"}


def test_a_blocked_prompt_stream_is_created_then_incomplete():
    out = run([Event(raw=b"", data={"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})])
    assert [e["type"] for e in out] == ["response.created", "response.in_progress", "response.incomplete"]


def test_an_error_chunk_and_anything_after_the_end_produce_nothing():
    stream = t.Stream(client_wants_usage=False, request=REQUEST)
    assert stream.feed(Event(raw=b"", data={"error": {"code": 503, "message": "overloaded"}})) == []
    assert stream.feed(chunk([{"text": "x"}], finish="STOP"))[-1]["type"] == "response.completed"
    assert stream.feed(chunk([{"text": "late"}], usage={"promptTokenCount": 1})) == []
    assert stream.feed(Event(raw=b": ping\n\n")) == []


def test_stream_and_non_stream_build_the_same_output():
    parts = [{"text": "Plan.", "thought": True}, {"text": "Hi"}, {"functionCall": {"name": "f", "args": {}}}]
    streamed = run([chunk([p]) for p in parts] + [chunk([], finish="STOP", usage=USAGE)])[-1]["response"]
    whole = t.response(reply(parts), request=REQUEST)

    def shape(response):
        return [{k: v for k, v in item.items() if k != "id"} for item in response["output"]], response["usage"]

    assert shape(streamed) == shape(whole)
