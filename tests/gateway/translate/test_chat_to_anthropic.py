"""Golden tests: OpenAI Chat Completions client ↔ Anthropic Messages upstream.

Pure: no database, no network. Anthropic payloads follow the shapes of real Messages API replies
and SSE streams (message_start … message_stop, input_json_delta, thinking/signature deltas).
"""

from __future__ import annotations

import copy
import json

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from openbili.core.errors import InvalidRequest
from usage.gateway.providers.base import Event
from usage.gateway.translate import chat_to_anthropic as t

LIMIT = 8192  # the model's output limit, as the endpoint passes it
NOW = 1_750_000_000


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch):
    monkeypatch.setattr(t.time, "time", lambda: NOW + 0.75)


def user(text):
    return {"role": "user", "content": text}


def text(value):
    return {"type": "text", "text": value}


def rejected(body, *, param, says=""):
    with pytest.raises(InvalidRequest) as caught:
        t.request(body, max_output_tokens=LIMIT)
    assert caught.value.param == param
    assert says in caught.value.message
    return caught.value


# ------------------------------------------------------------------------------------------------
# request: messages
# ------------------------------------------------------------------------------------------------


def test_a_plain_user_message_gets_the_default_max_tokens_and_no_model():
    body = {"model": "claude-sonnet-4-6", "messages": [user("Hello")]}

    assert t.request(body, max_output_tokens=LIMIT) == {
        "max_tokens": LIMIT,
        "messages": [{"role": "user", "content": [text("Hello")]}],
    }


def test_one_system_message_becomes_the_system_string():
    body = {"messages": [{"role": "system", "content": "Be terse."}, user("Hi")]}

    out = t.request(body, max_output_tokens=LIMIT)

    assert out["system"] == "Be terse."
    assert out["messages"] == [{"role": "user", "content": [text("Hi")]}]


def test_system_and_developer_messages_anywhere_are_hoisted_in_order_as_blocks():
    body = {
        "messages": [
            {"role": "developer", "content": "Rule one."},
            user("Hi"),
            {"role": "assistant", "content": "Hello!"},
            {"role": "system", "content": [text("Rule two."), text("Rule three.")]},
            user("Again"),
        ]
    }

    out = t.request(body, max_output_tokens=LIMIT)

    assert out["system"] == [text("Rule one."), text("Rule two."), text("Rule three.")]
    assert out["messages"] == [
        {"role": "user", "content": [text("Hi")]},
        {"role": "assistant", "content": [text("Hello!")]},
        {"role": "user", "content": [text("Again")]},
    ]


def test_multi_turn_conversation_keeps_its_turns_and_merges_same_role_neighbours():
    body = {
        "messages": [
            user("Question one"),
            user([text("and a second part")]),
            {"role": "assistant", "content": "Answer"},
            user("Follow-up"),
        ]
    }

    assert t.request(body, max_output_tokens=LIMIT)["messages"] == [
        {"role": "user", "content": [text("Question one"), text("and a second part")]},
        {"role": "assistant", "content": [text("Answer")]},
        {"role": "user", "content": [text("Follow-up")]},
    ]


def test_images_inline_and_by_url_and_a_pdf_file():
    body = {
        "messages": [
            user(
                [
                    text("What is in these?"),
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    {
                        "type": "file",
                        "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQ="},
                    },
                ]
            )
        ]
    }

    assert t.request(body, max_output_tokens=LIMIT)["messages"][0]["content"] == [
        text("What is in these?"),
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQ="},
            "title": "report.pdf",
        },
    ]


WEATHER_CALL = {
    "id": "toolu_01A09q90qw90lq917835lq9",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"location": "San Francisco, CA"}'},
}


