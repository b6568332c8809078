"""Golden tests: OpenAI Responses client ↔ Anthropic Messages upstream.

Pure: no database, no network. Anthropic payloads follow the shapes of real Messages API replies
and SSE streams; every reply and stream event is checked against the official `openai` SDK types,
and every stream is replayed through the SDK's own accumulator (ResponseStreamState).
"""

from __future__ import annotations

import copy
import itertools
import json

import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from openbili.core.errors import InvalidRequest
from usage.gateway.providers.base import Event
from usage.gateway.translate import responses_request as rr
from usage.gateway.translate import responses_to_anthropic as t

LIMIT = 8192  # the model's output limit, as the endpoint passes it
NOW = 1_750_000_000
EVENTS = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(autouse=True)
def frozen(monkeypatch):
    monkeypatch.setattr(rr.time, "time", lambda: NOW + 0.75)
    counter = itertools.count(1)
    monkeypatch.setattr(rr, "new_id", lambda prefix: f"{prefix}_{next(counter)}")


def translate(body):
    return t.request(body, max_output_tokens=LIMIT)


def rejected(body, *, param, says=""):
    with pytest.raises(InvalidRequest) as caught:
        translate(body)
    assert caught.value.param == param
    assert says in caught.value.message
    return caught.value


def text(value):
    return {"type": "text", "text": value}


def user(content):
    return {"role": "user", "content": content}


# ------------------------------------------------------------------------------------------------
# request: input
# ------------------------------------------------------------------------------------------------


def test_a_string_input_is_one_user_message_with_the_default_max_tokens_and_no_model():
    assert translate({"model": "claude-sonnet-4-6", "input": "Hello"}) == {
        "max_tokens": LIMIT,
        "messages": [{"role": "user", "content": [text("Hello")]}],
    }


def test_instructions_and_system_and_developer_messages_are_hoisted_in_order():
    body = {
        "instructions": "Be terse.",
        "input": [
            {"role": "developer", "content": "Rule one."},
            user("Hi"),
            {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Rule two."}]},
            user("Again"),
        ],
    }

    out = translate(body)

    assert out["system"] == [text("Be terse."), text("Rule one."), text("Rule two.")]
    assert out["messages"] == [{"role": "user", "content": [text("Hi"), text("Again")]}]


def test_instructions_alone_become_the_system_string():
    assert translate({"instructions": "Be terse.", "input": "Hi"})["system"] == "Be terse."


def test_a_tool_loop_replayed_from_output_items_becomes_alternating_turns():
    body = {
        "input": [
            user([{"type": "input_text", "text": "Weather in Paris and Rome?"}]),
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
            },
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "toolu_1",
                "name": "weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call", "call_id": "toolu_2", "name": "weather", "arguments": ""},
            {"type": "function_call_output", "call_id": "toolu_1", "output": "18C"},
            {
                "type": "function_call_output",
                "call_id": "toolu_2",
                "output": [
                    {"type": "input_text", "text": "See the map"},
                    {"type": "input_image", "image_url": "https://example.com/map.png", "detail": "auto"},
                ],
            },
            {"role": "assistant", "content": "Paris 18C."},
        ]
    }

    assert translate(body)["messages"] == [
        {"role": "user", "content": [text("Weather in Paris and Rome?")]},
        {
            "role": "assistant",
            "content": [
                text("Checking."),
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [
                        text("See the map"),
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/map.png"}},
                    ],
                },
            ],
        },
        {"role": "assistant", "content": [text("Paris 18C.")]},
    ]


def test_images_inline_and_by_url_and_a_pdf():
    body = {
        "input": [
            user(
                [
                    {"type": "input_text", "text": "What is in these?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"},
                    {"type": "input_image", "image_url": "https://example.com/cat.jpg"},
                    {"type": "input_file", "filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
                ]
            )
        ]
    }

    assert translate(body)["messages"][0]["content"] == [
        text("What is in these?"),
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
            "title": "r.pdf",
        },
    ]


def test_a_reasoning_item_this_translation_wrote_goes_back_as_the_thinking_block():
    body = {
        "input": [
            user("Add 2 and 2 with the tool."),
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "Use add."}],
                "encrypted_content": "anthropic.thinking.EqQBsig",
            },
            {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "anthropic.redacted.opaque"},
            {"type": "function_call", "call_id": "toolu_1", "name": "add", "arguments": '{"a":2,"b":2}'},
            {"type": "function_call_output", "call_id": "toolu_1", "output": "4"},
        ]
    }

    assert translate(body)["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "Use add.", "signature": "EqQBsig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 2, "b": 2}},
        ],
    }


