"""Golden tests: Anthropic Messages client → Gemini API (generateContent) upstream.

Pure: no database, no network. Gemini payloads follow the documented shapes
(ai.google.dev/api/generate-content, /gemini-api/docs/function-calling, /thinking,
/thought-signatures); the outputs are checked against the installed anthropic SDK's own types
and stream accumulator, and the stream is cut by the real GeminiReader.
"""

from __future__ import annotations

import copy
import json

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message

from openbili.core.errors import InvalidRequest
from usage.gateway.providers.base import Event
from usage.gateway.providers.gemini import GeminiReader
from usage.gateway.translate import messages_to_gemini as t
from usage.gateway.translate.chat_to_gemini import FOREIGN_SIGNATURE

LIMIT = 32_000  # the model's output limit, max_output_tokens
CLIENT = {"model": "claude-sonnet-4-5"}  # what the client asked for: replies are named after it


@pytest.fixture(autouse=True)
def fixed_ids(monkeypatch):
    ids = iter(range(100))
    monkeypatch.setattr(t, "_new_id", lambda prefix: f"{prefix}{next(ids)}")


def request(body: dict, *, limit: int = LIMIT) -> dict:
    return t.request(body, max_output_tokens=limit)


def minimal(**extra) -> dict:
    return {"model": "gemini-3-pro", "max_tokens": 1024, "messages": [user("Hi")]} | extra


def user(content) -> dict:
    return {"role": "user", "content": content}


def assistant(content) -> dict:
    return {"role": "assistant", "content": content}


def rejected(body: dict, *, param: str, says: str = "") -> InvalidRequest:
    original = copy.deepcopy(body)
    with pytest.raises(InvalidRequest) as caught:
        request(body)
    assert body == original  # refused without touching the client's body
    assert caught.value.param == param
    assert says in caught.value.message
    return caught.value


def tool_use(call_id: str, name: str, arguments: dict) -> dict:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def tool_result(call_id: str, content, **extra) -> dict:
    return {"type": "tool_result", "tool_use_id": call_id, "content": content, **extra}


READ_TOOL = {
    "name": "Read",
    "description": "Read a file.",
    "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]},
    "cache_control": {"type": "ephemeral"},
}


# --- request: a whole Claude Code turn -------------------------------------------------------

