"""Hypothesis strategies for the /v1 fuzz: request bodies of every endpoint, valid, nearly valid and
absurd, as the bytes a client could send.

Nothing here knows the live gateway: a case names its key by a label (`KEYS`), which the test
resolves to a secret, so that what is drawn never depends on the fixtures (and the default run
is the same every time).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from openbili.fake_upstream import PNG_B64
from tests.gateway_fixtures import CLAUDE

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
MODELS = "/v1/models"
RESPONSES = "/v1/responses"
IMAGES = "/v1/images/generations"
EDITS = "/v1/images/edits"
IMAGE_FILES = "/v1/images/files/"

# How a case presents its key: label → (account kind or None for "no known key", how it is sent).
# The test resolves the account kind to a secret; "garbage" and "none" are never known.
KEYS = {
    "funded": ("funded", "bearer"),  # the $100 account
    "funded x-api-key": ("funded", "x-api-key"),
    "funded lower-case bearer": ("funded", "lower bearer"),
    "broke": ("broke", "bearer"),  # a $0 account
    "disabled": ("disabled", "bearer"),
    "scoped": ("scoped", "x-api-key"),  # a key that may only use CLAUDE
    "none": (None, None),
    "garbage": (None, "garbage"),
    "unknown well-formed": (None, "unknown"),
    "basic scheme": (None, "basic"),  # Authorization wins over x-api-key, and it is not Bearer
}
# The funded key most of the time: other keys are refused before the body matters.
KEY_LABELS = st.sampled_from(["funded"] * 12 + [label for label in KEYS if label != "funded"])

MODEL_NAMES = ["gpt-5", CLAUDE]


@dataclass(frozen=True)
class Case:
    """One request as the bytes a client sends."""

    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = "application/json"
    key: str = "funded"
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)
    chunked: bool = False  # sent in two chunks, without a Content-Length

    def __repr__(self) -> str:  # what hypothesis prints for a failing case: bounded
        body = self.body if self.body is None or len(self.body) <= 600 else self.body[:600] + b"..."
        size = "" if self.body is None else f" ({len(self.body)} bytes)"
        return (
            f"Case({self.method} {self.path[:200]!r} key={self.key!r} content_type={self.content_type!r}"
            f" headers={self.headers!r} chunked={self.chunked} body{size}={body!r})"
        )


# --- values -----------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\ud800",  # a lone surrogate: valid JSON ("\ud800"), not valid UTF-8
        "a\udfffb",
        "\u202e\u0644\u0639",
        "😀" * 3,
        "\ufeff",
        "null",
        "0",
        "gpt-5\x00",
        "gpt-5 ",
        "GPT-5",
        "\n\r\t",
        "%s%n{}",
        "x" * 5_000,
        "é" * 3_000,
    ]
)
ODD_INT = st.sampled_from([0, -1, 1, 2, 255, 2**31 - 1, 2**31, 2**53 + 1, 2**63, -(2**63), 10**30, -(10**30), 10**300])
ODD_FLOAT = st.sampled_from(
    [0.0, -0.0, 0.5, 1.0, 2.0, 1.5, -1.5, 1e308, -1e308, 5e-324, float("inf"), float("-inf"), float("nan")]
)
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    ODD_TEXT,
    ODD_INT,
    ODD_FLOAT,
)
FIELD_NAMES = st.sampled_from(
    ["type", "text", "content", "role", "name", "id", "input", "source", "url", "data", "function", "arguments"]
)
# Any JSON value (NaN and ±Infinity included: Python's json reads and writes them).
WILD: st.SearchStrategy[Any] = st.recursive(
    SCALAR,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(FIELD_NAMES | st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
# Large values, built once (drawn, not generated): big strings, many elements, deep nesting.
HUGE = st.sampled_from(
    [
        "word " * 200_000,  # 1 MB of text
        ["x"] * 20_000,
        [{}] * 5_000,
        {f"k{i}": i for i in range(5_000)},
        json.loads("[" * 100 + "]" * 100),  # deep, but under the gateway's limit
        json.loads("[" * 130 + "]" * 130),  # over it (128 levels): a 400
        json.loads('{"a":' * 129 + "1" + "}" * 129),
    ]
)


def weighted(*options: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the (weight, strategy) options, chosen by weight. (st.one_of chooses evenly, and
    merges a strategy given twice into one branch, so repeating it weighs nothing.)"""
    table = [strategy for weight, strategy in options for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)


def sometimes_wild(valid: st.SearchStrategy, *, odds: int = 6) -> st.SearchStrategy:
    """`valid` `odds` times in `odds + 1`, else any JSON value (of another type, usually)."""
    return weighted((odds, valid), (1, WILD))


TEXT = weighted(
    (4, st.sampled_from(["Hello", "What is 2+2?", "Say hi in French", "a b c d e f"])),
    (2, st.text(max_size=40)),
    (1, ODD_TEXT),
)
POSITIVE = st.one_of(st.integers(1, 200), st.sampled_from([1024, 1025, 4096, 64_000, 128_000, 128_001, 10**9]))
TOKENS = weighted((12, POSITIVE), (1, ODD_INT), (1, ODD_FLOAT), (1, st.floats(1, 100)), (1, WILD))
SAMPLING = st.one_of(st.floats(0, 2), st.sampled_from([0, 1, 2, -1, 0.95]), ODD_FLOAT, WILD)
SCHEMA = st.sampled_from(
    [
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        {"type": "object", "properties": {}},
        {},
        {"type": "string"},
    ]
)
ARGUMENTS = st.one_of(st.sampled_from(['{"city": "Paris"}', "", "{}", "not json", "[1, 2]", '{"a":']), WILD)
URLS = st.sampled_from(
    [
        "https://example.com/cat.png",
        "http://127.0.0.1:9/a.jpg",
        "data:image/png;base64," + PNG_B64,
        "data:image/bmp;base64,Qk0=",
        "data:image/png;base64,!!!not base64",
        "data:;base64,",
        "data:image/png,raw",
        "data:",
        "ftp://example.com/x.png",
        "",
        "file:///etc/passwd",
    ]
)
PDF = "data:application/pdf;base64,JVBERi0xLjQK"