def test_tool_calls_and_tool_results_become_tool_use_and_one_user_turn_of_results():
    body = {
        "messages": [
            user("Weather in SF and NYC?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    WEATHER_CALL,
                    {"id": "toolu_02", "type": "function", "function": {"name": "get_time", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "15°C, fog"},
            {"role": "tool", "tool_call_id": "toolu_02", "content": [text("09:"), text("30")]},
            user("Thanks; and tomorrow?"),
            {"role": "assistant", "content": [text("Sorry, "), {"type": "refusal", "refusal": "I cannot forecast."}]},
        ]
    }

    assert t.request(body, max_output_tokens=LIMIT)["messages"] == [
        {"role": "user", "content": [text("Weather in SF and NYC?")]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "name": "get_weather",
                    "input": {"location": "San Francisco, CA"},
                },
                # "" is what a client accumulates for a call with no arguments
                {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "15°C, fog"},
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": "09:30"},
                text("Thanks; and tomorrow?"),
            ],
        },
        {"role": "assistant", "content": [text("Sorry, "), text("I cannot forecast.")]},
    ]


def test_assistant_text_before_its_tool_calls_is_kept_in_order():
    body = {"messages": [user("SF?"), {"role": "assistant", "content": "Let me check.", "tool_calls": [WEATHER_CALL]}]}

    assert t.request(body, max_output_tokens=LIMIT)["messages"][1]["content"] == [
        text("Let me check."),
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA"},
        },
    ]


def test_empty_text_parts_are_left_out_because_anthropic_rejects_empty_blocks():
    body = {
        "messages": [user([text(""), text("Hi")]), {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]}]
    }

    out = t.request(body, max_output_tokens=LIMIT)

    assert out["messages"][0]["content"] == [text("Hi")]
    assert [b["type"] for b in out["messages"][1]["content"]] == ["tool_use"]


# ------------------------------------------------------------------------------------------------
# request: tools
# ------------------------------------------------------------------------------------------------

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"location": {"type": "string", "description": "The city and state"}},
    "required": ["location"],
}
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Get the current weather", "parameters": WEATHER_SCHEMA},
}


def test_function_tools_become_anthropic_tools_and_missing_parameters_an_empty_object_schema():
    body = {
        "messages": [user("SF?")],
        "tools": [WEATHER_TOOL, {"type": "function", "function": {"name": "get_time"}}],
    }

    assert t.request(body, max_output_tokens=LIMIT)["tools"] == [
        {"name": "get_weather", "description": "Get the current weather", "input_schema": WEATHER_SCHEMA},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]


@pytest.mark.parametrize(
    ("tool_choice", "parallel_tool_calls", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            False,
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        ("none", False, {"type": "none"}),  # no tool may run, so nothing runs in parallel
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tool_choice_table(tool_choice, parallel_tool_calls, expected):
    body = {
        "messages": [user("SF?")],
        "tools": [WEATHER_TOOL],
        "tool_choice": tool_choice,
        "parallel_tool_calls": parallel_tool_calls,
    }

    assert t.request(body, max_output_tokens=LIMIT)["tool_choice"] == expected


def test_no_tool_choice_is_sent_without_tools():
    body = {"messages": [user("Hi")], "tools": [], "tool_choice": "auto", "parallel_tool_calls": False}

    out = t.request(body, max_output_tokens=LIMIT)

    assert "tools" not in out
    assert "tool_choice" not in out


# ------------------------------------------------------------------------------------------------
# request: sampling, limits, reasoning
# ------------------------------------------------------------------------------------------------


def test_sampling_stop_user_and_stream_are_carried():
    body = {
        "messages": [user("Count")],
        "stop": "\n\n",
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "customer-42",
        "stream": True,
    }

    assert t.request(body, max_output_tokens=LIMIT) == {
        "max_tokens": LIMIT,
        "messages": [{"role": "user", "content": [text("Count")]}],
        "stream": True,
        "stop_sequences": ["\n\n"],
        "temperature": 0.2,
        "top_p": 0.9,
        "metadata": {"user_id": "customer-42"},
    }


def test_a_stop_list_is_copied_and_stream_false_is_not_sent():
    out = t.request({"messages": [user("Hi")], "stop": ["END", "STOP"], "stream": False}, max_output_tokens=LIMIT)

    assert out["stop_sequences"] == ["END", "STOP"]
    assert "stream" not in out


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({}, LIMIT),
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 200}, 200),
        ({"max_completion_tokens": 300, "max_tokens": 150}, 150),
        ({"max_completion_tokens": 150, "max_tokens": 300}, 150),
        ({"max_tokens": 100_000}, LIMIT),  # above the model's limit: clamped, never rejected
        ({"max_tokens": None}, LIMIT),
    ],
)
def test_max_tokens_is_the_smaller_client_limit_clamped_to_the_model_limit(limits, expected):
    assert t.request({"messages": [user("Hi")], **limits}, max_output_tokens=LIMIT)["max_tokens"] == expected