CLAUDE_CODE_BODY = {
    "model": "gemini-3-pro",
    "max_tokens": 64_000,
    "stream": True,
    "system": [
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
        {"type": "text", "text": "Work in /repo.", "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [
        user([{"type": "text", "text": "Why does the build fail?", "cache_control": {"type": "ephemeral"}}]),
        assistant(
            [
                # From an earlier Claude turn: Anthropic's thinking, unreadable here.
                {"type": "thinking", "thinking": "Read the log first.", "signature": "EqQBCkgIARABGAIiQL"},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                {"type": "text", "text": "Let me read the log."},
                tool_use("toolu_01A", "Read", {"file_path": "/repo/构建.log"}),
            ]
        ),
        user(
            [
                tool_result("toolu_01A", "error: missing semicolon"),
                {"type": "text", "text": "Fix it."},
            ]
        ),
        assistant(
            [
                # From a Gemini turn through this translation: its thought and its call's signature.
                {"type": "thinking", "thinking": "A one-line fix.", "signature": "gemini:c2lnLXRob3VnaHQ="},
                {"type": "thinking", "thinking": "", "signature": "gemini:c2lnLWNhbGw="},
                tool_use("call_9", "Read", {"file_path": "/repo/main.c"}),
            ]
        ),
        user([tool_result("call_9", [{"type": "text", "text": "int main() {}"}], is_error=True)]),
    ],
    "tools": [READ_TOOL],
    "tool_choice": {"type": "auto"},
    "thinking": {"type": "enabled", "budget_tokens": 31_999},
    "metadata": {"user_id": "user_abc_account_123_session_xyz"},
    "temperature": 1,
}


def test_a_claude_code_turn_becomes_one_generate_content_request():
    assert request(CLAUDE_CODE_BODY) == {
        "contents": [
            {"role": "user", "parts": [{"text": "Why does the build fail?"}]},
            {
                "role": "model",
                "parts": [
                    {"text": "Let me read the log."},
                    {
                        "functionCall": {"id": "toolu_01A", "name": "Read", "args": {"file_path": "/repo/构建.log"}},
                        # Begun on Claude: no Gemini signature, so the documented placeholder.
                        "thoughtSignature": "skip_thought_signature_validator",
                    },
                ],
            },
            {
                "role": "user",
                "parts": [
                    {
                        "functionResponse": {
                            "id": "toolu_01A",
                            "name": "Read",
                            "response": {"output": "error: missing semicolon"},
                        }
                    },
                    {"text": "Fix it."},
                ],
            },
            {
                "role": "model",
                "parts": [
                    {"text": "A one-line fix.", "thought": True, "thoughtSignature": "c2lnLXRob3VnaHQ="},
                    {
                        "functionCall": {"id": "call_9", "name": "Read", "args": {"file_path": "/repo/main.c"}},
                        "thoughtSignature": "c2lnLWNhbGw=",
                    },
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"id": "call_9", "name": "Read", "response": {"error": "int main() {}"}}}
                ],
            },
        ],
        "systemInstruction": {
            "parts": [{"text": "You are Claude Code, Anthropic's official CLI for Claude."}, {"text": "Work in /repo."}]
        },
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "Read",
                        "description": "Read a file.",
                        "parametersJsonSchema": READ_TOOL["input_schema"],
                    }
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        "generationConfig": {
            "maxOutputTokens": 32_000,
            "temperature": 1,
            "thinkingConfig": {"thinkingBudget": 31_999, "includeThoughts": True},
        },
    }


def test_the_client_body_is_never_mutated_and_shares_nothing_with_the_upstream_body():
    body = copy.deepcopy(CLAUDE_CODE_BODY) | {"output_config": {"format": {"type": "json_schema", "schema": {}}}}
    original = copy.deepcopy(body)
    out = request(body)
    assert body == original
    out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["properties"].clear()
    out["contents"][1]["parts"][1]["functionCall"]["args"]["file_path"] = "changed"
    out["generationConfig"]["responseJsonSchema"]["x"] = 1
    assert body == original


def test_a_plain_message_gets_the_smaller_of_max_tokens_and_the_model_limit():
    assert request(minimal()) == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "generationConfig": {"maxOutputTokens": 1024},
    }
    assert request(minimal(max_tokens=50_000))["generationConfig"] == {"maxOutputTokens": LIMIT}


def test_system_as_a_string_and_consecutive_same_role_turns_join():
    body = minimal(
        system="Be brief.",
        messages=[user("Hi"), user([{"type": "text", "text": "there"}]), assistant("Hello"), assistant("!")],
    )
    out = request(body)
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}, {"text": "there"}]},
        {"role": "model", "parts": [{"text": "Hello"}, {"text": "!"}]},
    ]


def test_empty_text_is_dropped_and_a_thinking_only_assistant_turn_disappears():
    body = minimal(
        system="",
        messages=[
            user([{"type": "text", "text": ""}, {"type": "text", "text": "Hi"}]),
            assistant([{"type": "thinking", "thinking": "hm", "signature": "EqAnthropic"}]),
            user("Again"),
        ],
    )
    out = request(body)
    assert "systemInstruction" not in out
    assert out["contents"] == [{"role": "user", "parts": [{"text": "Hi"}, {"text": "Again"}]}]


def test_images_and_documents_become_inline_or_file_data():
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a/cat.JPG?size=2#x"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/paper"}, "title": "Paper"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Plain notes."}},
    ]
    assert request(minimal(messages=[user(content)]))["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/a/cat.JPG?size=2#x"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBER"}},
        {"fileData": {"mimeType": "application/pdf", "fileUri": "https://example.com/paper"}},
        {"text": "Plain notes."},
    ]


