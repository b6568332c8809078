"""Bugs the /v1 fuzz (tests/fuzz) found, each pinned by the input that found it.

A translated request whose field held a JSON array or object where the translation looked the
value up in a table (role, content part type, reasoning effort) raised TypeError (unhashable
type) after the reserve: a 500 platform_error instead of the 400 naming the field.
"""

from __future__ import annotations

import pytest

from tests.gateway.support import assert_error_body, assert_ids, rejected
from tests.gateway_fixtures import CLAUDE

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": CLAUDE, "messages": [{"role": ["user"], "content": "Hello"}]}, "messages[0].role"),
        (
            {"model": CLAUDE, "messages": [{"role": "user", "content": [{"type": ["text"], "text": "Hi"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"model": CLAUDE, "messages": [{"role": "user", "content": [{"type": {"text": 1}, "text": "Hi"}]}]},
            "messages[0].content[0].type",
        ),
        ({"model": CLAUDE, "messages": HELLO, "reasoning_effort": ["low"]}, "reasoning_effort"),
    ],
)
def test_chat_on_a_claude_route_with_an_array_where_a_name_belongs_is_400(claude, body, param):
    # given a Chat request for a model on an Anthropic route (translated), with a list or an
    # object where the translation expects a name
    response = claude.post(CHAT, json=body | {"max_completion_tokens": 16})
    # then a 400 naming the field, one not_billed row, nothing charged, upstream never called
    request_id = assert_error_body(response, status=400, code="invalid_request", param=param)
    rejected(claude, request_id, 400, "invalid_request", "invalid_request")
    assert claude.upstream.requests == []


@pytest.mark.parametrize("effort", [["high"], {"level": "high"}])
def test_messages_on_an_openai_route_with_an_array_effort_is_400(claude, effort):
    # given a Messages request for gpt-5 (an OpenAI route: translated) whose effort is no string
    body = {"model": "gpt-5", "max_tokens": 16, "messages": HELLO, "output_config": {"effort": effort}}
    response = claude.post(MESSAGES, json=body)
    # then Anthropic's 400, with the request id, one not_billed row, upstream never called
    assert response.status_code == 400, response.text
    request_id, _ = assert_ids(response.headers)
    data = response.json()
    assert data["type"] == "error" and data["request_id"] == request_id
    assert data["error"]["type"] == "invalid_request_error"
    assert "output_config.effort" in data["error"]["message"]
    rejected(claude, request_id, 400, "invalid_request", "invalid_request")
    assert claude.upstream.requests == []


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(gateway, constant):
    """Python's parser takes them; JSON does not, and the body would be forwarded with them."""
    body = '{"model":"gpt-5","messages":[{"role":"user","content":"Hi"}],"temperature":' + constant + "}"
    response = gateway.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    request_id = assert_error_body(response, status=400, code="invalid_json")
    rejected(gateway, request_id, 400, "invalid_request", "invalid_json")
    assert gateway.upstream.requests == []  # nothing forwarded