def test_a_reasoning_item_from_another_upstream_is_dropped_not_sent_as_a_signature():
    body = {
        "input": [
            user("Hi"),
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAABopenai"},
            {"type": "reasoning", "id": "rs_2", "summary": [{"type": "summary_text", "text": "hm"}]},
            {"role": "assistant", "content": "Hello"},
        ]
    }

    assert translate(body)["messages"] == [
        {"role": "user", "content": [text("Hi")]},
        {"role": "assistant", "content": [text("Hello")]},
    ]


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"type": "item_reference", "id": "msg_1"}, "input[1]"),
        ({"type": "web_search_call", "id": "ws_1"}, "input[1]"),
        ({"type": "computer_call_output", "call_id": "c", "output": {}}, "input[1]"),
        ({"role": "tool", "content": "x"}, "input[1].role"),
        (user([{"type": "input_image", "file_id": "file-1", "detail": "auto"}]), "input[1].content[0].file_id"),
        (user([{"type": "input_file", "file_id": "file-1"}]), "input[1].content[0]"),
        (user([{"type": "input_file", "file_data": "data:text/plain;base64,aGk="}]), "input[1].content[0].file_data"),
        (user([{"type": "input_audio", "input_audio": {}}]), "input[1].content[0].type"),
        (user([{"type": "input_image", "image_url": "data:image/bmp;base64,Qk0="}]), "input[1].content[0].image_url"),
        ({"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}, "input[1].arguments"),
        ({"type": "function_call_output", "output": "x"}, "input[1].call_id"),
        (
            {"role": "assistant", "content": [{"type": "input_image", "image_url": "https://x"}]},
            "input[1].content[0].type",
        ),
    ],
)
def test_input_it_cannot_carry_is_refused_naming_where(item, param):
    rejected({"input": [user("Hi"), item]}, param=param)


def test_an_empty_input_is_refused():
    rejected({"input": []}, param="input")
    rejected({}, param="input")


# ------------------------------------------------------------------------------------------------
# request: stateful features, tools, options
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("previous_response_id", "resp_123"),
        ("conversation", "conv_123"),
        ("prompt", {"id": "pmpt_1"}),
        ("background", True),
        ("store", True),
    ],
)
def test_features_needing_openai_stored_state_are_refused_saying_to_send_the_input(field, value):
    error = rejected({"input": "Hi", field: value}, param=field, says="OpenAI route")
    assert "`input`" in error.message


def test_store_false_and_background_false_are_fine():
    assert translate({"input": "Hi", "store": False, "background": False})["messages"]


def test_function_tools_tool_choice_and_no_parallel_calls():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = {
        "input": "Weather?",
        "tools": [
            {"type": "function", "name": "weather", "description": "Look it up", "parameters": schema, "strict": True},
            {"type": "function", "name": "now", "parameters": None, "strict": False},
        ],
        "tool_choice": {"type": "function", "name": "weather"},
        "parallel_tool_calls": False,
    }

    out = translate(body)

    assert out["tools"] == [
        {"name": "weather", "description": "Look it up", "input_schema": schema},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert out["tools"][0]["input_schema"] is not schema  # nothing shared with the client's body
    assert out["tool_choice"] == {"type": "tool", "name": "weather", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("choice", "expected"), [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})]
)
def test_tool_choice_modes(choice, expected):
    body = {"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": choice}
    assert translate(body)["tool_choice"] == expected


@pytest.mark.parametrize(
    "kind", ["web_search", "file_search", "code_interpreter", "computer_use_preview", "mcp", "image_generation"]
)
def test_built_in_tools_are_refused(kind):
    rejected({"input": "x", "tools": [{"type": kind}]}, param="tools[0]", says="built-in tools")


def test_custom_free_form_tools_are_refused():
    rejected({"input": "x", "tools": [{"type": "custom", "name": "patch"}]}, param="tools[0]", says="custom")