def test_a_tool_result_with_blocks_gives_text_to_the_response_and_images_after_it():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "UklG"}}
    body = minimal(
        messages=[
            user("Look"),
            assistant([tool_use("a", "shot", {}), tool_use("b", "ls", {"dir": "."})]),
            user(
                [
                    tool_result("a", [{"type": "text", "text": "Screen:"}, image, {"type": "text", "text": "done"}]),
                    tool_result("b", None),
                    {"type": "text", "text": "What now?"},
                ]
            ),
        ]
    )
    contents = request(body)["contents"]
    assert contents[1]["parts"] == [
        # Parallel calls: only the first of the step needs a signature, as Gemini gives them.
        {"functionCall": {"id": "a", "name": "shot", "args": {}}, "thoughtSignature": FOREIGN_SIGNATURE},
        {"functionCall": {"id": "b", "name": "ls", "args": {"dir": "."}}},
    ]
    assert contents[2]["parts"] == [
        {"functionResponse": {"id": "a", "name": "shot", "response": {"output": "Screen:\n\ndone"}}},
        {"functionResponse": {"id": "b", "name": "ls", "response": {"output": ""}}},
        {"inlineData": {"mimeType": "image/webp", "data": "UklG"}},
        {"text": "What now?"},
    ]


def test_a_gemini_signature_on_a_thinking_block_goes_to_the_next_part_of_the_turn_only():
    body = minimal(
        messages=[
            user("Go"),
            assistant(
                [
                    {"type": "thinking", "thinking": "", "signature": "gemini:SIG"},
                    {"type": "text", "text": "Calling."},
                    tool_use("c", "f", {}),
                ]
            ),
            user([tool_result("c", "ok")]),
        ]
    )
    assert request(body)["contents"][1]["parts"] == [
        {"text": "Calling.", "thoughtSignature": "SIG"},
        {"functionCall": {"id": "c", "name": "f", "args": {}}, "thoughtSignature": FOREIGN_SIGNATURE},
    ]


# --- request: tools, sampling, thinking, output format ---------------------------------------


@pytest.mark.parametrize(
    ("tool_choice", "config"),
    [
        ({"type": "auto"}, {"mode": "AUTO"}),
        ({"type": "any"}, {"mode": "ANY"}),
        ({"type": "tool", "name": "Read"}, {"mode": "ANY", "allowedFunctionNames": ["Read"]}),
        ({"type": "none"}, {"mode": "NONE"}),
        ({"type": "auto", "disable_parallel_tool_use": False}, {"mode": "AUTO"}),
    ],
)
def test_tool_choice_becomes_the_function_calling_config(tool_choice, config):
    out = request(minimal(tools=[READ_TOOL], tool_choice=tool_choice))
    assert out["toolConfig"] == {"functionCallingConfig": config}


def test_no_tools_means_no_declarations_and_no_tool_config():
    out = request(minimal(tools=[], tool_choice={"type": "auto"}))
    assert "tools" not in out and "toolConfig" not in out


def test_sampling_stop_sequences_and_json_output_go_into_generation_config():
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    body = minimal(
        temperature=0.2,
        top_p=0.9,
        top_k=40,
        stop_sequences=["\n\nHuman:", "END", "a", "b", "c"],
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert request(body)["generationConfig"] == {
        "maxOutputTokens": 1024,
        "temperature": 0.2,
        "topP": 0.9,
        "topK": 40,
        "stopSequences": ["\n\nHuman:", "END", "a", "b", "c"],
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }
    beta = minimal(output_format={"type": "json_schema", "schema": schema})
    assert request(beta)["generationConfig"]["responseJsonSchema"] == schema


@pytest.mark.parametrize(
    ("fields", "thinking_config"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, {"thinkingBudget": 2048, "includeThoughts": True}),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048, "display": "omitted"}}, {"thinkingBudget": 2048}),
        ({"thinking": {"type": "adaptive"}}, {"includeThoughts": True}),
        (
            {"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}},
            {"thinkingBudget": 1024, "includeThoughts": True},
        ),
        ({"output_config": {"effort": "max"}}, {"thinkingBudget": 8000}),  # clamped to max_tokens
        (
            {"thinking": {"type": "enabled", "budget_tokens": 4000}, "output_config": {"effort": "high"}},
            {"thinkingBudget": 4000, "includeThoughts": True},  # an explicit budget wins
        ),
        ({"thinking": {"type": "disabled"}}, {"thinkingBudget": 0}),
        ({}, None),
    ],
)
def test_thinking_becomes_a_thinking_config(fields, thinking_config):
    config = request(minimal(max_tokens=8000, **fields))["generationConfig"]
    assert config.get("thinkingConfig") == thinking_config