# --- /v1/chat/completions --------------------------------------------------------------------

CHAT_PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": sometimes_wild(TEXT)}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": sometimes_wild(
                st.fixed_dictionaries(
                    {"url": sometimes_wild(URLS)},
                    optional={"detail": sometimes_wild(st.sampled_from(["auto", "low", "high"]))},
                )
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("file"),
            "file": sometimes_wild(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "file_data": sometimes_wild(st.sampled_from([PDF, "data:text/plain;base64,aGk=", "JVBERi0="])),
                        "filename": sometimes_wild(TEXT),
                        "file_id": sometimes_wild(TEXT),
                    },
                )
            ),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("input_audio"), "input_audio": sometimes_wild(st.just({"data": "UklGRg==", "format": "wav"}))}
    ),
    st.fixed_dictionaries({"type": st.just("refusal"), "refusal": sometimes_wild(TEXT)}),
    st.fixed_dictionaries({"type": WILD}, optional={"text": TEXT}),  # a type of any JSON type (a list, an object...)
    WILD,
)
CHAT_CONTENT = weighted((4, TEXT), (4, st.lists(CHAT_PART, max_size=3)), (1, st.none()), (1, WILD))
TOOL_CALL = sometimes_wild(
    st.fixed_dictionaries(
        {
            "id": sometimes_wild(st.sampled_from(["call_1", "call_2", ""])),
            "type": sometimes_wild(st.just("function")),
            "function": sometimes_wild(
                st.fixed_dictionaries({"name": sometimes_wild(st.just("get_weather")), "arguments": ARGUMENTS})
            ),
        }
    )
)
CHAT_MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.just("user"), "content": CHAT_CONTENT}, optional={"name": sometimes_wild(TEXT)}),
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer"]), "content": CHAT_CONTENT}),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": CHAT_CONTENT},
        optional={
            "tool_calls": sometimes_wild(st.lists(TOOL_CALL, max_size=2)),
            "function_call": WILD,
            "audio": WILD,
            "refusal": WILD,
        },
    ),
    st.fixed_dictionaries(
        {"role": st.just("tool"), "content": CHAT_CONTENT, "tool_call_id": sometimes_wild(st.just("call_1"))}
    ),
    st.fixed_dictionaries({"role": st.one_of(st.just("function"), WILD), "content": CHAT_CONTENT}),
    WILD,
)
A_CONVERSATION = st.just(
    [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "user", "content": "Thanks"},
    ]
)
CHAT_MESSAGES = weighted(
    (12, st.lists(CHAT_MESSAGE, min_size=1, max_size=4)),
    (2, st.just([{"role": "user", "content": "Hello"}])),
    (2, A_CONVERSATION),
    (1, st.just([])),
    (1, WILD),
    (1, HUGE),
)
CHAT_TOOL = sometimes_wild(
    st.fixed_dictionaries(
        {
            "type": sometimes_wild(st.sampled_from(["function", "function", "custom", "web_search"])),
            "function": sometimes_wild(
                st.fixed_dictionaries(
                    {"name": sometimes_wild(st.sampled_from(["get_weather", ""]))},
                    optional={
                        "description": sometimes_wild(TEXT),
                        "parameters": sometimes_wild(SCHEMA),
                        "strict": WILD,
                    },
                )
            ),
        }
    )
)
CHAT_FIELDS = {
    "max_tokens": TOKENS,
    "max_completion_tokens": TOKENS,
    "n": st.one_of(st.just(1), st.integers(0, 130), ODD_INT, WILD),
    "stream": weighted((6, st.booleans()), (1, st.none()), (1, WILD)),
    "stream_options": st.one_of(
        st.fixed_dictionaries({}, optional={"include_usage": sometimes_wild(st.booleans())}), WILD
    ),
    "temperature": SAMPLING,
    "top_p": SAMPLING,
    "tools": st.one_of(st.lists(CHAT_TOOL, max_size=2), WILD),
    "tool_choice": st.one_of(
        st.sampled_from(["auto", "none", "required"]),
        st.just({"type": "function", "function": {"name": "get_weather"}}),
        WILD,
    ),
    "parallel_tool_calls": sometimes_wild(st.booleans()),
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=6), WILD),
    "user": sometimes_wild(TEXT),
    "metadata": st.one_of(st.just({"k": "v"}), WILD),
    "reasoning_effort": st.one_of(st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh", "max"]), WILD),
    "response_format": st.one_of(
        st.sampled_from(
            [
                {"type": "text"},
                {"type": "json_object"},
                {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
            ]
        ),
        WILD,
    ),
    "logprobs": sometimes_wild(st.booleans()),
    "top_logprobs": sometimes_wild(st.integers(0, 5)),
    "seed": sometimes_wild(st.integers()),
    "presence_penalty": SAMPLING,
    "frequency_penalty": SAMPLING,
    "logit_bias": st.one_of(st.just({}), st.just({"50256": -100}), WILD),
    "modalities": st.one_of(st.just(["text"]), st.just(["text", "audio"]), WILD),
    "audio": WILD,
    "prediction": WILD,
    "functions": WILD,
    "function_call": WILD,
    "web_search_options": WILD,
    "verbosity": st.one_of(st.sampled_from(["low", "medium", "high"]), WILD),
    "store": WILD,
    "service_tier": WILD,
}


@st.composite
def body_of(draw, required: dict[str, st.SearchStrategy], optional: dict[str, st.SearchStrategy]) -> dict:
    """A body with the required fields (one of them missing now and then), a few of the optional
    ones (a few: so that a case also gets past validation, and its failure names its field) and
    once in a while keys nobody knows."""
    body = {name: draw(strategy) for name, strategy in required.items()}
    if draw(st.integers(0, 9)) == 0:
        del body[draw(st.sampled_from(sorted(body)))]
    for name in draw(st.lists(st.sampled_from(sorted(optional)), max_size=5, unique=True)):
        body[name] = draw(optional[name])
    if draw(st.integers(0, 4)) == 0:
        body |= draw(st.dictionaries(st.text(max_size=10), WILD, min_size=1, max_size=2))
    return body


MODEL = weighted((16, st.sampled_from(MODEL_NAMES)), (1, st.sampled_from(["gpt-9-ultra", "gpt-5/", ""])), (1, WILD))
CHAT_BODY = body_of({"model": MODEL, "messages": CHAT_MESSAGES}, CHAT_FIELDS)

# --- /v1/messages --------------------------------------------------------------------------------

BLOCK_TEXT = st.fixed_dictionaries(
    {"type": st.just("text"), "text": sometimes_wild(TEXT)},
    optional={"cache_control": st.one_of(st.just({"type": "ephemeral"}), WILD)},
)
IMAGE_SOURCE = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("base64"),
            "media_type": sometimes_wild(st.sampled_from(["image/png", "image/jpeg", "image/bmp", ""])),
            "data": sometimes_wild(st.just(PNG_B64)),
        }
    ),
    st.fixed_dictionaries({"type": st.just("url"), "url": sometimes_wild(URLS)}),
    st.fixed_dictionaries({"type": st.just("file"), "file_id": sometimes_wild(TEXT)}),
    WILD,
)
BLOCK_IMAGE = st.fixed_dictionaries({"type": st.just("image"), "source": IMAGE_SOURCE})
BLOCK_DOCUMENT = st.fixed_dictionaries(
    {
        "type": st.just("document"),
        "source": st.one_of(
            st.fixed_dictionaries(
                {
                    "type": st.just("base64"),
                    "media_type": sometimes_wild(st.sampled_from(["application/pdf", "text/plain"])),
                    "data": sometimes_wild(st.just("JVBERi0xLjQK")),
                }
            ),
            st.fixed_dictionaries(
                {"type": st.just("text"), "media_type": st.just("text/plain"), "data": sometimes_wild(TEXT)}
            ),
            st.fixed_dictionaries({"type": st.sampled_from(["url", "content", "file"]), "url": URLS, "content": WILD}),
            WILD,
        ),
    },
    optional={"title": WILD, "context": WILD, "citations": st.one_of(st.just({"enabled": True}), WILD)},
)
BLOCK_TOOL_USE = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["tool_use", "server_tool_use"]),
        "id": sometimes_wild(st.just("toolu_1")),
        "name": sometimes_wild(st.just("get_weather")),
        "input": sometimes_wild(st.just({"city": "Paris"})),
    }
)
BLOCK_TOOL_RESULT = st.fixed_dictionaries(
    {"type": st.just("tool_result"), "tool_use_id": sometimes_wild(st.just("toolu_1"))},
    optional={
        "content": st.one_of(TEXT, st.lists(st.one_of(BLOCK_TEXT, BLOCK_IMAGE, WILD), max_size=2), WILD),
        "is_error": sometimes_wild(st.booleans()),
    },
)
BLOCK_THINKING = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("thinking"), "thinking": sometimes_wild(TEXT), "signature": sometimes_wild(st.just("sig"))}
    ),
    st.fixed_dictionaries({"type": st.just("redacted_thinking"), "data": sometimes_wild(st.just("abc"))}),
)
BLOCK = st.one_of(
    BLOCK_TEXT,
    BLOCK_TEXT,
    BLOCK_IMAGE,
    BLOCK_DOCUMENT,
    BLOCK_TOOL_USE,
    BLOCK_TOOL_RESULT,
    BLOCK_THINKING,
    st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(["search_result", "web_search_tool_result", "container_upload"]), WILD)},
        optional={"text": TEXT},
    ),
    WILD,
)
MESSAGES_CONTENT = weighted((4, TEXT), (4, st.lists(BLOCK, max_size=3)), (1, WILD))
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": MESSAGES_CONTENT}),
    st.fixed_dictionaries({"role": WILD, "content": MESSAGES_CONTENT}),
    WILD,
)
A_TOOL_TURN = st.just(
    [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "Sunny"}],
                    "is_error": False,
                }
            ],
        },
    ]
)
MESSAGES_LIST = weighted(
    (12, st.lists(MESSAGE, min_size=1, max_size=4)),
    (2, st.just([{"role": "user", "content": "Hello"}])),
    (2, A_TOOL_TURN),
    (1, st.just([])),
    (1, WILD),
    (1, HUGE),
)
MESSAGES_TOOL = sometimes_wild(
    st.fixed_dictionaries(
        {"name": sometimes_wild(st.just("get_weather"))},
        optional={
            "type": st.one_of(st.just("custom"), st.just("web_search_20250305"), WILD),
            "description": sometimes_wild(TEXT),
            "input_schema": sometimes_wild(SCHEMA),
            "strict": WILD,
            "cache_control": WILD,
        },
    )
)
MESSAGES_FIELDS = {
    "system": st.one_of(TEXT, st.lists(BLOCK_TEXT, max_size=2), st.lists(BLOCK, max_size=2), WILD),
    "stream": weighted((6, st.booleans()), (1, st.none()), (1, WILD)),
    "temperature": SAMPLING,
    "top_p": SAMPLING,
    "top_k": st.one_of(st.integers(0, 100), WILD),
    "stop_sequences": st.one_of(st.lists(TEXT, max_size=6), WILD),
    "metadata": st.one_of(st.fixed_dictionaries({}, optional={"user_id": sometimes_wild(TEXT)}), WILD),
    "tools": st.one_of(st.lists(MESSAGES_TOOL, max_size=2), WILD),
    "tool_choice": st.one_of(
        st.fixed_dictionaries(
            {"type": sometimes_wild(st.sampled_from(["auto", "any", "tool", "none"]))},
            optional={"name": sometimes_wild(st.just("get_weather")), "disable_parallel_tool_use": WILD},
        ),
        WILD,
    ),
    "thinking": st.one_of(
        st.fixed_dictionaries({"type": st.just("enabled"), "budget_tokens": TOKENS}),
        st.sampled_from([{"type": "adaptive"}, {"type": "disabled"}]),
        WILD,
    ),
    "output_config": st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "effort": st.one_of(st.sampled_from(["low", "medium", "high", "xhigh", "max"]), WILD),
                "format": st.one_of(st.just({"type": "json_schema", "schema": {"type": "object"}}), WILD),
            },
        ),
        WILD,
    ),
    "service_tier": WILD,
    "container": WILD,
    "mcp_servers": WILD,
}
MESSAGES_BODY = body_of({"model": MODEL, "max_tokens": TOKENS, "messages": MESSAGES_LIST}, MESSAGES_FIELDS)
COUNT_TOKENS_BODY = body_of({"model": MODEL, "messages": MESSAGES_LIST}, MESSAGES_FIELDS)

