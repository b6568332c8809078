"""Golden tests: Anthropic Messages client → OpenAI Chat Completions upstream. Pure: no database,
no network. Every rule of the translation has its input and its exact output here; the outputs
are also checked against the installed anthropic SDK's own types and stream accumulator."""

from __future__ import annotations

import copy
import json

import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent

from openbili.core.errors import InvalidRequest, UpstreamError
from usage.gateway.providers.base import Event
from usage.gateway.translate import messages_to_openai as translate
from usage.gateway.translate import translation_for

LIMIT = 32_000  # the model's output limit, max_output_tokens


def request(body: dict, *, limit: int = LIMIT) -> dict:
    return translate.request(body, max_output_tokens=limit)


def minimal(**extra) -> dict:
    return {"model": "gpt-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hi"}]} | extra


def rejected(body: dict) -> InvalidRequest:
    original = copy.deepcopy(body)
    with pytest.raises(InvalidRequest) as caught:
        request(body)
    assert body == original
    return caught.value


# --- request: a whole Claude Code turn -------------------------------------------------------

CLAUDE_CODE_BODY = {
    "model": "gpt-5",
    "max_tokens": 64_000,
    "stream": True,
    "system": [
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
        {"type": "text", "text": "Work in /repo.", "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Why does the build fail?", "cache_control": {"type": "ephemeral"}}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Read the log first.", "signature": "EqQBCkgIARABGAIiQL"},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                {"type": "text", "text": "Let me read the log."},
                {"type": "tool_use", "id": "toolu_01A", "name": "Read", "input": {"file_path": "/repo/构建.log"}},
                {"type": "tool_use", "id": "toolu_01B", "name": "Bash", "input": {"command": "make -n"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Fix it."},
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "error: missing ';'"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01B",
                    "content": [{"type": "text", "text": "make: *** [all] Error 2"}],
                    "is_error": True,
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        },
    ],
    "tools": [
        {
            "name": "Read",
            "description": "Read a file.",
            "input_schema": {
                "type": "object",
                "properties": {"file_path": {"type": "string"}},
                "required": ["file_path"],
            },
        },
        {
            "name": "Bash",
            "description": "Run a shell command.",
            "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
            "cache_control": {"type": "ephemeral"},
        },
    ],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "thinking": {"type": "enabled", "budget_tokens": 31_999},
    "metadata": {"user_id": "user_3f2a_account_session_9c1e"},
    "temperature": 1,
    "anthropic_beta_unknown_key": {"ignored": True},
}

CLAUDE_CODE_CHAT = {
    "messages": [
        {"role": "system", "content": "You are Claude Code, Anthropic's official CLI for Claude.\n\nWork in /repo."},
        {"role": "user", "content": [{"type": "text", "text": "Why does the build fail?"}]},
        {
            "role": "assistant",
            "content": "Let me read the log.",
            "tool_calls": [
                {
                    "id": "toolu_01A",
                    "type": "function",
                    "function": {"name": "Read", "arguments": '{"file_path": "/repo/构建.log"}'},
                },
                {
                    "id": "toolu_01B",
                    "type": "function",
                    "function": {"name": "Bash", "arguments": '{"command": "make -n"}'},
                },
            ],
        },
        # Tool results first, in their order, then what else the user said in that turn.
        {"role": "tool", "tool_call_id": "toolu_01A", "content": "error: missing ';'"},
        {"role": "tool", "tool_call_id": "toolu_01B", "content": "Error: make: *** [all] Error 2"},
        {"role": "user", "content": [{"type": "text", "text": "Fix it."}]},
    ],
    "max_completion_tokens": 32_000,  # clamped to the model's limit
    "stream": True,
    "temperature": 1,
    "user": "user_3f2a_account_session_9c1e",
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "Read",
                "description": "Read a file.",
                "parameters": {
                    "type": "object",
                    "properties": {"file_path": {"type": "string"}},
                    "required": ["file_path"],
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "Bash",
                "description": "Run a shell command.",
                "parameters": {
                    "type": "object",
                    "properties": {"command": {"type": "string"}},
                    "required": ["command"],
                },
            },
        },
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning_effort": "high",
}