def test_metadata_service_tier_and_cache_control_change_nothing():
    plain = request(minimal())
    assert (
        request(minimal(metadata={"user_id": "u1"}, service_tier="auto", cache_control={"type": "ephemeral"})) == plain
    )


# --- request: what cannot be carried is refused, naming the param ---------------------------


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"type": "web_search_20250305", "name": "web_search", "max_uses": 5}, "tools[1]"),
        ({"type": "bash_20250124", "name": "bash"}, "tools[1]"),
        ({"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}, "tools[1]"),
        ({"type": "computer_20250124", "name": "computer", "display_width_px": 1024}, "tools[1]"),
        ({"name": "no_schema"}, "tools[1].input_schema"),
    ],
)
def test_server_tools_and_malformed_tools_are_refused(tool, param):
    rejected(minimal(tools=[READ_TOOL, tool]), param=param)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}, "tools": [READ_TOOL]},
            "tool_choice.disable_parallel_tool_use",
        ),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"tool_choice": {"type": "tool"}, "tools": [READ_TOOL]}, "tool_choice.name"),
        ({"stop_sequences": ["1", "2", "3", "4", "5", "6"]}, "stop_sequences"),
        ({"stop_sequences": ["ok", 7]}, "stop_sequences[1]"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "between_tools"}}, "thinking.type"),
        ({"output_config": {"effort": "extreme"}}, "output_config.effort"),
        ({"output_config": {"format": {"type": "json_object"}}}, "output_config.format.type"),
        ({"top_k": 0}, "top_k"),
        ({"temperature": "hot"}, "temperature"),
        ({"container": "container_1"}, "container"),
        ({"mcp_servers": [{"type": "url", "url": "https://mcp.example.com"}]}, "mcp_servers"),
        ({"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}}, "context_management"),
        ({"inference_geo": "us"}, "inference_geo"),
    ],
)
def test_fields_gemini_cannot_carry_are_refused(extra, param):
    rejected(minimal(**extra), param=param)


@pytest.mark.parametrize(
    ("block", "param"),
    [
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lG"}},
            "messages[0].content[0].source.media_type",
        ),
        (
            {"type": "image", "source": {"type": "url", "url": "https://example.com/image"}},
            "messages[0].content[0].source.url",
        ),
        (
            {"type": "image", "source": {"type": "url", "url": "ftp://example.com/a.png"}},
            "messages[0].content[0].source.url",
        ),
        ({"type": "image", "source": {"type": "file", "file_id": "file_1"}}, "messages[0].content[0].source.type"),
        (
            {"type": "document", "source": {"type": "base64", "media_type": "text/csv", "data": "YQ=="}},
            "messages[0].content[0].source.media_type",
        ),
        ({"type": "document", "source": {"type": "content", "content": []}}, "messages[0].content[0].source.type"),
        (
            {"type": "document", "source": {"type": "text", "data": "x"}, "citations": {"enabled": True}},
            "messages[0].content[0].citations",
        ),
        ({"type": "search_result", "source": "https://a", "title": "A", "content": []}, "messages[0].content[0]"),
        ({"type": "tool_result", "tool_use_id": "toolu_none", "content": "x"}, "messages[0].content[0].tool_use_id"),
        ({"text": "no type"}, "messages[0].content[0].type"),
    ],
)
def test_user_blocks_gemini_cannot_read_are_refused_naming_the_block(block, param):
    rejected(minimal(messages=[user([block])]), param=param)


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "system", "content": "x"}], "messages[0].role"),
        ([user("")], "messages[0].content"),
        (
            [user("Hi"), assistant([{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}])],
            "messages[1].content[0]",
        ),
        ([user("Hi"), assistant([tool_use("", "f", {})])], "messages[1].content[0].id"),
        ([user("Hi"), assistant([tool_use("c", "f", "not an object")])], "messages[1].content[0].input"),
        (
            [user("Hi"), assistant([{"type": "thinking", "thinking": 1, "signature": "gemini:x"}])],
            "messages[1].content[0].thinking",
        ),
    ],
)
def test_wrong_message_shapes_are_refused_naming_the_place(messages, param):
    rejected(minimal(messages=messages), param=param)