# --- /v1/responses -------------------------------------------------------------------------------

# Stands for a response id this account really stored: the test puts a live one in its place (in
# the path and in the body's bytes), so that continuations and GETs also reach the upstream.
STORED_ID = "resp_FUZZSTORED"

INPUT_PART = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text"]), "text": sometimes_wild(TEXT)}),
    st.fixed_dictionaries(
        {"type": st.just("input_image")},
        optional={
            "image_url": sometimes_wild(URLS),
            "file_id": sometimes_wild(TEXT),
            "detail": sometimes_wild(st.sampled_from(["auto", "low", "high"])),
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("input_file")},
        optional={
            "file_data": sometimes_wild(st.sampled_from([PDF, "data:text/plain;base64,aGk=", "JVBERi0="])),
            "filename": sometimes_wild(TEXT),
            "file_id": sometimes_wild(TEXT),
            "file_url": sometimes_wild(URLS),
        },
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["refusal", "input_audio", "summary_text"])}, optional={"text": TEXT}
    ),
    st.fixed_dictionaries({"type": WILD}, optional={"text": TEXT}),
    WILD,
)
INPUT_CONTENT = weighted((4, TEXT), (4, st.lists(INPUT_PART, max_size=3)), (1, WILD))
INPUT_ITEM = st.one_of(
    st.fixed_dictionaries(  # EasyInputMessage: `type` left out now and then
        {
            "role": sometimes_wild(st.sampled_from(["user", "assistant", "system", "developer"])),
            "content": INPUT_CONTENT,
        },
        optional={"type": sometimes_wild(st.just("message")), "status": WILD, "id": WILD},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("function_call"),
            "call_id": sometimes_wild(st.sampled_from(["call_1", ""])),
            "name": sometimes_wild(st.just("get_weather")),
            "arguments": ARGUMENTS,
        },
        optional={"id": sometimes_wild(st.just("fc_1")), "status": WILD},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("function_call_output"),
            "call_id": sometimes_wild(st.just("call_1")),
            "output": st.one_of(TEXT, st.lists(INPUT_PART, max_size=2), WILD),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("reasoning")},
        optional={
            "id": sometimes_wild(st.just("rs_1")),
            "summary": st.one_of(
                st.lists(st.fixed_dictionaries({"type": st.just("summary_text"), "text": TEXT}), max_size=2), WILD
            ),
            "encrypted_content": sometimes_wild(st.just("c2ln")),
        },
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["item_reference", "web_search_call", "computer_call_output", "mcp_call"])},
        optional={"id": sometimes_wild(st.just(STORED_ID))},
    ),
    WILD,
)
A_RESPONSES_TURN = st.just(
    [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Weather?"},
                {"type": "input_image", "image_url": "data:image/png;base64," + PNG_B64},
            ],
        },
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks"}]},
    ]
)
RESPONSES_INPUT = weighted(
    (6, TEXT),
    (10, st.lists(INPUT_ITEM, min_size=1, max_size=4)),
    (2, A_RESPONSES_TURN),
    (1, st.just([])),
    (1, WILD),
    (1, HUGE),
)
RESPONSES_TOOL = sometimes_wild(
    st.fixed_dictionaries(
        {"type": sometimes_wild(st.sampled_from(["function"] * 4 + ["custom", "web_search", "file_search", "mcp"]))},
        optional={
            "name": sometimes_wild(st.sampled_from(["get_weather", ""])),
            "description": sometimes_wild(TEXT),
            "parameters": sometimes_wild(SCHEMA),
            "strict": WILD,
        },
    )
)
RESPONSES_FIELDS = {
    "instructions": sometimes_wild(TEXT),
    "max_output_tokens": TOKENS,
    "stream": weighted((6, st.booleans()), (1, st.none()), (1, WILD)),
    "store": weighted((4, st.booleans()), (1, st.none()), (1, WILD)),
    "previous_response_id": weighted(
        (4, st.just(STORED_ID)), (1, st.sampled_from(["resp_unknown", "", "r" * 201, "resp_\u202e"])), (1, WILD)
    ),
    "background": weighted((3, st.booleans()), (1, WILD)),
    "conversation": st.one_of(st.just("conv_1"), st.just({"id": "conv_1"}), WILD),
    "prompt": st.one_of(st.just({"id": "pmpt_1", "variables": {}}), WILD),
    "tools": st.one_of(st.lists(RESPONSES_TOOL, max_size=2), WILD),
    "tool_choice": st.one_of(
        st.sampled_from(["auto", "none", "required"]),
        st.just({"type": "function", "name": "get_weather"}),
        st.just({"type": "allowed_tools", "mode": "auto", "tools": []}),
        WILD,
    ),
    "parallel_tool_calls": sometimes_wild(st.booleans()),
    "text": st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "format": st.one_of(
                    st.sampled_from(
                        [
                            {"type": "text"},
                            {"type": "json_object"},
                            {"type": "json_schema", "name": "x", "schema": {"type": "object"}},
                            {"type": "json_schema", "name": "x"},
                            {"type": "grammar"},
                        ]
                    ),
                    WILD,
                ),
                "verbosity": sometimes_wild(st.sampled_from(["low", "medium", "high"])),
            },
        ),
        WILD,
    ),
    "reasoning": st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "effort": sometimes_wild(st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh"])),
                "summary": sometimes_wild(st.sampled_from(["auto", "concise", "detailed"])),
                "generate_summary": WILD,
            },
        ),
        WILD,
    ),
    "include": st.one_of(
        st.lists(st.sampled_from(["reasoning.encrypted_content", "message.output_text.logprobs", "x"]), max_size=2),
        WILD,
    ),
    "temperature": SAMPLING,
    "top_p": SAMPLING,
    "top_logprobs": sometimes_wild(st.integers(0, 20)),
    "truncation": sometimes_wild(st.sampled_from(["auto", "disabled"])),
    "metadata": st.one_of(st.just({"k": "v"}), WILD),
    "user": sometimes_wild(TEXT),
    "safety_identifier": sometimes_wild(TEXT),
    "max_tool_calls": sometimes_wild(POSITIVE),
    "service_tier": WILD,
    "prompt_cache_key": WILD,
    "stream_options": WILD,
}
RESPONSES_BODY = body_of({"model": MODEL, "input": RESPONSES_INPUT}, RESPONSES_FIELDS)