def test_claude_code_turn_is_translated_exactly():
    assert request(CLAUDE_CODE_BODY) == CLAUDE_CODE_CHAT


def test_the_body_is_never_mutated_nor_shared():
    body = copy.deepcopy(CLAUDE_CODE_BODY)
    out = request(body)
    assert body == CLAUDE_CODE_BODY
    # The provider edits its copy (model, stream_options): nothing of the client's body moves.
    out["tools"][0]["function"]["parameters"]["properties"]["x"] = {}
    out["messages"][1]["content"][0]["text"] = "changed"
    assert body == CLAUDE_CODE_BODY


def test_model_and_stream_options_are_left_to_the_provider():
    out = request(minimal(stream=True))
    assert "model" not in out
    assert "stream_options" not in out
    assert out["stream"] is True
    assert "stream" not in request(minimal(stream=False))


def test_the_package_routes_messages_clients_on_chat_upstreams_here():
    pair = translation_for("messages", "chat")
    assert pair is not None
    assert pair.request is translate.request
    assert pair.response is translate.response
    assert pair.stream is translate.Stream


# --- request: system, user blocks ------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "messages"),
    [
        ("Be brief.", [{"role": "system", "content": "Be brief."}]),
        ([{"type": "text", "text": "A."}, {"type": "text", "text": "B."}], [{"role": "system", "content": "A.\n\nB."}]),
        ("", []),
        ([], []),
        (None, []),
    ],
)
def test_system_becomes_the_first_message(system, messages):
    assert request(minimal(system=system))["messages"] == [*messages, {"role": "user", "content": "Hi"}]


def test_user_string_content_stays_a_string():
    assert request(minimal())["messages"] == [{"role": "user", "content": "Hi"}]


def test_images_and_documents_become_chat_parts():
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQ="}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Plain notes."}},
        {"type": "text", "text": "Compare them."},
    ]
    out = request(minimal(messages=[{"role": "user", "content": content}]))
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {
                    "type": "file",
                    "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQ="},
                },
                {"type": "text", "text": "Plain notes."},
                {"type": "text", "text": "Compare them."},
            ],
        }
    ]


def test_tool_result_images_follow_the_tool_messages_in_a_user_message():
    png = {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    turn = [
        {
            "type": "tool_result",
            "tool_use_id": "toolu_1",
            "content": [{"type": "text", "text": "Screenshot taken."}, {"type": "image", "source": png}],
        },
        {"type": "tool_result", "tool_use_id": "toolu_2"},  # no content at all
        {
            "type": "tool_result",
            "tool_use_id": "toolu_3",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        },
        {"type": "text", "text": "What do you see?"},
    ]
    out = request(minimal(messages=[{"role": "user", "content": turn}]))
    assert out["messages"] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Screenshot taken."},
        {"role": "tool", "tool_call_id": "toolu_2", "content": ""},
        {"role": "tool", "tool_call_id": "toolu_3", "content": "a\n\nb"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "What do you see?"},
            ],
        },
    ]


def test_a_failed_tool_result_says_so_in_its_text():
    turn = [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "No such file.", "is_error": True}]
    out = request(minimal(messages=[{"role": "user", "content": turn}]))
    assert out["messages"] == [{"role": "tool", "tool_call_id": "toolu_1", "content": "Error: No such file."}]


# --- request: assistant turns ----------------------------------------------------------------