# --- response --------------------------------------------------------------------------------

USAGE = {
    "promptTokenCount": 120,
    "cachedContentTokenCount": 100,
    "toolUsePromptTokenCount": 5,
    "candidatesTokenCount": 30,
    "thoughtsTokenCount": 12,
    "totalTokenCount": 167,
}
MESSAGE_USAGE = {
    "input_tokens": 25,  # 120 + 5 − 100
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 100,
    "output_tokens": 42,  # 30 + 12
}

TOOL_REPLY = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "The user wants the weather.", "thought": True},
                    {"text": " Two cities.", "thought": True},
                    {"text": "Checking both."},
                    {
                        "functionCall": {"id": "fc_1", "name": "get_weather", "args": {"city": "Zürich"}},
                        "thoughtSignature": "U0lHMQ==",
                    },
                    {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": USAGE,
    "modelVersion": "gemini-3-pro-preview",
    "responseId": "resp-1",
}

TOOL_MESSAGE_CONTENT = [
    {"type": "thinking", "thinking": "The user wants the weather. Two cities.", "signature": ""},
    {"type": "text", "text": "Checking both."},
    {"type": "thinking", "thinking": "", "signature": "gemini:U0lHMQ=="},
    {"type": "tool_use", "id": "fc_1", "name": "get_weather", "input": {"city": "Zürich"}},
    {"type": "tool_use", "id": "toolu_0", "name": "get_weather", "input": {"city": "Oslo"}},
]


def test_function_calls_become_tool_use_with_their_signature_before_them():
    out = t.response(TOOL_REPLY, request=CLIENT)
    assert out == {
        "id": "msg_resp-1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": TOOL_MESSAGE_CONTENT,
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": MESSAGE_USAGE,
    }
    Message.model_validate(out)


def test_the_reply_sent_back_as_history_restores_every_signature_where_gemini_put_it():
    body = minimal(
        messages=[
            user("Weather?"),
            assistant(t.response(TOOL_REPLY, request=CLIENT)["content"]),
            user([tool_result("fc_1", "12°C"), tool_result("toolu_0", "3°C")]),
        ],
    )
    assert request(body)["contents"][1] == {
        "role": "model",
        "parts": [
            # The unsigned thought summary is not sent back: Gemini reads nothing from it.
            {"text": "Checking both."},
            {
                "functionCall": {"id": "fc_1", "name": "get_weather", "args": {"city": "Zürich"}},
                "thoughtSignature": "U0lHMQ==",
            },
            {"functionCall": {"id": "toolu_0", "name": "get_weather", "args": {"city": "Oslo"}}},
        ],
    }


def test_a_text_reply_with_signed_thoughts_and_a_text_signature():
    data = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Plan.", "thought": True, "thoughtSignature": "VEhPVUdIVA=="},
                        {"text": "Hello", "thoughtSignature": "VEVYVA=="},
                        {"text": ", world!"},
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 4, "totalTokenCount": 14},
    }
    out = t.response(data, request=CLIENT)
    assert out["id"] == "msg_0"  # no responseId: a fresh one
    assert out["content"] == [
        {"type": "thinking", "thinking": "Plan.", "signature": "gemini:VEhPVUdIVA=="},
        {"type": "text", "text": "Hello, world!"},  # a text signature is dropped (never checked)
    ]
    assert out["stop_reason"] == "end_turn"
    assert out["usage"] == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 4,
    }
    Message.model_validate(out)
    back = request(minimal(messages=[user("Hi"), assistant(out["content"]), user("More")]))
    assert back["contents"][1]["parts"] == [
        {"text": "Plan.", "thought": True, "thoughtSignature": "VEhPVUdIVA=="},
        {"text": "Hello, world!"},
    ]