# --- /v1/images/generations ----------------------------------------------------------------------

IMAGE_MODEL = "gpt-image-2"  # kind image, on an OpenAI route (the fuzz fixture adds it)
IMAGE_MODELS = weighted((10, st.just(IMAGE_MODEL)), (2, st.sampled_from(MODEL_NAMES)), (1, MODEL))
PROMPT = weighted(
    (8, st.sampled_from(["A red fox", "a cat", "Sunset over the sea, watercolour"])),
    (2, TEXT),
    (1, st.sampled_from(["x" * 32_000, "x" * 32_001, "   "])),
    (1, WILD),
)
IMAGE_FIELDS = {
    "n": weighted(
        (6, st.integers(1, 3)), (1, st.sampled_from([0, 10, 11, -1, True, 1.0, "2"])), (1, ODD_INT), (1, WILD)
    ),
    "size": sometimes_wild(st.sampled_from(["1024x1024", "1536x1024", "auto", "256x256", "", "x" * 21])),
    "quality": sometimes_wild(st.sampled_from(["auto", "low", "medium", "high", "standard", "hd", "ultra"])),
    "background": sometimes_wild(st.sampled_from(["transparent", "opaque", "auto", "clear"])),
    "output_format": sometimes_wild(st.sampled_from(["png", "jpeg", "webp", "gif"])),
    "output_compression": sometimes_wild(st.sampled_from([0, 50, 100, 101, -1, 2**63])),
    "response_format": sometimes_wild(st.sampled_from(["url", "b64_json", "url", "b64"])),
    "moderation": sometimes_wild(st.sampled_from(["auto", "low", "high"])),
    "stream": weighted((3, st.booleans()), (1, st.none()), (1, WILD)),
    "partial_images": sometimes_wild(st.integers(0, 3)),
    "style": sometimes_wild(st.sampled_from(["vivid", "natural"])),
    "user": sometimes_wild(TEXT),
}
IMAGES_BODY = body_of({"model": IMAGE_MODELS, "prompt": PROMPT}, IMAGE_FIELDS)