def test_assistant_turns():
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Think."},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "sig"}]},
        {"role": "user", "content": "Two paragraphs."},
        {"role": "assistant", "content": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]},
        {"role": "user", "content": "Call it."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_9", "name": "ping", "input": {}}]},
    ]
    assert request(minimal(messages=messages))["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Think."},
        # a thinking-only turn carries nothing the model would see: no message at all
        {"role": "user", "content": "Two paragraphs."},
        {"role": "assistant", "content": "One.\n\nTwo."},
        {"role": "user", "content": "Call it."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "toolu_9", "type": "function", "function": {"name": "ping", "arguments": "{}"}}],
        },
    ]


@pytest.mark.parametrize(
    "block",
    [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        {"type": "code_execution_tool_result", "tool_use_id": "srvtoolu_1", "content": {}},
        {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "x", "server_name": "s", "input": {}},
    ],
)
def test_server_tool_blocks_in_history_are_rejected(block):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [block]}]
    assert rejected(minimal(messages=messages)).param == "messages[1].content[0]"


# --- request: tools --------------------------------------------------------------------------

TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
FUNCTION = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        (
            {"type": "tool", "name": "get_weather"},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        ({"type": "none"}, {"tool_choice": "none"}),
        ({"type": "any", "disable_parallel_tool_use": True}, {"tool_choice": "required", "parallel_tool_calls": False}),
        ({"type": "auto", "disable_parallel_tool_use": False}, {"tool_choice": "auto"}),
        (None, {}),
    ],
)
def test_tool_choice_table(tool_choice, expected):
    out = request(minimal(tools=[TOOL], tool_choice=tool_choice))
    assert {key: out[key] for key in ("tools", "tool_choice", "parallel_tool_calls") if key in out} == {
        "tools": [FUNCTION]
    } | expected


def test_custom_tool_type_and_strict_are_carried():
    tool = {
        "type": "custom",
        "name": "get_weather",
        "input_schema": {"type": "object", "properties": {}},
        "strict": True,
    }
    function = FUNCTION["function"] | {"strict": True}
    assert request(minimal(tools=[tool]))["tools"] == [{"type": "function", "function": function}]


def test_without_tools_a_neutral_tool_choice_is_left_out():
    out = request(minimal(tools=[], tool_choice={"type": "auto", "disable_parallel_tool_use": True}))
    assert set(out) == {"messages", "max_completion_tokens"}


@pytest.mark.parametrize(
    "server_tool",
    [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "computer_20250124", "name": "computer", "display_width_px": 1024, "display_height_px": 768},
        {"type": "code_execution_20250825", "name": "code_execution"},
    ],
)
def test_server_tools_are_rejected_naming_the_tool(server_tool):
    assert rejected(minimal(tools=[TOOL, server_tool])).param == "tools[1]"


# --- request: sampling, limits, reasoning ----------------------------------------------------


def test_sampling_stop_and_user_are_copied():
    body = minimal(
        temperature=0.2, top_p=0.9, top_k=None, stop_sequences=["\n\nHuman:", "END"], metadata={"user_id": "u-1"}
    )
    assert request(body) == {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 1024,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\nHuman:", "END"],
        "user": "u-1",
    }


def test_empty_stop_sequences_and_metadata_without_user_add_nothing():
    assert request(minimal(stop_sequences=[], metadata={})) == request(minimal())


@pytest.mark.parametrize(("max_tokens", "sent"), [(1024, 1024), (LIMIT, LIMIT), (10**9, LIMIT), (None, LIMIT)])
def test_max_tokens_becomes_max_completion_tokens_clamped(max_tokens, sent):
    out = request(minimal(max_tokens=max_tokens))
    assert out["max_completion_tokens"] == sent
    assert "max_tokens" not in out


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 4095}, "low"),
        ({"type": "enabled", "budget_tokens": 4096}, "medium"),
        ({"type": "enabled", "budget_tokens": 16383}, "medium"),
        ({"type": "enabled", "budget_tokens": 16384}, "high"),
        ({"type": "enabled", "budget_tokens": 128_000}, "high"),
        ({"type": "adaptive"}, "medium"),
        ({"type": "disabled"}, None),
        (None, None),
    ],
)
def test_thinking_becomes_reasoning_effort(thinking, effort):
    assert request(minimal(thinking=thinking)).get("reasoning_effort") == effort