@pytest.mark.parametrize(
    ("effort", "max_tokens", "thinking"),
    [
        ("low", None, {"type": "enabled", "budget_tokens": 1024}),
        ("medium", None, {"type": "enabled", "budget_tokens": 8192}),
        ("high", None, {"type": "enabled", "budget_tokens": 24576}),
        ("high", 16000, {"type": "enabled", "budget_tokens": 15999}),  # capped below max_tokens
        ("low", 1025, {"type": "enabled", "budget_tokens": 1024}),
        ("minimal", None, None),
        ("none", None, None),
    ],
)
def test_reasoning_effort_becomes_a_thinking_budget(effort, max_tokens, thinking):
    body = {"messages": [user("Prove it")], "reasoning_effort": effort, "max_completion_tokens": max_tokens}

    out = t.request(body, max_output_tokens=32000)

    assert out.get("thinking") == thinking
    assert out["max_tokens"] == (max_tokens or 32000)


def test_reasoning_with_too_few_output_tokens_asks_the_client_to_raise_them():
    body = {"messages": [user("Prove it")], "reasoning_effort": "low", "max_completion_tokens": 1024}

    rejected(body, param="max_completion_tokens", says="raise `max_completion_tokens`")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 0.5}, "temperature"),
        ({"top_p": 0.5}, "top_p"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "required"}, "tool_choice"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ],
)
def test_reasoning_refuses_what_anthropic_refuses_with_thinking(extra, param):
    rejected({"messages": [user("Prove it")], "reasoning_effort": "medium", **extra}, param=param)


def test_reasoning_accepts_temperature_1_and_top_p_near_1():
    body = {"messages": [user("Prove it")], "reasoning_effort": "low", "temperature": 1, "top_p": 0.95}

    out = t.request(body, max_output_tokens=LIMIT)

    assert out["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert (out["temperature"], out["top_p"]) == (1, 0.95)


def test_temperature_above_1_is_refused_in_words():
    error = rejected({"messages": [user("Hi")], "temperature": 1.5}, param="temperature")

    assert "between 0 and 1" in error.message


# ------------------------------------------------------------------------------------------------
# request: what cannot be carried, what is dropped on purpose
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 5),
        ("response_format", {"type": "json_object"}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
        ("modalities", ["text", "audio"]),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("prediction", {"type": "content", "content": "old code"}),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -1),
        ("logit_bias", {"50256": -100}),
        ("web_search_options", {}),
        ("verbosity", "low"),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
    ],
)
def test_what_anthropic_cannot_do_is_refused_naming_the_param(key, value):
    rejected({"messages": [user("Hi")], key: value}, param=key)


def test_no_op_values_of_those_params_and_nulls_are_accepted():
    body = {
        "messages": [user("Hi")],
        "n": 1,
        "logprobs": False,
        "top_logprobs": 0,
        "response_format": {"type": "text"},
        "modalities": ["text"],
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logit_bias": {},
        "verbosity": "medium",
        "audio": None,
        "stop": None,
        "temperature": None,
        "tools": None,
        "tool_choice": None,
        "user": None,
        "reasoning_effort": None,
    }

    assert t.request(body, max_output_tokens=LIMIT) == {
        "max_tokens": LIMIT,
        "messages": [{"role": "user", "content": [text("Hi")]}],
    }