# --- /v1/images/edits (multipart/form-data) -------------------------------------------------------

PNG = base64.b64decode(PNG_B64)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 16 + b"\xff\xd9"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00" + b"\x00" * 24
GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
# (bytes, the content type a client would label them with)
UPLOADS = st.sampled_from(
    [(PNG, "image/png")] * 6
    + [
        (JPEG, "image/jpeg"),
        (WEBP, "image/webp"),
        (PNG, "application/octet-stream"),  # a PNG labelled as anything: the bytes decide
        (PNG, "image/jpeg"),
        (GIF, "image/gif"),
        (b"hello", "text/plain"),  # not an image
        (b"%PDF-1.4\n", "application/pdf"),
        (b"", "image/png"),
        (PNG[:5], "image/png"),  # a PNG's first bytes only
        (b"\x00" * 300, "image/png"),
    ]
)
FILE_FIELDS = st.sampled_from(["image"] * 12 + ["image[]"] * 6 + ["images", "Image", "image[0]", ""])
FILENAMES = st.sampled_from(["a.png"] * 4 + ["", "é.png", "a\\b.png", "../../etc/passwd", "x" * 300 + ".png", None])
# Form values as text, as a multipart form carries them.
FORM_FIELDS = {
    "n": st.sampled_from(["1", "2", "2", "0", "11", "-1", "x", "1.5", "", " 2 ", "\u0661", "9" * 5000]),
    "size": st.sampled_from(["1024x1024", "1024x1024", "auto", "256x256", "", "x" * 21]),
    "quality": st.sampled_from(["auto", "low", "high", "high", "ultra", ""]),
    "background": st.sampled_from(["transparent", "opaque", "opaque", "clear"]),
    "output_format": st.sampled_from(["png", "png", "jpeg", "gif"]),
    "output_compression": st.sampled_from(["50", "50", "101", "x", ""]),
    "response_format": st.sampled_from(["url", "url", "b64_json", "b64_json", "b64", ""]),
    "input_fidelity": st.sampled_from(["low", "high", "max"]),
    "stream": st.sampled_from(["false", "false", "False", "true", "0", ""]),
    "user": st.sampled_from(["u1", "", "é" * 100]),
    "mask": st.just("not a file"),  # a mask given as a text field
}
BOUNDARIES = st.sampled_from(["XyZ", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "b" * 70, "a'()+_,-./:=?"])
BREAKAGES = st.sampled_from(
    ["none"] * 16
    + [
        "wrong boundary",
        "no boundary",
        "not multipart",
        "no closing boundary",
        "truncated",
        "bare LF",
        "preamble and epilogue",
        "field repeated",
        "part dropped",
        "huge field",
        "huge prompt",
        "17 images",
        "base64 part",
        "no disposition",
        "nested multipart",
        "empty body",
    ]
)


@dataclass(frozen=True)
class Part:
    """One part of a multipart body: the Content-Disposition parameters, more headers, the bytes."""

    params: bytes
    data: bytes
    headers: bytes = b""


def text_part(name: str, value: str) -> Part:
    return Part(b'name="' + name.encode() + b'"', value.encode("utf-8", "surrogatepass"))


def file_part(name: str, data: bytes, content_type: str | None, filename: str | None = "a.png") -> Part:
    params = b'name="' + name.encode() + b'"'
    if filename is not None:
        params += b'; filename="' + filename.encode() + b'"'
    headers = b"" if content_type is None else b"\r\nContent-Type: " + content_type.encode()
    return Part(params, data, headers)