@pytest.mark.parametrize(
    ("effort", "sent"), [("low", "low"), ("medium", "medium"), ("high", "high"), ("xhigh", "high"), ("max", "high")]
)
def test_output_config_effort_wins_over_a_budget(effort, sent):
    body = minimal(thinking={"type": "enabled", "budget_tokens": 2048}, output_config={"effort": effort})
    assert request(body)["reasoning_effort"] == sent


def test_output_config_format_becomes_a_strict_json_schema():
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    body = minimal(output_config={"format": {"type": "json_schema", "schema": schema}})
    assert request(body)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


# --- request: what cannot be carried, and wrong shapes ---------------------------------------

PNG = {"type": "base64", "media_type": "image/png", "data": "AAAA"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (minimal(top_k=40), "top_k"),
        (minimal(service_tier="auto"), "service_tier"),
        (minimal(container="container_011CZ"), "container"),
        (minimal(mcp_servers=[{"type": "url", "url": "https://mcp.example.com/sse", "name": "x"}]), "mcp_servers"),
        (minimal(stop_sequences=["a", "b", "c", "d", "e"]), "stop_sequences"),
        (minimal(stop_sequences="END"), "stop_sequences"),
        (minimal(stop_sequences=["a", 1]), "stop_sequences[1]"),
        (minimal(max_tokens=0), "max_tokens"),
        (minimal(max_tokens="100"), "max_tokens"),
        (minimal(max_tokens=True), "max_tokens"),
        (minimal(temperature="hot"), "temperature"),
        (minimal(metadata="u-1"), "metadata"),
        (minimal(metadata={"user_id": 7}), "metadata.user_id"),
        (minimal(thinking={"type": "enabled"}), "thinking.budget_tokens"),
        (minimal(thinking={"type": "sometimes"}), "thinking.type"),
        (minimal(thinking=True), "thinking"),
        (minimal(output_config={"effort": "extreme"}), "output_config.effort"),
        (minimal(output_config={"format": {"type": "regex"}}), "output_config.format.type"),
        (minimal(output_config="fast"), "output_config"),
        (minimal(tools={"name": "x"}), "tools"),
        (minimal(tools=["get_weather"]), "tools[0]"),
        (minimal(tools=[{"name": "x"}]), "tools[0].input_schema"),
        (minimal(tools=[{"input_schema": {}}]), "tools[0].name"),
        (minimal(tools=[TOOL], tool_choice={"type": "sometimes"}), "tool_choice.type"),
        (minimal(tools=[TOOL], tool_choice="auto"), "tool_choice"),
        (minimal(tools=[TOOL], tool_choice={"type": "tool"}), "tool_choice.name"),
        (minimal(tool_choice={"type": "any"}), "tool_choice"),
        (minimal(system=[{"type": "image", "source": PNG}]), "system[0]"),
        (minimal(system=7), "system"),
        (minimal(messages={"role": "user", "content": "Hi"}), "messages"),
        (minimal(messages=[]), "messages"),
        (minimal(messages=None), "messages"),
        (minimal(messages=["Hi"]), "messages[0]"),
        (minimal(messages=[{"role": "system", "content": "Hi"}]), "messages[0].role"),
        (minimal(messages=[{"role": "user"}]), "messages[0].content"),
        (minimal(messages=[{"role": "user", "content": [{"text": "Hi"}]}]), "messages[0].content[0].type"),
        (minimal(messages=[{"role": "user", "content": ["Hi"]}]), "messages[0].content[0]"),
        (minimal(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages[0].content[0].text"),
        (minimal(messages=[{"role": "user", "content": [{"type": "video"}]}]), "messages[0].content[0]"),
        (
            minimal(
                messages=[{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "x", "input": {}}]}]
            ),
            "messages[0].content[0]",
        ),
        (
            minimal(
                messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]
            ),
            "messages[0].content[0].source.type",
        ),
        (
            minimal(
                messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "A"}}]}]
            ),
            "messages[0].content[0].source.media_type",
        ),
        (
            minimal(messages=[{"role": "user", "content": [{"type": "image"}]}]),
            "messages[0].content[0].source",
        ),
        (
            minimal(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}],
                    }
                ]
            ),
            "messages[0].content[0].source",
        ),
        (
            minimal(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "document", "source": {"type": "base64", "media_type": "image/png", "data": "A"}}
                        ],
                    }
                ]
            ),
            "messages[0].content[0].source.media_type",
        ),
        (
            minimal(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                                "citations": {"enabled": True},
                            }
                        ],
                    }
                ]
            ),
            "messages[0].content[0].citations",
        ),
        (
            minimal(messages=[{"role": "user", "content": [{"type": "tool_result", "content": "ok"}]}]),
            "messages[0].content[0].tool_use_id",
        ),
        (
            minimal(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "document", "source": {"type": "text", "data": "x"}}],
                            }
                        ],
                    }
                ]
            ),
            "messages[0].content[0].content[0]",
        ),
        (
            minimal(
                messages=[
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "x", "input": "{}"}]},
                ]
            ),
            "messages[1].content[0].input",
        ),
        (
            minimal(
                messages=[
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": [{"type": "image", "source": PNG}]},
                ]
            ),
            "messages[1].content[0]",
        ),
    ],
)
def test_invalid_request_names_the_param(body, param):
    error = rejected(body)
    assert error.param == param
    assert error.status == 400
    assert error.code == "invalid_request"