@pytest.mark.parametrize(
    ("reason", "stop_reason"),
    [
        ("STOP", "end_turn"),
        ("MAX_TOKENS", "max_tokens"),
        ("SAFETY", "refusal"),
        ("RECITATION", "refusal"),
        ("PROHIBITED_CONTENT", "refusal"),
        ("BLOCKLIST", "refusal"),
        ("SPII", "refusal"),
        ("MALFORMED_FUNCTION_CALL", "end_turn"),
        ("OTHER", "end_turn"),
        ("SOMETHING_NEW", "end_turn"),
    ],
)
def test_every_finish_reason_maps_to_a_stop_reason(reason, stop_reason):
    data = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]}
    assert t.response(data, request=CLIENT)["stop_reason"] == stop_reason


def test_a_blocked_prompt_is_an_empty_refusal_with_the_prompt_billed():
    data = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
        "responseId": "blocked",
    }
    out = t.response(data, request=CLIENT)
    assert out["content"] == [] and out["stop_reason"] == "refusal"
    assert out["usage"]["input_tokens"] == 8
    Message.model_validate(out)


def test_only_candidate_zero_is_answered():
    data = {
        "candidates": [
            {"content": {"parts": [{"text": "first"}]}, "finishReason": "STOP", "index": 0},
            {"content": {"parts": [{"text": "second"}]}, "finishReason": "STOP", "index": 1},
        ]
    }
    assert t.response(data, request=CLIENT)["content"] == [{"type": "text", "text": "first"}]


# --- stream ------------------------------------------------------------------------------------


def sse(*chunks: dict) -> bytes:
    # Google frames streamGenerateContent?alt=sse as "data: <json>\r\n\r\n".
    return b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)


def run(raw: bytes) -> tuple[list[dict], GeminiReader]:
    reader = GeminiReader()
    stream = t.Stream(client_wants_usage=False, request=CLIENT)
    return [out for event in reader.feed(raw) for out in stream.feed(event)], reader