def test_allowed_tools_tool_choice_is_refused():
    body = {"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "allowed_tools"}}
    rejected(body, param="tool_choice")


def test_sampling_limits_and_user():
    body = {"input": "x", "temperature": 0.2, "top_p": 0.9, "max_output_tokens": 100_000, "safety_identifier": "u-1"}

    out = translate(body)

    assert (out["temperature"], out["top_p"], out["max_tokens"]) == (0.2, 0.9, LIMIT)
    assert out["metadata"] == {"user_id": "u-1"}
    assert translate({"input": "x", "max_output_tokens": 50})["max_tokens"] == 50


def test_temperature_above_one_is_refused():
    rejected({"input": "x", "temperature": 1.5}, param="temperature", says="Anthropic's range")


def test_reasoning_effort_becomes_a_thinking_budget():
    out = translate({"input": "x", "reasoning": {"effort": "medium", "summary": "auto"}})
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 8192 - 1}
    assert "thinking" not in translate({"input": "x", "reasoning": {"effort": "minimal"}})


def test_reasoning_needs_room_and_refuses_what_thinking_forbids():
    rejected({"input": "x", "max_output_tokens": 500, "reasoning": {"effort": "low"}}, param="max_output_tokens")
    rejected({"input": "x", "temperature": 0.5, "reasoning": {"effort": "low"}}, param="temperature")
    forced = {
        "input": "x",
        "tools": [{"type": "function", "name": "f"}],
        "tool_choice": "required",
        "reasoning": {"effort": "low"},
    }
    rejected(forced, param="tool_choice")
    rejected({"input": "x", "reasoning": {"effort": "huge"}}, param="reasoning.effort")


def test_json_output_formats_are_refused_as_for_chat():
    schema = {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}
    rejected({"input": "x", "text": {"format": schema}}, param="text.format")
    rejected({"input": "x", "text": {"format": {"type": "json_object"}}}, param="text.format")
    assert translate({"input": "x", "text": {"format": {"type": "text"}, "verbosity": "medium"}})["messages"]


def test_include_values_it_can_honour_and_ignored_fields_pass():
    body = {
        "input": "x",
        "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
        "metadata": {"k": "v"},
        "service_tier": "auto",
        "stream_options": {"include_obfuscation": False},
        "prompt_cache_key": "k",
        "max_tool_calls": 3,
        "stream": True,
    }
    assert translate(body) == {
        "max_tokens": LIMIT,
        "messages": [{"role": "user", "content": [text("x")]}],
        "stream": True,
    }
    rejected({"input": "x", "include": ["message.output_text.logprobs"]}, param="include")
    rejected({"input": "x", "top_logprobs": 2}, param="top_logprobs")
    rejected({"input": "x", "text": {"verbosity": "low"}}, param="text.verbosity")


def test_the_clients_body_is_never_mutated():
    body = {
        "input": [
            user([{"type": "input_text", "text": "Hi"}]),
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "parallel_tool_calls": False,
    }
    before = copy.deepcopy(body)

    translate(body)

    assert body == before


# ------------------------------------------------------------------------------------------------
# response
# ------------------------------------------------------------------------------------------------

REQUEST = {"model": "claude-sonnet-4-6", "input": "Hi", "instructions": "Be terse.", "max_output_tokens": 500}


def reply(content, stop_reason="end_turn", **usage):
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6-20250929",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5, **usage},
    }


def test_a_text_reply_is_a_complete_response_object_echoing_the_request():
    out = t.response(reply([text("Hello!")]), request=REQUEST)

    assert out == {
        "id": "resp_1",
        "object": "response",
        "created_at": NOW,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": "Be terse.",
        "max_output_tokens": 500,
        "max_tool_calls": None,
        "model": "claude-sonnet-4-6",
        "output": [
            {
                "id": "msg_2",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 17,
        },
        "metadata": {},
        "completed_at": NOW,
    }
    assert Response.model_validate(out).output_text == "Hello!"


def test_thinking_and_a_tool_call_become_a_reasoning_item_and_a_function_call():
    data = reply(
        [
            {"type": "thinking", "thinking": "Use the tool.", "signature": "EqQBsig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        ],
        stop_reason="tool_use",
    )
    request = {
        **REQUEST,
        "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": True}],
    }

    out = t.response(data, request=request)

    assert out["status"] == "completed"
    assert out["output"] == [
        {
            "id": "rs_2",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "Use the tool."}],
            "encrypted_content": "anthropic.thinking.EqQBsig",
        },
        {"id": "rs_3", "type": "reasoning", "summary": [], "encrypted_content": "anthropic.redacted.opaque"},
        {
            "id": "fc_4",
            "type": "function_call",
            "status": "completed",
            "call_id": "toolu_1",
            "name": "weather",
            "arguments": '{"city": "Paris"}',
        },
    ]
    assert out["tools"] == [
        {"type": "function", "name": "weather", "description": None, "parameters": {"type": "object"}, "strict": True}
    ]
    Response.model_validate(out)


