"""Golden tests: OpenAI Chat Completions client ↔ Gemini API (generateContent) upstream.

Pure: no database, no network. Gemini payloads follow the documented shapes:
ai.google.dev/api/generate-content (GenerateContentResponse, Candidate, UsageMetadata, the SSE
stream of streamGenerateContent?alt=sse), ai.google.dev/gemini-api/docs/function-calling,
ai.google.dev/gemini-api/docs/thinking and ai.google.dev/gemini-api/docs/image-generation.
"""

from __future__ import annotations

import copy
import json

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from openbili.core.errors import InvalidRequest
from usage.gateway.providers.base import Event
from usage.gateway.providers.gemini import GeminiReader
from usage.gateway.translate import Translation, translation_for
from usage.gateway.translate import chat_to_gemini as t

LIMIT = 8192  # the model's output limit, as the endpoint passes it
NOW = 1_750_000_000


@pytest.fixture(autouse=True)
def frozen(monkeypatch):
    monkeypatch.setattr(t.time, "time", lambda: NOW + 0.75)
    ids = iter(f"call_{n}" for n in range(100))
    monkeypatch.setattr(t, "_new_call_id", lambda: next(ids))


def user(content):
    return {"role": "user", "content": content}


def text(value):
    return {"type": "text", "text": value}


def config(**extra):
    return {"maxOutputTokens": LIMIT, **extra}


def rejected(body, *, param, says=""):
    with pytest.raises(InvalidRequest) as caught:
        t.request(body, max_output_tokens=LIMIT)
    assert caught.value.param == param
    assert says in caught.value.message
    return caught.value


# ------------------------------------------------------------------------------------------------
# wiring: translate._load() registers this module for (chat, gemini)
# ------------------------------------------------------------------------------------------------


def test_the_module_is_the_registered_chat_to_gemini_translation():
    pair = translation_for("chat", "gemini")
    assert pair == Translation("chat", "gemini", t.request, t.response, t.Stream)
    assert pair.request({"messages": [user("Hi")]}, max_output_tokens=LIMIT)["contents"]
    assert pair.stream(client_wants_usage=False).feed(Event(raw=b": keep-alive\n\n")) == []


# ------------------------------------------------------------------------------------------------
# request: messages
# ------------------------------------------------------------------------------------------------


def test_a_plain_user_message_gets_the_default_max_output_tokens_and_no_model_or_stream():
    body = {"model": "gemini-2.5-flash", "messages": [user("Hello")], "stream": True}

    assert t.request(body, max_output_tokens=LIMIT) == {
        "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
        "generationConfig": config(),
    }


def test_system_and_developer_messages_anywhere_become_the_system_instruction_in_order():
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

    assert out["systemInstruction"] == {
        "parts": [{"text": "Rule one."}, {"text": "Rule two."}, {"text": "Rule three."}]
    }
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "Hello!"}]},
        {"role": "user", "parts": [{"text": "Again"}]},
    ]


def test_multi_turn_roles_become_user_and_model_and_same_role_neighbours_merge():
    body = {
        "messages": [
            user("Question one"),
            user([text("and a second part")]),
            {"role": "assistant", "content": [text("Answer"), {"type": "refusal", "refusal": "but not that"}]},
            user("Follow-up"),
        ]
    }

    assert t.request(body, max_output_tokens=LIMIT)["contents"] == [
        {"role": "user", "parts": [{"text": "Question one"}, {"text": "and a second part"}]},
        {"role": "model", "parts": [{"text": "Answer"}, {"text": "but not that"}]},
        {"role": "user", "parts": [{"text": "Follow-up"}]},
    ]


def test_images_in_as_inline_data_and_public_urls_as_file_data_audio_and_pdf_inline():
    body = {
        "messages": [
            user(
                [
                    text("What is in these?"),
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg?size=large"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/render"}},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {"type": "file", "file": {"filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
                ]
            )
        ]
    }

    assert t.request(body, max_output_tokens=LIMIT)["contents"][0]["parts"] == [
        {"text": "What is in these?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg?size=large"}},
        {"fileData": {"fileUri": "https://example.com/render"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}},
    ]