def test_a_body_that_is_not_an_object_is_rejected():
    with pytest.raises(InvalidRequest):
        translate.request([], max_output_tokens=LIMIT)  # type: ignore[arg-type]


# --- response ----------------------------------------------------------------------------------

# A real chat.completion (gpt-4o, captured in CtwoC/agent_kit's client/output_style/openai_output.md),
# here with prompt caching, as OpenAI reports it: cached tokens inside prompt_tokens.
TOOL_CALL_COMPLETION = {
    "id": "chatcmpl-BcQ8ko2nz9B7CRvV0uVbcowidHpQU",
    "choices": [
        {
            "finish_reason": "tool_calls",
            "index": 0,
            "logprobs": None,
            "message": {
                "content": None,
                "refusal": None,
                "role": "assistant",
                "annotations": [],
                "audio": None,
                "function_call": None,
                "tool_calls": [
                    {
                        "id": "call_qOfTGgDrItLORNfC6VwUbyLL",
                        "function": {"arguments": '{"location":"Shanghai"}', "name": "get_weather"},
                        "type": "function",
                    }
                ],
            },
        }
    ],
    "created": 1748496646,
    "model": "gpt-4o-2024-08-06",
    "object": "chat.completion",
    "service_tier": "default",
    "system_fingerprint": "fp_76544d79cb",
    "usage": {
        "completion_tokens": 14,
        "prompt_tokens": 2091,
        "total_tokens": 2105,
        "completion_tokens_details": {
            "accepted_prediction_tokens": 0,
            "audio_tokens": 0,
            "reasoning_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 1920},
    },
}


def completion(message: dict, *, finish_reason: str | None = "stop", usage: dict | None = None) -> dict:
    return {
        "id": "chatcmpl-AbC123",
        "object": "chat.completion",
        "created": 1748488520,
        "model": "gpt-5-2025-08-07",
        "choices": [{"index": 0, "message": {"role": "assistant"} | message, "finish_reason": finish_reason}],
        "usage": usage or {"prompt_tokens": 23, "completion_tokens": 14, "total_tokens": 37},
    }


def test_tool_call_completion_becomes_a_message():
    message = translate.response(TOOL_CALL_COMPLETION)
    assert message == {
        "id": "msg_BcQ8ko2nz9B7CRvV0uVbcowidHpQU",
        "type": "message",
        "role": "assistant",
        "model": "gpt-4o-2024-08-06",
        "content": [
            {
                "type": "tool_use",
                "id": "call_qOfTGgDrItLORNfC6VwUbyLL",
                "name": "get_weather",
                "input": {"location": "Shanghai"},
            }
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 171,  # 2091 prompt tokens, 1920 of them read from the cache
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 1920,
            "output_tokens": 14,
        },
    }
    assert Message.model_validate(message).usage.input_tokens == 171


def test_reasoning_then_text_then_tools():
    data = completion(
        {
            "reasoning_content": "The user greets me.",
            "content": "Hello! Checking the time.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": ""}},
                {"id": "call_2", "type": "function", "function": {"name": "tz", "arguments": '{"city": "北京"}'}},
            ],
        },
        finish_reason="tool_calls",
    )
    message = translate.response(data)
    assert message["content"] == [
        {"type": "thinking", "thinking": "The user greets me.", "signature": ""},
        {"type": "text", "text": "Hello! Checking the time."},
        {"type": "tool_use", "id": "call_1", "name": "now", "input": {}},
        {"type": "tool_use", "id": "call_2", "name": "tz", "input": {"city": "北京"}},
    ]
    assert message["id"] == "msg_AbC123"
    assert message["usage"] == {
        "input_tokens": 23,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 14,
    }
    Message.model_validate(message)