def test_the_reasoning_items_of_a_reply_round_trip_into_the_next_request():
    data = reply(
        [
            {"type": "thinking", "thinking": "Use the tool.", "signature": "EqQBsig"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
        ],
        stop_reason="tool_use",
    )
    output = t.response(data, request=REQUEST)["output"]
    body = {"input": [user("Go"), *output, {"type": "function_call_output", "call_id": "toolu_1", "output": "done"}]}

    assert translate(body)["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Use the tool.", "signature": "EqQBsig"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
    ]


def test_max_tokens_is_incomplete_and_cached_tokens_count_as_input():
    data = reply(
        [text("Once upon")], stop_reason="max_tokens", cache_read_input_tokens=100, cache_creation_input_tokens=20
    )

    out = t.response(data, request=REQUEST)

    assert out["status"] == "incomplete"
    assert out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert "completed_at" not in out
    assert out["usage"] == {
        "input_tokens": 132,
        "input_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 137,
    }
    Response.model_validate(out)


def test_a_refusal_completes_with_a_refusal_part():
    out = t.response(reply([], stop_reason="refusal"), request=REQUEST)

    assert out["status"] == "completed"
    assert out["output"] == [
        {
            "id": "msg_2",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "refusal", "refusal": t.REFUSAL}],
        }
    ]
    Response.model_validate(out)


# ------------------------------------------------------------------------------------------------
# stream
# ------------------------------------------------------------------------------------------------


def sse(data, *, final=False):
    return Event(raw=b"", data=data, name=data["type"], final=final)


def message_start(**usage):
    message = reply([], stop_reason=None, **usage) | {"usage": {"input_tokens": 12, "output_tokens": 1, **usage}}
    return sse({"type": "message_start", "message": message})


def block_start(index, block):
    return sse({"type": "content_block_start", "index": index, "content_block": block})


def delta(index, **fields):
    return sse({"type": "content_block_delta", "index": index, "delta": fields})


def block_stop(index):
    return sse({"type": "content_block_stop", "index": index})