WEATHER_CALL = {
    "id": "call_weather_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"location": "Boston, MA"}'},
}
TIME_CALL = {"id": "call_time_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}


def test_tool_calls_become_function_calls_and_tool_results_one_user_turn_of_function_responses():
    body = {
        "messages": [
            user("Weather and time in Boston?"),
            {"role": "assistant", "content": "Checking.", "tool_calls": [WEATHER_CALL, TIME_CALL]},
            {"role": "tool", "tool_call_id": "call_weather_1", "content": '{"temp": 12}'},
            {"role": "tool", "tool_call_id": "call_time_2", "content": [text("09:30")]},
            user("Thanks"),
        ]
    }

    assert t.request(body, max_output_tokens=LIMIT)["contents"] == [
        {"role": "user", "parts": [{"text": "Weather and time in Boston?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Checking."},
                # the turn's first call carries Google's stand-in signature (Gemini 3 needs one)
                {
                    "functionCall": {"name": "get_weather", "args": {"location": "Boston, MA"}},
                    "thoughtSignature": t.FOREIGN_SIGNATURE,
                },
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"result": '{"temp": 12}'}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "09:30"}}},
                {"text": "Thanks"},
            ],
        },
    ]


def test_a_tool_result_must_answer_an_earlier_tool_call_for_its_function_name():
    body = {"messages": [user("Hi"), {"role": "tool", "tool_call_id": "call_nowhere", "content": "x"}]}

    rejected(body, param="messages[1].tool_call_id", says="function's name")


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_tool_call_arguments_that_are_not_a_json_object_are_refused(arguments):
    call = {**WEATHER_CALL, "function": {"name": "get_weather", "arguments": arguments}}
    body = {"messages": [user("Hi"), {"role": "assistant", "content": None, "tool_calls": [call]}]}

    rejected(body, param="messages[1].tool_calls[0].function.arguments", says="JSON object")


# ------------------------------------------------------------------------------------------------
# request: tools and generation config
# ------------------------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


def test_function_tools_become_one_tool_of_function_declarations_with_json_schema_parameters():
    body = {"messages": [user("Hi")], "tools": [WEATHER_TOOL, {"type": "function", "function": {"name": "get_time"}}]}

    assert t.request(body, max_output_tokens=LIMIT)["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],
                },
                {"name": "get_time"},
            ]
        }
    ]


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
def test_tool_choice_becomes_function_calling_config(tool_choice, expected):
    body = {"messages": [user("Hi")], "tools": [WEATHER_TOOL], "tool_choice": tool_choice, "parallel_tool_calls": True}

    assert t.request(body, max_output_tokens=LIMIT)["toolConfig"] == {"functionCallingConfig": expected}


def test_no_tool_config_is_sent_without_tools():
    assert "toolConfig" not in t.request({"messages": [user("Hi")], "tool_choice": "auto"}, max_output_tokens=LIMIT)


def test_sampling_stop_n_seed_and_penalties_go_into_generation_config():
    body = {
        "messages": [user("Hi")],
        "temperature": 1.5,
        "top_p": 0.9,
        "stop": "END",
        "n": 3,
        "seed": 42,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
    }

    assert t.request(body, max_output_tokens=LIMIT)["generationConfig"] == config(
        temperature=1.5,
        topP=0.9,
        presencePenalty=0.5,
        frequencyPenalty=-0.5,
        stopSequences=["END"],
        candidateCount=3,
        seed=42,
    )


@pytest.mark.parametrize(
    ("limits", "expected"),
    [({}, LIMIT), ({"max_tokens": 100}, 100), ({"max_completion_tokens": 50, "max_tokens": 100}, 50)],
)
def test_max_output_tokens_is_the_smaller_client_limit_clamped_to_the_model_limit(limits, expected):
    body = {"messages": [user("Hi")], **limits}

    assert t.request(body, max_output_tokens=LIMIT)["generationConfig"]["maxOutputTokens"] == expected


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "text"}, {}),
        ({"type": "json_object"}, {"responseMimeType": "application/json"}),
        (
            {"type": "json_schema", "json_schema": {"name": "r", "strict": True, "schema": {"type": "object"}}},
            {"responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}},
        ),
    ],
)
def test_response_format_becomes_response_mime_type_and_json_schema(response_format, expected):
    body = {"messages": [user("Hi")], "response_format": response_format}

    assert t.request(body, max_output_tokens=LIMIT)["generationConfig"] == config(**expected)