def test_params_without_effect_on_the_output_and_unknown_keys_are_dropped():
    body = {
        "messages": [user("Hi")],
        "seed": 7,
        "store": True,
        "metadata": {"run": "nightly"},
        "service_tier": "flex",
        "stream_options": {"include_usage": True},
        "safety_identifier": "hash-of-user",
        "prompt_cache_key": "tenant-1",
        "a_field_openai_adds_next_month": {"x": 1},
    }

    assert t.request(body, max_output_tokens=LIMIT) == {
        "max_tokens": LIMIT,
        "messages": [{"role": "user", "content": [text("Hi")]}],
    }
    assert {"seed", "store", "metadata", "service_tier", "stream_options"} <= t.IGNORED


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("Hi", "messages"),
        ([], "messages"),
        ([{"role": "system", "content": "Only a system prompt"}], "messages"),
        (["Hi"], "messages[0]"),
        ([user("Hi"), {"role": "assistant", "content": 42}], "messages[1].content"),
        ([user("Hi"), {"role": "function", "name": "f", "content": "{}"}], "messages[1].role"),
        ([{"role": "robot", "content": "Hi"}], "messages[0].role"),
        ([user(["Hi"])], "messages[0].content[0]"),
        ([user([{"type": "text", "text": 5}])], "messages[0].content[0].text"),
        (
            [user([{"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}])],
            "messages[0].content[0].type",
        ),
        (
            [user([{"type": "image_url", "image_url": "https://example.com/a.png"}])],
            "messages[0].content[0].image_url.url",
        ),
        (
            [user([{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}])],
            "messages[0].content[0].image_url.url",
        ),
        (
            [user([{"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}])],
            "messages[0].content[0].image_url.url",
        ),
        (
            [user([{"type": "image_url", "image_url": {"url": "data:image/png,not-base64"}}])],
            "messages[0].content[0].image_url.url",
        ),
        ([user([{"type": "file", "file": {"file_id": "file-abc123"}}])], "messages[0].content[0].file"),
        (
            [user([{"type": "file", "file": {"file_data": "data:text/csv;base64,YSxi"}}])],
            "messages[0].content[0].file.file_data",
        ),
        ([user("")], "messages[0].content"),
        ([user("Hi"), {"role": "assistant", "content": None}], "messages[1].content"),
        (
            [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0].content[0].type",
        ),
        ([{"role": "tool", "content": "15°C"}], "messages[0].tool_call_id"),
        ([{"role": "tool", "tool_call_id": "toolu_1", "content": None}], "messages[0].content"),
        ([user("Hi"), {"role": "assistant", "tool_calls": {"id": "x"}}], "messages[1].tool_calls"),
        (
            [user("Hi"), {"role": "assistant", "tool_calls": [{"id": "x", "type": "custom", "custom": {}}]}],
            "messages[1].tool_calls[0].type",
        ),
        (
            [user("Hi"), {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}],
            "messages[1].tool_calls[0].id",
        ),
    ],
)
def test_wrong_shapes_are_invalid_requests_naming_the_place(messages, param):
    rejected({"messages": messages}, param=param)


@pytest.mark.parametrize("arguments", ['"just a string"', "[1, 2]", "{not json", "null"])
def test_tool_call_arguments_that_are_not_a_json_object_are_refused(arguments):
    call = {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    body = {"messages": [user("Hi"), {"role": "assistant", "content": None, "tool_calls": [call]}]}

    rejected(body, param="messages[1].tool_calls[0].function.arguments", says="JSON object")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": [{"type": "custom", "custom": {"name": "grammar"}}]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [WEATHER_TOOL], "tool_choice": "any"}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
        ({"tools": [WEATHER_TOOL], "parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"stop": 5}, "stop"),
        ({"stop": ["a", None]}, "stop"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": "100"}, "max_completion_tokens"),
        ({"user": 42}, "user"),
    ],
)
def test_wrong_parameter_shapes_are_invalid_requests(extra, param):
    rejected({"messages": [user("Hi")], **extra}, param=param)


def test_the_client_body_is_never_mutated_and_shares_nothing_with_the_upstream_body():
    body = {
        "model": "claude-sonnet-4-6",
        "messages": [
            {"role": "system", "content": "Be terse."},
            user([text("SF?"), {"type": "image_url", "image_url": {"url": "https://example.com/sf.jpg"}}]),
            {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]},
            {"role": "tool", "tool_call_id": WEATHER_CALL["id"], "content": "fog"},
            {"role": "tool", "tool_call_id": "toolu_x", "content": "more fog"},
        ],
        "tools": [WEATHER_TOOL],
        "parallel_tool_calls": False,
        "stop": ["END"],
        "reasoning_effort": "low",
        "stream": True,
    }
    before = copy.deepcopy(body)

    out = t.request(body, max_output_tokens=LIMIT)
    out["tools"][0]["input_schema"]["properties"]["injected"] = {}
    out["stop_sequences"].append("X")
    out["messages"][-1]["content"].append(text("X"))
    out["tool_choice"]["type"] = "X"

    assert body == before


# ------------------------------------------------------------------------------------------------
# response
# ------------------------------------------------------------------------------------------------

TEXT_REPLY = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [{"type": "text", "text": "Hello! How can I help?", "citations": None}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 2000,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 9,
        "service_tier": "standard",
    },
}


def test_a_text_reply_becomes_a_chat_completion_with_openai_usage():
    out = t.response(TEXT_REPLY)

    assert out == {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "created": NOW,
        "model": "claude-sonnet-4-20250514",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help?", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        # OpenAI counts cache reads and writes inside prompt_tokens
        "usage": {
            "prompt_tokens": 2112,
            "completion_tokens": 9,
            "total_tokens": 2121,
            "prompt_tokens_details": {"cached_tokens": 2000},
        },
    }
    parsed = ChatCompletion.model_validate(out)
    assert parsed.choices[0].message.content == "Hello! How can I help?"
    assert parsed.usage is not None
    assert parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 2000


def test_a_reply_with_thinking_text_and_tool_use():
    reply = {
        "id": "msg_01Aq9w938a90dw8q",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [
            {"type": "thinking", "thinking": "The user wants the weather.", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
            {"type": "text", "text": "I'll check "},
            {"type": "text", "text": "the weather."},
            {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": "get_weather",
                "input": {"location": "San Francisco, CA", "unit": "celsius"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 472, "output_tokens": 91},
    }

    out = t.response(reply)

    assert out["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "I'll check the weather.",
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "toolu_01A09q90qw90lq917835lq9",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"location": "San Francisco, CA", "unit": "celsius"}',
                        },
                    }
                ],
                "reasoning_content": "The user wants the weather.",
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]
    assert out["usage"] == {
        "prompt_tokens": 472,
        "completion_tokens": 91,
        "total_tokens": 563,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    parsed = ChatCompletion.model_validate(out)
    call = parsed.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert json.loads(call.function.arguments) == {"location": "San Francisco, CA", "unit": "celsius"}  # type: ignore[union-attr]


def test_a_reply_of_only_tool_use_has_null_content():
    reply = {
        **TEXT_REPLY,
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}],
        "stop_reason": "tool_use",
    }

    message = t.response(reply)["choices"][0]["message"]

    assert message["content"] is None
    assert message["tool_calls"][0]["function"] == {"name": "get_time", "arguments": "{}"}
    ChatCompletion.model_validate(t.response(reply))


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        ("a_reason_anthropic_adds_later", "stop"),
        (None, "stop"),
    ],
)
def test_every_stop_reason_maps_to_a_finish_reason(stop_reason, finish_reason):
    out = t.response({**TEXT_REPLY, "stop_reason": stop_reason})

    assert out["choices"][0]["finish_reason"] == finish_reason
    ChatCompletion.model_validate(out)


# ------------------------------------------------------------------------------------------------
# stream
# ------------------------------------------------------------------------------------------------

# A real-shaped Anthropic stream: text, then a tool call whose input arrives in pieces.
TOOL_STREAM = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-20250514",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 472,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 1024,
                    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                    "output_tokens": 2,
                    "service_tier": "standard",
                },
            },
        },
    ),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Okay, let's check"}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " the weather."}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "name": "get_weather",
                "input": {},
            },
        },
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"location": "San Fra'},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": 'ncisco, CA", "unit": "fahrenheit"}'},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def events(script):
    for name, data in script:
        raw = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        yield Event(raw=raw, data=data, name=name, final=name == "message_stop")