def accumulate(events: list[dict]) -> Message:
    """What the SDK's messages.stream(...).get_final_message() makes of these events."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for event in events:
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)  # type: ignore[arg-type]
    assert snapshot is not None
    return snapshot


def start(index: int, block: dict) -> dict:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, kind: str, **fields) -> dict:
    return {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}}


def stop(index: int) -> dict:
    return {"type": "content_block_stop", "index": index}


THINKING = {"type": "thinking", "thinking": "", "signature": ""}
TEXT = {"type": "text", "text": ""}

TEXT_STREAM = sse(
    {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Thinking", "thought": True}]}}],
        "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
        "responseId": "stream-1",
    },
    {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": " more.", "thought": True, "thoughtSignature": "VA=="}]}}
        ],
        "responseId": "stream-1",
    },
    {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}]}}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 1, "totalTokenCount": 11},
        "responseId": "stream-1",
    },
    {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": ", world!"}, {"text": "", "thoughtSignature": "RQ=="}]},
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 10,
            "candidatesTokenCount": 4,
            "thoughtsTokenCount": 12,
            "totalTokenCount": 26,
        },
        "responseId": "stream-1",
    },
)


def test_a_text_stream_becomes_thinking_then_text_blocks_and_a_message_delta_at_the_finish():
    events, reader = run(TEXT_STREAM)
    assert reader.completed  # the lifecycle stops reading here: message_delta is already out
    assert events == [
        {
            "type": "message_start",
            "message": {
                "id": "msg_stream-1",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 0,
                },
            },
        },
        start(0, THINKING),
        delta(0, "thinking_delta", thinking="Thinking"),
        delta(0, "thinking_delta", thinking=" more."),
        delta(0, "signature_delta", signature="gemini:VA=="),
        stop(0),
        start(1, TEXT),
        delta(1, "text_delta", text="Hello"),
        delta(1, "text_delta", text=", world!"),
        stop(1),
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 16,
            },
        },
    ]
    assert all(event["type"] != "message_stop" for event in events)  # the endpoint's, after billing
    final = accumulate(events)
    assert [block.to_dict() for block in final.content] == [
        {"type": "thinking", "thinking": "Thinking more.", "signature": "gemini:VA=="},
        {"type": "text", "text": "Hello, world!"},
    ]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 16


def test_a_streamed_reply_accumulates_to_what_response_gives_for_the_same_parts():
    chunks = [
        {
            "candidates": [
                {"content": {"role": "model", "parts": TOOL_REPLY["candidates"][0]["content"]["parts"][:3]}}
            ],
            "usageMetadata": {"promptTokenCount": 120, "cachedContentTokenCount": 100, "totalTokenCount": 120},
            "responseId": "resp-1",
        },
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": TOOL_REPLY["candidates"][0]["content"]["parts"][3:]},
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": USAGE,
            "responseId": "resp-1",
        },
    ]
    events, reader = run(sse(*chunks))
    assert reader.completed
    assert events[1:] == [
        start(0, THINKING),
        delta(0, "thinking_delta", thinking="The user wants the weather."),
        delta(0, "thinking_delta", thinking=" Two cities."),
        stop(0),
        start(1, TEXT),
        delta(1, "text_delta", text="Checking both."),
        stop(1),
        start(2, THINKING),
        delta(2, "signature_delta", signature="gemini:U0lHMQ=="),
        stop(2),
        start(3, {"type": "tool_use", "id": "fc_1", "name": "get_weather", "input": {}}),
        delta(3, "input_json_delta", partial_json='{"city": "Zürich"}'),
        stop(3),
        start(4, {"type": "tool_use", "id": "toolu_0", "name": "get_weather", "input": {}}),
        delta(4, "input_json_delta", partial_json='{"city": "Oslo"}'),
        stop(4),
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": MESSAGE_USAGE,
        },
    ]
    assert events[0]["message"]["usage"]["cache_read_input_tokens"] == 100
    final = accumulate(events)
    assert [block.to_dict() for block in final.content] == TOOL_MESSAGE_CONTENT
    assert final.stop_reason == "tool_use"
    assert final.usage.to_dict() == MESSAGE_USAGE


def test_a_blocked_prompt_streams_a_message_start_and_a_refusal():
    events, reader = run(sse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "responseId": "b"}))
    assert reader.completed
    assert [event["type"] for event in events] == ["message_start", "message_delta"]
    assert events[1]["delta"] == {"stop_reason": "refusal", "stop_sequence": None}
    assert accumulate(events).stop_reason == "refusal"


def test_a_max_tokens_finish_closes_the_open_block():
    chunk = {"candidates": [{"content": {"parts": [{"text": "Cut"}]}, "finishReason": "MAX_TOKENS"}]}
    events, _ = run(sse(chunk))
    assert events[0]["message"]["id"] == "msg_0"
    assert events[1:] == [
        start(0, TEXT),
        delta(0, "text_delta", text="Cut"),
        stop(0),
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {
                "input_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        },
    ]


def test_error_chunks_keepalives_and_anything_after_the_finish_produce_nothing():
    stream = t.Stream(client_wants_usage=True, request=CLIENT)
    assert stream.feed(Event(raw=b": keep-alive\n\n")) == []
    error = {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}
    assert stream.feed(Event(raw=b"", data=error)) == []
    finish = {"candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}]}
    assert stream.feed(Event(raw=b"", data=finish))[-1]["type"] == "message_delta"
    assert stream.feed(Event(raw=b"", data=finish)) == []