@pytest.mark.parametrize(
    ("effort", "max_tokens", "thinking"),
    [
        ("none", None, {"thinkingBudget": 0}),
        ("minimal", None, {"thinkingBudget": 512, "includeThoughts": True}),
        ("low", None, {"thinkingBudget": 1024, "includeThoughts": True}),
        ("medium", None, {"thinkingBudget": 8192, "includeThoughts": True}),
        ("high", None, {"thinkingBudget": 24576, "includeThoughts": True}),
        ("high", 2000, {"thinkingBudget": 2000, "includeThoughts": True}),
    ],
)
def test_reasoning_effort_becomes_a_thinking_budget_never_above_max_output_tokens(effort, max_tokens, thinking):
    body = {"messages": [user("Hi")], "reasoning_effort": effort, "max_tokens": max_tokens}

    out = t.request(body, max_output_tokens=100_000)

    assert out["generationConfig"]["thinkingConfig"] == thinking


def test_modalities_become_response_modalities():
    body = {"messages": [user("Draw a cat")], "modalities": ["text", "image"]}

    assert t.request(body, max_output_tokens=LIMIT)["generationConfig"]["responseModalities"] == ["TEXT", "IMAGE"]


# ------------------------------------------------------------------------------------------------
# request: refusals, ignored fields, nulls
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("logprobs", True),
        ("top_logprobs", 3),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("prediction", {"type": "content", "content": "x"}),
        ("logit_bias", {"50256": -100}),
        ("web_search_options", {}),
        ("verbosity", "low"),
        ("parallel_tool_calls", False),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("modalities", ["text", "audio"]),
        ("response_format", {"type": "grammar"}),
        ("reasoning_effort", "extreme"),
        ("temperature", 2.5),
        ("top_p", 1.5),
    ],
)
def test_what_cannot_be_carried_is_refused_naming_the_param(key, value):
    error = rejected(
        {"messages": [user("Hi")], key: value}, param=key if key != "response_format" else "response_format.type"
    )

    assert error.status == 400


@pytest.mark.parametrize(
    ("part", "param"),
    [
        (
            {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lG"}},
            "messages[0].content[0].image_url.url",
        ),
        (
            {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}},
            "messages[0].content[0].image_url.url",
        ),
        ({"type": "image_url", "image_url": {"url": "data:image/png,raw"}}, "messages[0].content[0].image_url.url"),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "messages[0].content[0].file"),
        (
            {"type": "input_audio", "input_audio": {"data": "x", "format": "flac"}},
            "messages[0].content[0].input_audio.format",
        ),
        ({"type": "video"}, "messages[0].content[0].type"),
    ],
)
def test_parts_this_upstream_cannot_read_are_refused_naming_the_part(part, param):
    rejected({"messages": [user([part])]}, param=param)


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "system", "content": "Only rules."}], "messages"),
        ([{"role": "wizard", "content": "Hi"}], "messages[0].role"),
        ([{"role": "function", "name": "f", "content": "x"}], "messages[0].role"),
        ([user("")], "messages[0].content"),
        (
            [user("Hi"), {"role": "assistant", "content": None, "function_call": {"name": "f"}}],
            "messages[1].function_call",
        ),
        (
            [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0].content[0].type",
        ),
    ],
)
def test_wrong_message_shapes_are_invalid_requests_naming_the_place(messages, param):
    rejected({"messages": messages}, param=param)


def test_no_op_values_nulls_ignored_and_unknown_keys_change_nothing():
    body = {
        "messages": [user("Hi")],
        "n": 1,
        "logprobs": False,
        "top_logprobs": 0,
        "logit_bias": {},
        "verbosity": "medium",
        "parallel_tool_calls": None,
        "audio": None,
        "stop": None,
        "temperature": None,
        "tools": None,
        "tool_choice": None,
        "reasoning_effort": None,
        "response_format": None,
        "store": True,
        "metadata": {"k": "v"},
        "service_tier": "auto",
        "stream_options": {"include_usage": True},
        "user": "u-1",
        "safety_identifier": "s",
        "prompt_cache_key": "k",
        "some_future_field": 1,
    }

    assert t.request(body, max_output_tokens=LIMIT) == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "generationConfig": config(),
    }