def run(script, *, client_wants_usage):
    stream = t.Stream(client_wants_usage=client_wants_usage)
    return [chunk for event in events(script) for chunk in stream.feed(event)]


def chunk(delta, finish_reason=None):
    return {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
        "object": "chat.completion.chunk",
        "created": NOW,
        "model": "claude-sonnet-4-20250514",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def test_a_text_then_tool_use_stream_becomes_chat_chunks_with_the_usage_chunk_last():
    chunks = run(TOOL_STREAM, client_wants_usage=True)

    assert chunks == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Okay, let's check"}),
        chunk({"content": " the weather."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"location": "San Fra'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ncisco, CA", "unit": "fahrenheit"}'}}]}),
        chunk({}, "tool_calls"),
        {
            "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
            "object": "chat.completion.chunk",
            "created": NOW,
            "model": "claude-sonnet-4-20250514",
            "choices": [],
            "usage": {
                "prompt_tokens": 1496,
                "completion_tokens": 89,
                "total_tokens": 1585,
                "prompt_tokens_details": {"cached_tokens": 1024},
            },
        },
    ]


def test_the_chunks_accumulate_in_the_openai_sdk_to_the_whole_answer():
    state = ChatCompletionStreamState()
    for each in run(TOOL_STREAM, client_wants_usage=True):
        state.handle_chunk(ChatCompletionChunk.model_validate(each))

    completion = state.get_final_completion()

    assert completion.id == "msg_014p7gG3wDgGV9EUtLvnow3U"
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Okay, let's check the weather."
    [call] = choice.message.tool_calls  # type: ignore[misc]
    assert call.id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"location": "San Francisco, CA", "unit": "fahrenheit"}  # type: ignore[union-attr]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (1496, 89)