def message_delta(stop_reason, output_tokens):
    return sse(
        {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": output_tokens}}
    )


def message_stop():
    return sse({"type": "message_stop"}, final=True)


def run(events, request=REQUEST):
    stream = t.Stream(client_wants_usage=False, request=request)
    out = [e for event in events for e in stream.feed(event)]
    parsed = [EVENTS.validate_python(e) for e in out]  # every event is a valid SDK event
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert out[-1]["type"] in ("response.completed", "response.incomplete")
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in parsed:
        state.handle_event(event)  # the SDK's accumulator: raises on an inconsistent stream
    Response.model_validate(out[-1]["response"])
    return out


def test_a_text_stream_golden():
    out = run(
        [
            message_start(),
            block_start(0, {"type": "text", "text": ""}),
            sse({"type": "ping"}),
            delta(0, type="text_delta", text="Hel"),
            delta(0, type="text_delta", text="lo"),
            block_stop(0),
            message_delta("end_turn", 7),
            message_stop(),
        ]
    )

    where = {"item_id": "msg_2", "output_index": 0}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    assert [e["type"] for e in out] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert out[0]["response"]["status"] == "in_progress"
    assert out[0]["response"]["output"] == []
    assert out[0]["response"]["model"] == "claude-sonnet-4-6"
    assert out[2]["item"] == {
        "id": "msg_2",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    assert out[3] == {
        "type": "response.content_part.added",
        "sequence_number": 3,
        **where,
        "content_index": 0,
        "part": part,
    }
    assert out[4] == {
        "type": "response.output_text.delta",
        "sequence_number": 4,
        **where,
        "content_index": 0,
        "delta": "Hel",
        "logprobs": [],
    }
    assert out[6]["text"] == "Hello"
    assert out[8]["item"]["status"] == "completed"
    final = out[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"] == [out[8]["item"]]
    assert final["usage"]["input_tokens"] == 12
    assert final["usage"]["output_tokens"] == 7


def test_a_thinking_and_tool_call_stream_carries_the_signature_and_the_arguments():
    out = run(
        [
            message_start(cache_read_input_tokens=4),
            block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
            delta(0, type="thinking_delta", thinking="Need "),
            delta(0, type="thinking_delta", thinking="weather."),
            delta(0, type="signature_delta", signature="EqQBsig"),
            block_stop(0),
            block_start(1, {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}),
            delta(1, type="input_json_delta", partial_json=""),
            delta(1, type="input_json_delta", partial_json='{"city":'),
            delta(1, type="input_json_delta", partial_json='"Paris"}'),
            block_stop(1),
            message_delta("tool_use", 30),
            message_stop(),
        ]
    )

    assert [e["type"] for e in out[2:]] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    reasoning, call = out[-1]["response"]["output"]
    assert reasoning == {
        "id": "rs_2",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "Need weather."}],
        "encrypted_content": "anthropic.thinking.EqQBsig",
    }
    assert out[9]["item"] == {
        "id": "fc_3",
        "type": "function_call",
        "status": "in_progress",
        "call_id": "toolu_1",
        "name": "weather",
        "arguments": "",
    }
    assert out[12] | {"sequence_number": 0} == {
        "type": "response.function_call_arguments.done",
        "sequence_number": 0,
        "item_id": "fc_3",
        "output_index": 1,
        "arguments": '{"city":"Paris"}',
        "name": "weather",
    }
    assert call["arguments"] == '{"city":"Paris"}'
    assert out[-1]["response"]["usage"]["input_tokens"] == 16
    assert out[-1]["response"]["usage"]["input_tokens_details"]["cached_tokens"] == 4


def test_a_stream_cut_by_max_tokens_ends_incomplete():
    out = run(
        [
            message_start(),
            block_start(0, {"type": "text", "text": ""}),
            delta(0, type="text_delta", text="Once"),
            block_stop(0),
            message_delta("max_tokens", 1),
            message_stop(),
        ]
    )

    assert out[-1]["type"] == "response.incomplete"
    assert out[-1]["response"]["status"] == "incomplete"
    assert out[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_refused_stream_ends_with_a_refusal_message():
    out = run(
        [
            message_start(),
            block_start(0, {"type": "text", "text": ""}),
            delta(0, type="text_delta", text="I"),
            block_stop(0),
            message_delta("refusal", 1),
            message_stop(),
        ]
    )

    assert [e["type"] for e in out[-7:]] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert out[-1]["response"]["output"][1]["content"] == [{"type": "refusal", "refusal": t.REFUSAL}]


def test_an_upstream_error_event_and_anything_after_the_end_produce_nothing():
    stream = t.Stream(client_wants_usage=True, request=REQUEST)
    assert stream.feed(sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})) == []
    stream.feed(message_start())
    assert stream.feed(message_stop())[-1]["type"] == "response.completed"
    assert stream.feed(sse({"type": "ping"})) == []
    assert stream.feed(Event(raw=b": keep-alive\n\n")) == []


def test_stream_and_non_stream_build_the_same_response():
    blocks = [
        {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
        text("Answer"),
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}},
    ]
    events = [message_start()]
    for i, block in enumerate(blocks):
        start = (
            {**block, "thinking": ""}
            if block["type"] == "thinking"
            else {**block, "text": ""}
            if block["type"] == "text"
            else {**block, "input": {}}
        )
        events.append(block_start(i, start))
        if block["type"] == "thinking":
            events += [
                delta(i, type="thinking_delta", thinking="Hmm."),
                delta(i, type="signature_delta", signature="sig"),
            ]
        elif block["type"] == "text":
            events.append(delta(i, type="text_delta", text="Answer"))
        else:
            events.append(delta(i, type="input_json_delta", partial_json=json.dumps({"x": 1}, ensure_ascii=False)))
        events.append(block_stop(i))
    events += [message_delta("tool_use", 5), message_stop()]

    streamed = run(events)[-1]["response"]
    whole = t.response(reply(blocks, stop_reason="tool_use"), request=REQUEST)

    def shape(response):
        return [{k: v for k, v in item.items() if k != "id"} for item in response["output"]]

    assert shape(streamed) == shape(whole)