def test_the_client_body_is_never_mutated_and_shares_nothing_with_the_upstream_body():
    body = {
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "Be terse."},
            user([text("SF?"), {"type": "image_url", "image_url": {"url": "https://example.com/sf.png"}}]),
            {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]},
            {"role": "tool", "tool_call_id": WEATHER_CALL["id"], "content": "fog"},
        ],
        "tools": [WEATHER_TOOL],
        "stop": ["END"],
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}},
        "reasoning_effort": "low",
        "stream": True,
    }
    before = copy.deepcopy(body)

    out = t.request(body, max_output_tokens=LIMIT)
    out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["properties"]["injected"] = {}
    out["generationConfig"]["stopSequences"].append("X")
    out["generationConfig"]["responseJsonSchema"]["x"] = 1
    out["contents"][1]["parts"][0]["functionCall"]["args"]["x"] = 1
    out["contents"][-1]["parts"].append({"text": "X"})

    assert body == before


# ------------------------------------------------------------------------------------------------
# response
# ------------------------------------------------------------------------------------------------

# The GenerateContentResponse shape of ai.google.dev/api/generate-content#v1beta.GenerateContentResponse
# and its REST example replies (usageMetadata with promptTokensDetails, modelVersion, responseId).
TEXT_REPLY = {
    "candidates": [
        {
            "content": {
                "parts": [
                    {"text": "The user greets me.", "thought": True},
                    {"text": "Hello! How can I help "},
                    {"text": "you today?"},
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "avgLogprobs": -0.1,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 2100,
        "candidatesTokenCount": 9,
        "totalTokenCount": 2139,
        "cachedContentTokenCount": 2048,
        "thoughtsTokenCount": 30,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 2100}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "mAitaLmkHPPlz7IPvtfUqQ4",
}


def test_a_text_reply_becomes_a_chat_completion_with_openai_usage_and_thoughts_apart():
    out = t.response(TEXT_REPLY)

    assert out == {
        "id": "mAitaLmkHPPlz7IPvtfUqQ4",
        "object": "chat.completion",
        "created": NOW,
        "model": "gemini-2.5-flash",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello! How can I help you today?",
                    "refusal": None,
                    "reasoning_content": "The user greets me.",
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 2100,  # cached included, as OpenAI counts
            "completion_tokens": 39,  # thoughts included
            "total_tokens": 2139,
            "prompt_tokens_details": {"cached_tokens": 2048},
            "completion_tokens_details": {"reasoning_tokens": 30},
        },
    }
    ChatCompletion.model_validate(out)


# The function-calling guide's reply: one candidate whose parts are functionCall {name, args}.
TOOL_REPLY = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"location": "Boston, MA"}}},
                    {"functionCall": {"name": "get_time", "args": {}}, "thoughtSignature": "c2ln"},
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {"promptTokenCount": 70, "candidatesTokenCount": 12, "totalTokenCount": 82},
    "modelVersion": "gemini-2.5-flash",
    "responseId": "tool-reply",
}


def test_function_calls_become_tool_calls_with_generated_ids_and_json_string_arguments():
    out = t.response(TOOL_REPLY)

    [choice] = out["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location": "Boston, MA"}'},
            },
            {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }
    assert out["usage"]["total_tokens"] == 82
    ChatCompletion.model_validate(out)


# The image-generation guide's reply (gemini-2.5-flash-image): text and an inlineData PNG part.
IMAGE_REPLY = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "Here is your cat."},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                ],
            },
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 8,
        "candidatesTokenCount": 1295,
        "totalTokenCount": 1303,
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}, {"modality": "TEXT", "tokenCount": 5}],
    },
    "modelVersion": "gemini-2.5-flash-image",
    "responseId": "img",
}