def test_without_usage_asked_the_stream_ends_at_the_finish_chunk():
    chunks = run(TOOL_STREAM, client_wants_usage=False)

    assert chunks[-1] == chunk({}, "tool_calls")
    assert all(c["choices"] for c in chunks)


THINKING_STREAM = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-20250514",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 0,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 1,
                },
            },
        },
    ),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "27 * 453 = 12231"},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbc"},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "12,231"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    # newer API versions repeat the input and cache counts in message_delta: they win
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {
                "input_tokens": 40,
                "cache_creation_input_tokens": 10,
                "cache_read_input_tokens": 0,
                "output_tokens": 120,
            },
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def test_thinking_streams_as_reasoning_content_and_message_delta_usage_is_merged():
    chunks = run(THINKING_STREAM, client_wants_usage=True)

    assert chunks[1:-1] == [
        chunk({"reasoning_content": "27 * 453 = 12231"}),
        chunk({"content": "12,231"}),
        chunk({}, "length"),
    ]
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 50,
        "completion_tokens": 120,
        "total_tokens": 170,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    for each in chunks:
        ChatCompletionChunk.model_validate(each)


def test_error_events_and_keepalives_produce_nothing():
    stream = t.Stream(client_wants_usage=True)
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}

    assert stream.feed(Event(raw=b"event: error\n\n", data=error, name="error")) == []
    assert stream.feed(Event(raw=b": keep-alive\n\n")) == []
    assert stream.feed(Event(raw=b"event: ping\n\n", data={"type": "ping"}, name="ping")) == []


def test_a_message_delta_without_a_stop_reason_only_updates_usage():
    stream = t.Stream(client_wants_usage=True)
    [start] = list(events(TOOL_STREAM[:1]))
    stream.feed(start)
    early = {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 5}}

    assert stream.feed(Event(raw=b"", data=early, name="message_delta")) == []
    [usage_chunk] = stream.feed(Event(raw=b"", data={"type": "message_stop"}, name="message_stop", final=True))
    assert usage_chunk["usage"]["completion_tokens"] == 5
