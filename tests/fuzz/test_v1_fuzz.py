"""A bounded hypothesis fuzz of every /v1 endpoint (issue "hardening", Deliver 2).

The live gateway (uvicorn in a thread, PostgreSQL, Redis, the fake upstream) gets the bytes a
client could send: bodies with wrong types, missing, extra, huge, unicode, surrogate, NUL,
negative and float-for-int values in every field the endpoints read; valid requests with one
field mutated; malformed JSON, non-object JSON and odd content types; every kind of key; odd
methods and paths. Whatever it is sent, each answer must be:

- below 500 (the fake upstream is healthy: a 5xx is the gateway's bug);
- an error in the surface's own format (OpenAI's on OpenAI routes, Anthropic's on /v1/messages*)
  with the request id in `x-request-id` and in the body, or a well-formed answer (a stream ends
  with its terminator: `data: [DONE]`, `message_stop`);
- recorded: one finished usage row when a known key was presented, none otherwise.

After each test function the ledger is reconciled: rows = requests sent with a known key, none
pending, no open hold, every balance = the sum of its ledger entries.

The default run is derandomized (the same cases on every run, as CI needs); set
OPENBILI_FUZZ_EXAMPLES=N to draw N random cases per test function instead, e.g.
`OPENBILI_FUZZ_EXAMPLES=5000 scripts/test tests/fuzz`.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.configuration import set_hypothesis_home_dir

from billing import selectors, services
from billing.models import Account, Hold
from tests.factories import AccountFactory
from tests.fuzz import strategies as s
from tests.gateway.support import sse_events
from tests.gateway_fixtures import CLAUDE
from usage.gateway.errors import ANTHROPIC_TYPES
from usage.models import UsageRecord

FLAG = os.environ.get("OPENBILI_FUZZ_EXAMPLES")

# Hypothesis keeps a cache of its own even without an example database: under var/ (git-ignored),
# not in a .hypothesis/ of the work tree.
set_hypothesis_home_dir(Path(__file__).resolve().parents[2] / "var" / "hypothesis")

_COMMON = {
    "database": None,  # no example database in the work tree; CI's cases come from derandomize
    "deadline": None,  # a request's latency is the gateway's, not a property of the case
    # The fixtures (live gateway, accounts, keys) are shared by a test function's cases on
    # purpose: the reconciliation after them covers every request they sent.
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": False,
}
settings.register_profile("openbili-fuzz", derandomize=True, **_COMMON)
settings.register_profile("openbili-fuzz-deep", derandomize=False, **_COMMON)


def bounded(default: int) -> settings:
    """`default` derandomized cases (CI), or OPENBILI_FUZZ_EXAMPLES random ones."""
    if FLAG:
        return settings(settings.get_profile("openbili-fuzz-deep"), max_examples=int(FLAG))
    return settings(settings.get_profile("openbili-fuzz"), max_examples=default)


GENERATING_ERRORS = {400, 401, 402, 403, 404, 405, 408, 413, 429}
OPENAI_ERROR_KEYS = {"message", "type", "code", "param", "request_id", "trace_id"}
ANTHROPIC_ERROR_TYPES = set(ANTHROPIC_TYPES.values())


class Fuzz:
    """The live gateway, the keys a case may present, and what was sent (for the reconciliation)."""

    def __init__(self, gateway, secrets: dict[str, str]) -> None:
        self.gateway = gateway
        self.secrets = secrets
        self.http = httpx.Client(base_url=gateway.url, timeout=60)
        self.sent = 0
        self.known = 0  # requests that presented a known key: each must have its one row
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.started = time.monotonic()

    def headers(self, case: s.Case) -> tuple[list[tuple[str, str | bytes]], bool]:
        """The request's headers and whether it presents a known key."""
        kind, how = s.KEYS[case.key]
        secret = self.secrets[kind] if kind else ""
        headers: list[tuple[str, str | bytes]] = []
        if case.content_type is not None:
            headers.append(("content-type", case.content_type))
        if how == "bearer":
            headers.append(("authorization", f"Bearer {secret}"))
        elif how == "lower bearer":
            headers.append(("authorization", f"bearer {secret}"))
        elif how == "x-api-key":
            headers.append(("x-api-key", secret))
        elif how == "garbage":
            headers.append(("authorization", "Bearer sk-ob-<not a key>"))
        elif how == "unknown":
            headers.append(("authorization", "Bearer sk-ob-" + "A" * 43))
        elif how == "basic":
            # a known key in x-api-key, but Authorization wins and is not Bearer: no key presented
            headers += [("authorization", "Basic c2stb2ItYWJj"), ("x-api-key", self.secrets["funded"])]
        headers += list(case.headers)
        return headers, kind is not None

    def exchange(self, case: s.Case) -> None:
        headers, known = self.headers(case)
        content = case.body
        if case.chunked and content is not None:
            content = iter([content[: len(content) // 2], content[len(content) // 2 :]])
        response = self.http.request(case.method, case.path, content=content, headers=headers)
        self.sent += 1
        self.known += known
        route = unquote(urlsplit(case.path).path).rstrip("/")
        self.statuses[(summary_route(route), response.status_code)] += 1
        check_answer(case, route, response)
        check_row(response, known=known)

    def reconcile(self) -> None:
        """The ledger after every request of a test function."""
        assert not UsageRecord.objects.filter(billing_result="pending").exists()
        assert not Hold.objects.filter(state=Hold.State.OPEN).exists()
        for account in Account.objects.all():
            assert account.balance == selectors.ledger_sum(account_id=account.pk), account
            assert account.reserved == 0, account
        assert UsageRecord.objects.count() == self.known, (UsageRecord.objects.count(), self.known)
        seconds = time.monotonic() - self.started
        print(f"\n{self.sent} requests ({self.known} with a known key) in {seconds:.1f}s:", dict(self.statuses))


@pytest.fixture
def fuzz(claude):
    """gpt-5 (OpenAI route) and CLAUDE (Anthropic route), and a key of every kind: the funded
    account's ($100), a $0 account's, a disabled one, one scoped to CLAUDE alone."""
    broke = AccountFactory(credit=Decimal(0))
    _, broke_secret = services.key_create(account=broke, name="broke")
    disabled, disabled_secret = services.key_create(account=claude.account, name="disabled")
    services.key_disable(key=disabled)
    _, scoped_secret = services.key_create(account=claude.account, name="scoped", models=[CLAUDE])
    claude.refresh()
    secrets = {"funded": claude.secret, "broke": broke_secret, "disabled": disabled_secret, "scoped": scoped_secret}
    fuzz = Fuzz(claude, secrets)
    yield fuzz
    fuzz.http.close()


# --- the checks ------------------------------------------------------------------------------------


def summary_route(route: str) -> str:
    if route in (s.CHAT, s.MESSAGES, s.COUNT_TOKENS, s.MODELS):
        return route
    return s.MODELS + "/{id}" if route.startswith(s.MODELS + "/") else "other"


def check_answer(case: s.Case, route: str, response: httpx.Response) -> None:
    status = response.status_code
    assert status < 500, f"{status}: {response.text[:2000]}"
    request_id = response.headers.get("x-request-id", "")
    assert request_id.startswith("req_"), response.headers
    assert response.headers.get("x-trace-id", "").startswith("trace_"), response.headers
    anthropic = route.startswith("/v1/messages")
    if anthropic:
        assert response.headers.get("request-id") == request_id  # what the Anthropic SDK reads
    if case.method == "HEAD":  # no body to look at
        return
    if status >= 300:
        assert status in GENERATING_ERRORS, status
        check_error(response, anthropic=anthropic)
        return
    assert status == 200, status
    kind = s.KEYS[case.key][0]
    assert kind in ("funded", "broke", "scoped"), "a 200 without a usable key"
    visible = {CLAUDE} if kind == "scoped" else {"gpt-5", CLAUDE}  # what this key may see
    if route == s.MODELS and case.method == "GET":
        data = response.json()
        assert data["object"] == "list" and {m["id"] for m in data["data"]} == visible, data
        return
    if route.startswith(s.MODELS + "/") and case.method == "GET":
        data = response.json()
        assert data["object"] == "model" and data["id"] == route[len(s.MODELS) + 1 :], data
        assert data["id"] in visible, data
        return
    assert case.method == "POST", (case.method, route)
    if route == s.COUNT_TOKENS:
        data = response.json()
        assert isinstance(data["input_tokens"], int) and data["input_tokens"] >= 0, data
        return
    body = json.loads(case.body or b"")
    assert body["model"] in visible, body["model"]
    assert kind != "broke", "a $0 account was served"  # its hold cannot be covered: a 402
    stream = body.get("stream") is True
    if route == s.CHAT:
        check_chat_stream(response) if stream else check_chat(response)
    elif route == s.MESSAGES:
        check_messages_stream(response) if stream else check_messages(response)
    else:
        raise AssertionError(f"a 200 from {route}")


def check_error(response: httpx.Response, *, anthropic: bool) -> None:
    """The surface's error format, with the ids of the headers."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    request_id = response.headers["x-request-id"]
    if anthropic:
        assert body["type"] == "error", body
        error = body["error"]
        assert error["type"] in ANTHROPIC_ERROR_TYPES, body
        assert isinstance(error["message"], str) and error["message"], body
        assert body["request_id"] == request_id, body
        return
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == OPENAI_ERROR_KEYS, body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    assert isinstance(error["code"], str) and error["code"], body
    assert error["param"] is None or isinstance(error["param"], str), body
    assert (error["request_id"], error["trace_id"]) == (request_id, response.headers["x-trace-id"]), body


def check_chat(response: httpx.Response) -> None:
    data = response.json()
    assert data["object"] == "chat.completion", data
    assert isinstance(data["choices"], list) and data["choices"], data
    for choice in data["choices"]:
        assert isinstance(choice["message"], dict) and isinstance(choice["finish_reason"], str), data
    assert isinstance(data["usage"]["prompt_tokens"], int), data


def check_messages(response: httpx.Response) -> None:
    data = response.json()
    assert data["type"] == "message" and data["role"] == "assistant", data
    assert isinstance(data["content"], list), data
    assert all(isinstance(block, dict) and isinstance(block["type"], str) for block in data["content"]), data
    assert isinstance(data["stop_reason"], str), data
    assert isinstance(data["usage"]["input_tokens"], int) and isinstance(data["usage"]["output_tokens"], int), data


def check_chat_stream(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers
    events = sse_events(response.content)
    assert events, response.content
    *chunks, (_, last) = events
    for _, data in chunks:
        chunk = json.loads(data)
        assert chunk["object"] == "chat.completion.chunk" and "error" not in chunk, chunk
    assert last == b"[DONE]", f"the stream did not end with [DONE]: {response.content[-2000:]!r}"


def check_messages_stream(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers
    events = sse_events(response.content)
    assert events, response.content
    names = [name for name, _ in events]
    assert names[0] == "message_start", names
    assert "error" not in names, f"the stream ended with an error: {response.content[-2000:]!r}"
    assert names[-1] == "message_stop" and names.count("message_stop") == 1, names
    for name, data in events:
        assert json.loads(data)["type"] == name, (name, data)


def check_row(response: httpx.Response, *, known: bool) -> None:
    """One finished row per request that presented a known key (with the status the client got);
    none for the others."""
    request_id = response.headers["x-request-id"]
    rows = UsageRecord.objects.filter(request_id=request_id).values_list("billing_result", "status")
    if not known:
        assert list(rows) == []
        return
    deadline = time.monotonic() + 5  # written before the answer today; a later write may take a moment
    while True:
        found = list(rows.all())
        if (found and found[0][0] != "pending") or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(found) == 1, found
    billing_result, status = found[0]
    assert billing_result != "pending", found
    assert status == response.status_code, found


# --- the fuzz --------------------------------------------------------------------------------------
# Case counts of the default run: 2,600 in all (≥ 2,000), under a minute here.


def test_chat_completions_bodies(fuzz):
    @bounded(600)
    @given(case=s.body_case(s.CHAT, s.CHAT_BODY))
    def run(case):
        fuzz.exchange(case)

    run()
    fuzz.reconcile()


def test_messages_bodies(fuzz):
    @bounded(600)
    @given(case=s.body_case(s.MESSAGES, s.MESSAGES_BODY))
    def run(case):
        fuzz.exchange(case)

    run()
    fuzz.reconcile()


def test_count_tokens_bodies(fuzz):
    @bounded(250)
    @given(case=s.body_case(s.COUNT_TOKENS, s.COUNT_TOKENS_BODY))
    def run(case):
        fuzz.exchange(case)

    run()
    fuzz.reconcile()


def test_valid_requests_with_one_field_mutated(fuzz):
    @bounded(600)
    @given(case=s.near_valid_case())
    def run(case):
        fuzz.exchange(case)

    run()
    fuzz.reconcile()


def test_malformed_bytes_and_content_types(fuzz):
    @bounded(250)
    @given(case=s.raw_case())
    def run(case):
        fuzz.exchange(case)

    run()
    fuzz.reconcile()


def test_keys_methods_and_paths(fuzz):
    @bounded(300)
    @given(case=s.route_case())
    def run(case):
        fuzz.exchange(case)

    run()
    fuzz.reconcile()