def multipart(parts: list[Part], boundary: str, *, closing: bool = True) -> bytes:
    out = b""
    for part in parts:
        disposition = b"Content-Disposition: form-data; " + part.params if part.params else b"X-Part: 1"
        out += b"--" + boundary.encode() + b"\r\n" + disposition + part.headers + b"\r\n\r\n" + part.data + b"\r\n"
    return out + (b"--" + boundary.encode() + b"--\r\n" if closing else b"")


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True once in `n` draws (st.integers would favour its bounds)."""
    return st.sampled_from([False] * (n - 1) + [True])


@st.composite
def edit_case(draw) -> Case:
    """A multipart edit request: mostly valid (a model, a prompt, one or more image files, maybe a
    mask and a few fields), now and then broken in one way (the boundary, a part, the framing)."""
    parts: list[Part] = []
    model = draw(IMAGE_MODELS)
    if not draw(one_in(20)):
        parts.append(text_part("model", model if isinstance(model, str) else json.dumps(model)))
    prompt = draw(weighted((8, st.sampled_from(["Make it blue", "add a hat"])), (1, TEXT), (1, st.just(""))))
    if not draw(one_in(20)):
        parts.append(text_part("prompt", prompt))
    for _ in range(draw(st.integers(0, 3) if draw(one_in(6)) else st.just(1))):
        data, content_type = draw(UPLOADS)
        name = draw(FILE_FIELDS)
        parts.append(file_part(name, data, draw(st.sampled_from([content_type] * 8 + [None])), draw(FILENAMES)))
    if draw(one_in(6)):
        data, content_type = draw(UPLOADS)
        parts.append(file_part("mask", data, content_type, "mask.png"))
    for name in draw(st.lists(st.sampled_from(sorted(FORM_FIELDS)), max_size=2, unique=True)):
        parts.append(text_part(name, draw(FORM_FIELDS[name])))
    if draw(one_in(7)):  # a field nobody knows
        parts.append(
            text_part(draw(st.sampled_from(["x", "metadata", "é", "a b", "partial_images"])), draw(st.text(max_size=8)))
        )
    draw(st.randoms()).shuffle(parts)

    boundary = draw(BOUNDARIES)
    content_type = f'multipart/form-data; boundary="{boundary}"'
    closing = True
    how = draw(BREAKAGES)
    if how == "field repeated" and parts:
        parts.append(draw(st.sampled_from(parts)))
    elif how == "part dropped" and parts:
        del parts[draw(st.integers(0, len(parts) - 1))]
    elif how == "huge field":
        parts.append(text_part(draw(st.sampled_from(["size", "user", "quality"])), "x" * 1_000_000))
    elif how == "huge prompt":
        parts.append(text_part("prompt", "word " * 200_000))
    elif how == "17 images":
        parts += [file_part("image[]", PNG, "image/png") for _ in range(17)]
    elif how == "base64 part":
        parts.append(
            Part(b'name="image"; filename="b.png"', PNG_B64.encode(), b"\r\nContent-Transfer-Encoding: base64")
        )
    elif how == "no disposition":
        parts.append(Part(b"", PNG, b"\r\nContent-Type: image/png"))
    elif how == "nested multipart":
        inner = multipart([file_part("image", PNG, "image/png")], "inner")
        parts.append(
            Part(b'name="image"; filename="n.png"', inner, b"\r\nContent-Type: multipart/mixed; boundary=inner")
        )
    elif how == "no closing boundary":
        closing = False
    body = multipart(parts, boundary, closing=closing)
    if how == "wrong boundary":
        content_type = "multipart/form-data; boundary=not-the-one"
    elif how == "no boundary":
        content_type = "multipart/form-data"
    elif how == "not multipart":
        content_type = draw(st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain"]))
    elif how == "truncated":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif how == "bare LF":
        body = body.replace(b"\r\n", b"\n")
    elif how == "preamble and epilogue":
        body = b"preamble\r\n" + body + b"epilogue --" + boundary.encode() + b"\r\n"
    elif how == "empty body":
        body = b""
    return Case("POST", EDITS, body, content_type, draw(KEY_LABELS), chunked=draw(CHUNKED))


# --- bytes -----------------------------------------------------------------------------------


def encode(body: Any, how: str) -> bytes:
    if how == "ascii":
        return json.dumps(body).encode()
    if how == "utf-8":  # a lone surrogate cannot be UTF-8: sent as the bytes it would have been
        return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if how == "utf-16":  # valid JSON in an encoding the JSON RFC allows readers to detect
        return json.dumps(body).encode("utf-16")
    if how == "bom":
        return b"\xef\xbb\xbf" + json.dumps(body).encode()
    raise AssertionError(how)


ENCODING = st.sampled_from(["ascii"] * 6 + ["utf-8"] * 3 + ["utf-16", "bom"])
CONTENT_TYPES = st.sampled_from(
    ["application/json"] * 8
    + [
        None,
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=utf-16",
        "application/json; charset=latin-1",
        "application/octet-stream",
        "*/*",
    ]
)
CHUNKED = st.sampled_from([False] * 9 + [True])
# Headers a client may add that the gateway reads or passes on (the Anthropic ones go upstream).
ODD_HEADERS = st.lists(
    st.sampled_from(
        [
            ("anthropic-version", b"2023-06-01"),
            ("anthropic-version", b""),
            ("anthropic-version", b"\xe9t\xe9"),
            ("anthropic-beta", b"prompt-caching-2024-07-31,\xff"),
            ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("traceparent", b"00-zz-00-01"),
            ("user-agent", b"\xc3\xa9\xff fuzz/1.0"),
            ("user-agent", b"u" * 4000),
            ("content-encoding", b"gzip"),
            ("accept-encoding", b"gzip, br"),
            ("x-request-id", b"req_client_chosen"),
        ]
    ),
    max_size=2,
    unique=True,
)


@st.composite
def body_case(draw, path: str, bodies: st.SearchStrategy) -> Case:
    body = draw(bodies)
    return Case(
        "POST",
        path,
        encode(body, draw(ENCODING)),
        draw(CONTENT_TYPES),
        draw(KEY_LABELS),
        tuple(draw(ODD_HEADERS)),
        draw(CHUNKED),
    )


# Valid requests of each endpoint, for one field to be mutated.
VALID = [
    (CHAT, {"model": "gpt-5", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}),
    (CHAT, {"model": CLAUDE, "messages": [{"role": "user", "content": "Hello"}], "max_completion_tokens": 16}),
    (
        CHAT,
        {
            "model": "gpt-5",
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    (
        CHAT,
        {
            "model": CLAUDE,
            "stream": True,
            "messages": [
                {"role": "system", "content": "Be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Hi"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}},
                    ],
                },
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
                }
            ],
            "tool_choice": "auto",
            "temperature": 0.5,
            "stop": ["END"],
        },
    ),
    (
        CHAT,
        {
            "model": CLAUDE,
            "messages": [{"role": "user", "content": "Think"}],
            "reasoning_effort": "low",
            "max_completion_tokens": 4000,
            "user": "u1",
        },
    ),
    (MESSAGES, {"model": CLAUDE, "max_tokens": 16, "messages": [{"role": "user", "content": "Hello"}]}),
    (
        MESSAGES,
        {"model": "gpt-5", "max_tokens": 16, "messages": [{"role": "user", "content": "Hello"}], "system": "Be brief"},
    ),
    (
        MESSAGES,
        {
            "model": CLAUDE,
            "max_tokens": 2000,
            "stream": True,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        },
    ),
    (
        MESSAGES,
        {
            "model": "gpt-5",
            "max_tokens": 64,
            "stream": True,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto"},
            "metadata": {"user_id": "u"},
            "stop_sequences": ["x"],
            "messages": [
                {"role": "user", "content": "Hi"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
            ],
        },
    ),
    (COUNT_TOKENS, {"model": CLAUDE, "messages": [{"role": "user", "content": "Hello"}], "system": "x"}),
    (RESPONSES, {"model": "gpt-5", "input": "Hello", "max_output_tokens": 16}),
    (RESPONSES, {"model": CLAUDE, "input": "Hello", "instructions": "Be brief", "store": False}),
    (RESPONSES, {"model": "gpt-5", "input": "Again", "previous_response_id": STORED_ID, "store": True}),
    (
        RESPONSES,
        {
            "model": CLAUDE,
            "stream": True,
            "max_output_tokens": 2000,
            "reasoning": {"effort": "low", "summary": "auto"},
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Weather?"},
                        {"type": "input_image", "image_url": "data:image/png;base64," + PNG_B64},
                    ],
                },
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}],
            "tool_choice": "auto",
        },
    ),
    (
        RESPONSES,
        {
            "model": "gpt-5",
            "stream": True,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        },
    ),
    (IMAGES, {"model": IMAGE_MODEL, "prompt": "A red fox", "n": 2, "size": "1024x1024"}),
    (
        IMAGES,
        {
            "model": IMAGE_MODEL,
            "prompt": "A cat",
            "quality": "low",
            "background": "transparent",
            "output_format": "png",
            "response_format": "b64_json",
        },
    ),
    (IMAGES, {"model": IMAGE_MODEL, "prompt": "A cat", "response_format": "url", "output_compression": 50}),
    (
        COUNT_TOKENS,
        {
            "model": "gpt-5",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
                    ],
                }
            ],
        },
    ),
]


def paths_in(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key or index path inside a JSON value (the value itself excluded)."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out += paths_in(child, (*prefix, key))
    return out


def twisted(value: Any) -> st.SearchStrategy:
    """The same value in a nearby wrong type: an int as a float or a string, a string in a list..."""
    options: list[Any] = [None, [value], {"value": value}, str(value)]
    if isinstance(value, bool):
        options += [int(value), "true" if value else "false"]
    elif isinstance(value, int):
        options += [float(value), value + 0.5, -value, 0, value * 10**20]
    elif isinstance(value, str):
        options += ["", value + "\x00", value + "\ud800", value * 1000, 1]
    elif isinstance(value, list):
        options += [[], value * 50, [*value, None], [1]]
    elif isinstance(value, dict):
        options += [{}, list(value.values()), {**value, "type": ["text"]}]
    return st.sampled_from(options)


@st.composite
def near_valid_case(draw) -> Case:
    path, base = draw(st.sampled_from(VALID))
    body = json.loads(json.dumps(base))  # a copy to mutate
    where = draw(st.sampled_from(paths_in(body)))
    parent = body
    for key in where[:-1]:
        parent = parent[key]
    last = where[-1]
    how = draw(st.sampled_from(["delete", "wild", "twist", "twist", "extra"]))
    if how == "delete":
        del parent[last]
    elif how == "wild":
        parent[last] = draw(st.one_of(WILD, HUGE, ODD_TEXT, ODD_INT, ODD_FLOAT))
    elif how == "twist":
        parent[last] = draw(twisted(parent[last]))
    elif isinstance(parent, dict):
        parent[draw(st.one_of(FIELD_NAMES, st.text(max_size=8)))] = draw(WILD)
    else:
        parent.append(draw(WILD))
    return Case(
        "POST", path, encode(body, draw(ENCODING)), draw(CONTENT_TYPES), draw(KEY_LABELS), chunked=draw(CHUNKED)
    )


RAW_BODIES = st.one_of(
    st.sampled_from(
        [
            b"",
            b"{",
            b"{not json",
            b"[]",
            b"null",
            b"1",
            b'"gpt-5"',
            b"\xff\xfe\x00",
            b"\x00" * 10,
            b'{"model": "gpt-5", "messages": [',
            b'{"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]} trailing',
            b'{"model": "gpt-5", "model": "'
            + CLAUDE.encode()
            + b'", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}',
            b'{"model": "gpt-5", "max_tokens": NaN, "messages": [{"role": "user", "content": "hi"}]}',
            b'{"model": "gpt-5", "max_tokens": 1e999, "messages": [{"role": "user", "content": "hi"}]}',
            b'{"model": "gpt-5", "max_tokens": ' + b"9" * 5000 + b', "messages": []}',  # more digits than Python parses
            b'{"model": "gpt-\\ud800", "messages": "\\x"}',
            b'{"model": "gpt-5", "messages": [{"role": "user", "content": "\\u0000\\udfff"}], "max_tokens": 3}',
            b"[" * 100_000,
            b'{"a":' * 50_000,
            b"[" * 990 + b"]" * 990,
            b'{"model": "gpt-5", "messages": [{"role": "user", "content": ' + b"[" * 300 + b"]" * 300 + b"}]}",
        ]
    ),
    st.binary(max_size=64),
    st.builds(lambda value: json.dumps(value).encode(), WILD),  # any JSON, objects rarely
    st.tuples(st.sampled_from([body for _, body in VALID]), st.integers(1, 400)).map(
        lambda pair: json.dumps(pair[0]).encode()[: pair[1]]
    ),
)


@st.composite
def raw_case(draw) -> Case:
    return Case(
        draw(st.sampled_from(["POST"] * 6 + ["PUT", "PATCH"])),
        draw(st.sampled_from([CHAT, MESSAGES, COUNT_TOKENS, CHAT + "/", MESSAGES + "/", RESPONSES, IMAGES, EDITS])),
        draw(RAW_BODIES),
        draw(CONTENT_TYPES),
        draw(KEY_LABELS),
        chunked=draw(CHUNKED),
    )


# Stands for the file name of an image the gateway really stored: the test puts a live one in its
# place, so that downloads are fuzzed too.
IMAGE_FILE = "FUZZ_IMAGE_FILE"
ODD_IDS = st.sampled_from(
    [
        STORED_ID,
        STORED_ID,
        STORED_ID,
        "resp_unknown",
        "resp_" + "a" * 5000,  # longer than any id column
        "resp_%ff%fe",
        "%F0%9F%98%80",
        "r%C3%A9sp",
        "resp_1%2F..%2F..%2Fmodels",  # an encoded slash: one path segment to the client, several decoded
        "resp_1%3Fx=1",  # an encoded "?": a query string if it reached an upstream URL unencoded
        "resp_1%23frag",
        "resp_1%20",
        "%2e%2e",
        "..%2F",
        "resp_1;x",
        "resp_1%0D%0AX-Injected:%201",
        STORED_ID + "/extra",
        "",
    ]
)
STORED_SUFFIXES = st.sampled_from(
    ["", "", "", "/input_items", "/cancel", "/input_items?limit=1&order=asc&x=1", "/x", "/"]
)
STORED_PATHS = st.builds(lambda rid, suffix: RESPONSES + "/" + rid + suffix, ODD_IDS, STORED_SUFFIXES)
ODD_TOKENS = st.sampled_from(
    [
        IMAGE_FILE,
        IMAGE_FILE,
        IMAGE_FILE,
        IMAGE_FILE + "?download=1",
        "A" * 43 + ".png",  # well-formed, unknown
        "A" * 43 + ".jpg",
        "A" * 42 + ".png",
        "A" * 43 + ".PNG",
        "A" * 43,
        "A" * 43 + ".png/extra",
        "A" * 43 + ".png%00",
        "%F0%9F%98%80.png",
        "x" * 5000 + ".png",
        "..%2F..%2Fsettings.py",
        "%2e%2e",
        "",
        "a/b/c.png",
        "A" * 43 + ".exe",
    ]
)
IMAGE_FILE_PATHS = ODD_TOKENS.map(lambda token: IMAGE_FILES + token)
STORED_METHODS = st.sampled_from(["GET"] * 6 + ["DELETE", "POST", "POST", "PUT", "PATCH", "HEAD", "OPTIONS"])


@st.composite
def stored_case(draw) -> Case:
    """A stored-response or image-file URL with an odd id, by a method either takes or not."""
    path = draw(weighted((3, STORED_PATHS), (2, IMAGE_FILE_PATHS)))
    return Case(
        draw(STORED_METHODS),
        path,
        draw(st.one_of(st.none(), st.none(), SMALL_BODIES)),
        draw(CONTENT_TYPES),
        draw(st.sampled_from(list(KEYS))),
    )


PATHS = weighted(
    (
        6,
        st.sampled_from(
            [
                "/v1",
                "/v1/",
                MODELS,
                MODELS + "/",
                MODELS + "/gpt-5",
                MODELS + "/" + CLAUDE,
                MODELS + "/gpt-9-ultra",
                MODELS + "/%00",
                MODELS + "/%ff%fe",
                MODELS + "/%F0%9F%98%80",
                MODELS + "/gpt-5/extra",
                MODELS + "/" + "x" * 5000,
                MODELS + "?limit=1",
                "/v1/%6dodels",
                CHAT,
                CHAT + "/",
                CHAT + "?stream=true",
                MESSAGES,
                MESSAGES + "/",
                COUNT_TOKENS,
                MESSAGES + "/batches",
                MESSAGES + "x",
                RESPONSES,
                RESPONSES + "/",
                RESPONSES + "/" + STORED_ID,
                RESPONSES + "/" + STORED_ID + "/input_items",
                RESPONSES + "/" + STORED_ID + "/cancel",
                RESPONSES + "/resp_unknown",
                "/v1/embeddings",
                IMAGES,
                EDITS,
                "/v1/images",
                "/v1/images/files",
                IMAGE_FILES,
                IMAGE_FILES + IMAGE_FILE,
                "/v1/images/variations",
                "/v1/completions",
                "/v1/chat",
                "/v1//models",
            ]
        ),
    ),
    # Any other path ("." left out: httpx would resolve dot segments to a path outside /v1).
    (
        2,
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?%."), max_size=20).map(
            lambda tail: "/v1/" + tail
        ),
    ),
    (
        1,
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?%./"), max_size=12).map(
            lambda tail: MESSAGES + "/" + tail
        ),
    ),
    (1, STORED_PATHS),
    (1, IMAGE_FILE_PATHS),
)
METHODS = st.sampled_from(["GET", "GET", "POST", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
SMALL_BODIES = st.one_of(
    st.none(),
    st.sampled_from([json.dumps(body).encode() for _, body in VALID]),
    st.builds(lambda value: json.dumps(value).encode(), WILD),
)


@st.composite
def route_case(draw) -> Case:
    return Case(
        draw(METHODS),
        draw(PATHS),
        draw(SMALL_BODIES),
        draw(CONTENT_TYPES),
        draw(st.sampled_from(list(KEYS))),  # every key alike: this is about who may do what where
        tuple(draw(ODD_HEADERS)),
    )