def test_inline_images_become_message_images_as_openrouter_returns_them():
    message = t.response(IMAGE_REPLY)["choices"][0]["message"]

    assert message["content"] == "Here is your cat."
    assert message["images"] == [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]


@pytest.mark.parametrize(
    ("reason", "finish_reason"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("OTHER", "stop"),
        ("SOMETHING_NEW", "stop"),
    ],
)
def test_every_finish_reason_maps_to_a_chat_finish_reason(reason, finish_reason):
    reply = {"candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]}, "finishReason": reason}]}

    assert t.response(reply)["choices"][0]["finish_reason"] == finish_reason


def test_several_candidates_become_several_choices():
    reply = {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "A"}]}, "finishReason": "STOP", "index": 0},
            {"content": {"role": "model", "parts": [{"text": "B"}]}, "finishReason": "MAX_TOKENS", "index": 1},
        ],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2},
    }

    choices = t.response(reply)["choices"]

    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "A", "stop"),
        (1, "B", "length"),
    ]


def test_a_blocked_prompt_is_one_empty_content_filter_choice():
    # GenerateContentResponse.promptFeedback: "If set, the prompt was blocked and no candidates are returned."
    reply = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5},
    }

    out = t.response(reply)

    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "refusal": None},
            "logprobs": None,
            "finish_reason": "content_filter",
        }
    ]
    assert out["usage"]["prompt_tokens"] == 5
    ChatCompletion.model_validate(out)


# ------------------------------------------------------------------------------------------------
# stream
# ------------------------------------------------------------------------------------------------


def sse(*chunks):
    # Google frames streamGenerateContent?alt=sse as "data: <json>\r\n\r\n".
    return b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)


TEXT_STREAM = sse(
    {
        "candidates": [{"content": {"parts": [{"text": "Thinking about it.", "thought": True}], "role": "model"}}],
        "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "stream-1",
    },
    {
        "candidates": [{"content": {"parts": [{"text": "Hello"}], "role": "model"}, "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 1, "totalTokenCount": 11},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "stream-1",
    },
    {
        "candidates": [
            {
                "content": {"parts": [{"text": ", world!"}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 10,
            "candidatesTokenCount": 4,
            "totalTokenCount": 26,
            "thoughtsTokenCount": 12,
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "stream-1",
    },
)

TOOL_STREAM = sse(
    {
        "candidates": [{"content": {"parts": [{"text": "Let me check."}], "role": "model"}}],
        "modelVersion": "gemini-2.5-flash",
        "responseId": "stream-2",
    },
    {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {"functionCall": {"name": "get_weather", "args": {"location": "Boston, MA"}}},
                        {"functionCall": {"name": "get_time", "args": {}}},
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 70, "candidatesTokenCount": 20, "totalTokenCount": 90},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "stream-2",
    },
)


def events_of(raw, *, split=None):
    reader = GeminiReader()
    if split is None:
        return reader.feed(raw), reader
    return reader.feed(raw[:split]) + reader.feed(raw[split:]), reader


def run(raw, *, client_wants_usage, split=None):
    events, reader = events_of(raw, split=split)
    stream = t.Stream(client_wants_usage=client_wants_usage)
    return [chunk for event in events for chunk in stream.feed(event)], reader


def chunk(id_, delta, finish_reason=None, index=0):
    return {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": NOW,
        "model": "gemini-2.5-flash",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def test_a_text_stream_becomes_role_thought_text_finish_and_the_usage_chunk_last():
    chunks, reader = run(TEXT_STREAM, client_wants_usage=True)

    assert reader.completed  # the lifecycle stops reading here: the usage chunk is already out
    assert chunks == [
        chunk("stream-1", {"role": "assistant", "content": ""}),
        chunk("stream-1", {"reasoning_content": "Thinking about it."}),
        chunk("stream-1", {"content": "Hello"}),
        chunk("stream-1", {"content": ", world!"}),
        chunk("stream-1", {}, "stop"),
        {
            "id": "stream-1",
            "object": "chat.completion.chunk",
            "created": NOW,
            "model": "gemini-2.5-flash",
            "choices": [],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 16,
                "total_tokens": 26,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 12},
            },
        },
    ]


def test_a_function_call_stream_becomes_whole_tool_call_deltas_and_finishes_as_tool_calls():
    chunks, _ = run(TOOL_STREAM, client_wants_usage=False)

    assert chunks == [
        chunk("stream-2", {"role": "assistant", "content": ""}),
        chunk("stream-2", {"content": "Let me check."}),
        chunk(
            "stream-2",
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_0",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Boston, MA"}'},
                    }
                ]
            },
        ),
        chunk(
            "stream-2",
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                    }
                ]
            },
        ),
        chunk("stream-2", {}, "tool_calls"),  # without usage asked, the stream ends at the finish chunk
    ]