def test_openrouter_reasoning_field_is_thinking_too():
    content = translate.response(completion({"reasoning": "Hm.", "content": "Yes."}))["content"]
    assert content == [{"type": "thinking", "thinking": "Hm.", "signature": ""}, {"type": "text", "text": "Yes."}]


@pytest.mark.parametrize("arguments", ['{"location": "Shang', "not json", "[1, 2]", None])
def test_tool_arguments_that_are_not_a_json_object_become_empty_input(arguments):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    message = translate.response(completion({"content": None, "tool_calls": [call]}, finish_reason="length"))
    assert message["content"] == [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}]
    assert message["stop_reason"] == "max_tokens"
    Message.model_validate(message)


def test_a_refusal_is_text_with_stop_reason_refusal():
    message = translate.response(completion({"content": None, "refusal": "I can't help with that."}))
    assert message["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert message["stop_reason"] == "refusal"
    Message.model_validate(message)


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_stop_reason_table(finish_reason, stop_reason):
    message = translate.response(completion({"content": "x"}, finish_reason=finish_reason))
    assert message["stop_reason"] == stop_reason
    assert message["stop_sequence"] is None
    Message.model_validate(message)


def test_an_empty_answer_and_missing_usage():
    data = completion({"content": ""})
    del data["usage"]
    message = translate.response(data)
    assert message["content"] == []
    assert message["usage"] == {
        "input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 0,
    }
    Message.model_validate(message)


@pytest.mark.parametrize("data", [{}, {"choices": []}, {"choices": ["x"]}])
def test_a_reply_without_choices_is_an_upstream_error(data):
    with pytest.raises(UpstreamError):
        translate.response(data)


# --- stream ------------------------------------------------------------------------------------

# The chunks of a real gpt-4.1-nano stream with a tool call whose arguments arrive in five pieces
# (captured from the OpenAI SDK in alexbrowng/aiomodels, tests/openai/chat_completion_chunks/
# get_weather.py), with two text chunks added ahead of the tool call, as models that talk before
# calling a tool send them, and the usage chunk reporting prompt-cache reads.
CHUNK_ID = "chatcmpl-BQb0iSFzE1zz1OVhaqg3u2Yqn1Ezf"
MODEL = "gpt-4.1-nano-2025-04-14"


def chunk(delta: dict | None = None, *, finish_reason: str | None = None, usage: dict | None = None) -> dict:
    choices = []
    if delta is not None:
        fields = {"content": None, "function_call": None, "refusal": None, "role": None, "tool_calls": None}
        choices = [{"delta": fields | delta, "finish_reason": finish_reason, "index": 0, "logprobs": None}]
    return {
        "id": CHUNK_ID,
        "choices": choices,
        "created": 1745678496,
        "model": MODEL,
        "object": "chat.completion.chunk",
        "service_tier": "default",
        "system_fingerprint": "fp_eede8f0d45",
        "usage": usage,
    }


def arguments(piece: str, *, first: bool = False) -> dict:
    call: dict[str, object] = {"index": 0, "id": None, "function": {"arguments": piece, "name": None}, "type": None}
    if first:
        call |= {
            "id": "call_PieqNSej6kM9hgYbcQdbZSaC",
            "function": {"arguments": piece, "name": "get_weather"},
            "type": "function",
        }
    return {"tool_calls": [call]}


USAGE = {
    "completion_tokens": 31,
    "prompt_tokens": 1067,
    "total_tokens": 1098,
    "completion_tokens_details": {
        "accepted_prediction_tokens": 0,
        "audio_tokens": 0,
        "reasoning_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
    "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 1024},
}

TOOL_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Let me check"}),
    chunk({"content": " the weather."}),
    chunk(arguments("", first=True)),
    chunk(arguments('{"lo')),
    chunk(arguments("catio")),
    chunk(arguments('n": "T')),
    chunk(arguments("okyo")),
    chunk(arguments('"}')),
    chunk({}, finish_reason="tool_calls"),
    chunk(usage=USAGE),
]


def events_of(chunks: list[dict]) -> list[Event]:
    events = [Event(raw=f"data: {json.dumps(c)}\n\n".encode(), data=c, hidden=not c["choices"]) for c in chunks]
    return [*events, Event(raw=b"data: [DONE]\n\n", data=None, final=True)]


def run(chunks: list[dict]) -> list[list[dict]]:
    """What each upstream event turns into, one list per event."""
    stream = translate.Stream(client_wants_usage=False)
    return [stream.feed(event) for event in events_of(chunks)]


def accumulate(events: list[dict]) -> Message:
    """What the SDK's messages.stream(...).get_final_message() makes of these events."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for event in events:
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)  # type: ignore[arg-type]
    assert snapshot is not None
    return snapshot


def text_delta(index: int, text: str) -> dict:
    return {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}


def json_delta(index: int, piece: str) -> dict:
    return {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}}


def test_tool_stream_events_per_chunk():
    assert run(TOOL_STREAM) == [
        [
            {
                "type": "message_start",
                "message": {
                    "id": "msg_BQb0iSFzE1zz1OVhaqg3u2Yqn1Ezf",
                    "type": "message",
                    "role": "assistant",
                    "model": MODEL,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            }
        ],
        [
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            text_delta(0, "Let me check"),
        ],
        [text_delta(0, " the weather.")],
        [
            {"type": "content_block_stop", "index": 0},
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "call_PieqNSej6kM9hgYbcQdbZSaC",
                    "name": "get_weather",
                    "input": {},
                },
            },
        ],
        [json_delta(1, '{"lo')],
        [json_delta(1, "catio")],
        [json_delta(1, 'n": "T')],
        [json_delta(1, "okyo")],
        [json_delta(1, '"}')],
        [],  # the finish_reason is held: usage comes after it
        [],  # the usage chunk: remembered
        [
            {"type": "content_block_stop", "index": 1},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 31, "input_tokens": 43, "cache_read_input_tokens": 1024},
            },
        ],
    ]


def test_tool_stream_is_what_the_anthropic_sdk_expects():
    events = [event for batch in run(TOOL_STREAM) for event in batch]
    adapter: pydantic.TypeAdapter = pydantic.TypeAdapter(RawMessageStreamEvent)
    for event in events:
        adapter.validate_python(event)
    assert not any(event["type"] == "message_stop" for event in events)  # the endpoint's, after billing

    final = accumulate(events)
    assert [block.to_dict() for block in final.content] == [
        {"type": "text", "text": "Let me check the weather."},
        {
            "type": "tool_use",
            "id": "call_PieqNSej6kM9hgYbcQdbZSaC",
            "name": "get_weather",
            "input": {"location": "Tokyo"},
        },
    ]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (43, 1024, 31)


def test_reasoning_stream_closes_thinking_before_text():
    chunks = [
        chunk({"role": "assistant", "content": None, "reasoning_content": ""}),
        chunk({"reasoning_content": "The user"}),
        chunk({"reasoning_content": " says hi."}),
        chunk({"content": "Hello!"}),
        chunk({}, finish_reason="stop"),
        chunk(usage={"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29}),
    ]
    events = [event for batch in run(chunks) for event in batch]
    assert events[1:] == [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "The user"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": " says hi."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        text_delta(1, "Hello!"),
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 20, "input_tokens": 9, "cache_read_input_tokens": 0},
        },
    ]
    final = accumulate(events)
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "The user says hi."  # type: ignore[union-attr]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 20)


def test_parallel_tool_calls_each_get_a_block():
    first = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "a", "arguments": '{"x":'}}
    second = {"index": 1, "id": "call_b", "type": "function", "function": {"name": "b", "arguments": "{}"}}
    chunks = [
        chunk({"role": "assistant"}),
        chunk({"tool_calls": [first]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        chunk({"tool_calls": [second]}),
        chunk({}, finish_reason="tool_calls"),
    ]
    events = [event for batch in run(chunks) for event in batch]
    final = accumulate(events)
    assert [(block.id, block.input) for block in final.content] == [("call_a", {"x": 1}), ("call_b", {})]  # type: ignore[union-attr]
    assert [event["index"] for event in events if event["type"] == "content_block_stop"] == [0, 1]


def test_a_streamed_refusal_is_text_with_stop_reason_refusal():
    chunks = [
        chunk({"role": "assistant", "refusal": "I can't help"}),
        chunk({"refusal": " with that."}),
        chunk({}, finish_reason="stop"),
    ]
    final = accumulate([event for batch in run(chunks) for event in batch])
    assert final.content[0].to_dict() == {"type": "text", "text": "I can't help with that."}
    assert final.stop_reason == "refusal"


def test_a_stream_cut_by_max_tokens_mid_call_still_accumulates():
    chunks = [chunk(arguments('{"location": "To', first=True)), chunk({}, finish_reason="length")]
    final = accumulate([event for batch in run(chunks) for event in batch])
    assert final.stop_reason == "max_tokens"
    # The SDK's partial JSON parsing drops the unfinished string: `{}`, as response() gives for cut
    # arguments.
    assert final.content[0].input == {}  # type: ignore[union-attr]


def test_keep_alives_errors_and_anything_after_done_produce_nothing():
    stream = translate.Stream(client_wants_usage=True)
    assert stream.feed(Event(raw=b": keep-alive\n\n")) == []
    assert stream.feed(Event(raw=b'data: {"error": {}}\n\n', data={"error": {"message": "overloaded"}})) == []
    done = stream.feed(Event(raw=b"data: [DONE]\n\n", final=True))
    # Nothing arrived but the terminator: the client still gets a well-formed, empty message.
    assert [event["type"] for event in done] == ["message_start", "message_delta"]
    assert done[1]["delta"]["stop_reason"] == "end_turn"
    assert stream.feed(Event(raw=b"data: [DONE]\n\n", final=True)) == []
    assert stream.feed(Event(raw=b"data: {}\n\n", data=chunk({"content": "late"}))) == []