def test_the_chunks_accumulate_in_the_openai_sdk_to_the_whole_answer():
    state = ChatCompletionStreamState()
    chunks, _ = run(TOOL_STREAM, client_wants_usage=True)
    for each in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(each))

    completion = state.get_final_completion()

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert [c.function.name for c in choice.message.tool_calls or []] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (70, 20)


@pytest.mark.parametrize("raw", [TEXT_STREAM, TOOL_STREAM], ids=["text", "tools"])
def test_the_same_chunks_whatever_byte_boundary_the_upstream_bytes_split_at(raw, monkeypatch):
    def fresh_ids():
        ids = iter(f"call_{n}" for n in range(100))
        monkeypatch.setattr(t, "_new_call_id", lambda: next(ids))

    fresh_ids()
    whole, _ = run(raw, client_wants_usage=True)

    for split in range(1, len(raw)):
        fresh_ids()
        parts, _ = run(raw, client_wants_usage=True, split=split)
        assert parts == whole, split


def test_a_streamed_image_becomes_a_delta_images_entry():
    raw = sse(
        {
            "candidates": [
                {
                    "content": {
                        "parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}],
                        "role": "model",
                    },
                    "finishReason": "STOP",
                }
            ],
            "modelVersion": "gemini-2.5-flash",
            "responseId": "img",
        }
    )

    chunks, _ = run(raw, client_wants_usage=False)

    assert chunks[1] == chunk(
        "img", {"images": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}
    )
    assert chunks[-1] == chunk("img", {}, "stop")


def test_a_blocked_prompt_streams_a_content_filter_finish_and_usage():
    raw = sse(
        {
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": {"promptTokenCount": 7},
            "responseId": "b",
        }
    )

    chunks, reader = run(raw, client_wants_usage=True)

    assert reader.completed
    assert [c["choices"][0]["finish_reason"] if c["choices"] else "usage" for c in chunks] == [
        None,
        "content_filter",
        "usage",
    ]
    assert chunks[-1]["usage"]["prompt_tokens"] == 7


def test_two_candidates_finish_separately_and_usage_follows_the_last():
    raw = sse(
        {
            "candidates": [
                {"content": {"parts": [{"text": "A"}], "role": "model"}, "index": 0, "finishReason": "STOP"},
                {"content": {"parts": [{"text": "B"}], "role": "model"}, "index": 1},
            ],
            "responseId": "two",
            "modelVersion": "gemini-2.5-flash",
        },
        {
            "candidates": [
                {"content": {"parts": [{"text": "b"}], "role": "model"}, "index": 1, "finishReason": "MAX_TOKENS"}
            ],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 3},
            "responseId": "two",
            "modelVersion": "gemini-2.5-flash",
        },
    )

    chunks, _ = run(raw, client_wants_usage=True)

    finishes = [(c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in chunks if c["choices"]]
    assert finishes[-1] == (1, "length") and (0, "stop") in finishes
    assert chunks[-1]["usage"]["total_tokens"] == 6


def test_error_events_keepalives_and_anything_after_the_end_produce_nothing():
    stream = t.Stream(client_wants_usage=True)
    error = {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}

    assert stream.feed(Event(raw=b"", data=error)) == []
    assert stream.feed(Event(raw=b": keep-alive\n\n")) == []
    events, _ = events_of(TEXT_STREAM)
    for event in events:
        stream.feed(event)
    assert stream.feed(events[-1]) == []
