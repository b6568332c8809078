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
- recorded: one finished usage row when a known key was presented, none otherwise (an image URL
  takes no key and writes no row; a queued background response's row stays pending until the
  fuzz polls it finished).

The Responses API (bodies, streams, stored-response URLs with odd ids), image generations, image
edits (multipart, broken in every way a form can be) and image file URLs are fuzzed the same way:
a 200 must be a `response` object (a stream: `response.completed` once, last, never after an
error), images whose every `data[].url` downloads one, a stored response of this account's own.
The bugs the fuzz found are kept at the end as regression examples.

After each test function the ledger is reconciled: rows = requests sent with a known key, none
pending, no open hold, every balance = the sum of its ledger entries.

The default run is derandomized (the same cases on every run, as CI needs); set
OPENBILI_FUZZ_EXAMPLES=N to draw N random cases per test function instead, e.g.
`OPENBILI_FUZZ_EXAMPLES=5000 scripts/test tests/fuzz`.
"""

from __future__ import annotations

import dataclasses
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
from tests.factories import AccountFactory, CatalogModelFactory, make_visible_model
from tests.fuzz import strategies as s
from tests.gateway.support import sse_events
from tests.gateway_fixtures import CLAUDE
from usage import images as image_store
from usage.gateway.errors import ANTHROPIC_TYPES
from usage.models import UsageRecord

FLAG = os.environ.get("OPENBILI_FUZZ_EXAMPLES")
JSON = "application/json"

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


GENERATING_ERRORS = {400, 401, 402, 403, 404, 405, 408, 409, 413, 429}  # 409: deleting a running background response
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
        self.stored: str | None = None  # a live response id of the funded account (s.STORED_ID)
        self.image: str | None = None  # a live image's file name (s.IMAGE_FILE)
        self.background: list[tuple[str, str]] = []  # (request id, response id) of queued background responses

    def resolve(self, case: s.Case) -> s.Case:
        """The case with its placeholders replaced by a live response id and image, made (by a
        request of their own, counted like any other) the first time a case needs them."""
        path, body = case.path, case.body or b""
        if s.STORED_ID in path or s.STORED_ID.encode() in body:
            if self.stored is None:
                answer = self.send(s.Case("POST", s.RESPONSES, json.dumps({"model": "gpt-5", "input": "Hi"}).encode()))
                self.stored = answer.json()["id"]
            path = path.replace(s.STORED_ID, self.stored)
            body = body.replace(s.STORED_ID.encode(), self.stored.encode())
        if s.IMAGE_FILE in path:
            if self.image is None:
                answer = self.send(
                    s.Case("POST", s.IMAGES, json.dumps({"model": s.IMAGE_MODEL, "prompt": "x"}).encode())
                )
                self.image = answer.json()["data"][0]["url"].rsplit("/", 1)[-1]
            path = path.replace(s.IMAGE_FILE, self.image)
        return dataclasses.replace(case, path=path, body=body if case.body is not None else None)

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

    def exchange(self, case: s.Case) -> httpx.Response:
        case = self.resolve(case)
        return self.send(case)

    def send(self, case: s.Case) -> httpx.Response:
        headers, known = self.headers(case)
        content = case.body
        if case.chunked and content is not None:
            content = iter([content[: len(content) // 2], content[len(content) // 2 :]])
        response = self.http.request(case.method, case.path, content=content, headers=headers)
        self.sent += 1
        decoded = unquote(urlsplit(case.path).path)
        route = decoded.rstrip("/")
        known = known and not decoded.startswith(s.IMAGE_FILES)  # an image URL takes no key: no row
        self.known += known
        self.statuses[(summary_route(route), response.status_code)] += 1
        check_answer(case, route, response, http=self.http)
        queued = background_response(case, route, response)
        check_row(response, known=known, pending=queued is not None)
        if queued is not None:
            self.background.append((response.headers["x-request-id"], queued))
        if self.stored and self.stored in case.path and case.method == "DELETE" and response.status_code == 200:
            self.stored = None  # deleted: the next case that needs one makes another
        return response

    def finish_background(self) -> None:
        """Poll each queued background response (GET, as a client does) until its row is billed:
        the gateway settles it when it sees it finished."""
        for request_id, response_id in self.background:
            deadline = time.monotonic() + 10
            while UsageRecord.objects.filter(request_id=request_id, billing_result="pending").exists():
                assert time.monotonic() < deadline, f"background response {response_id} never billed"
                time.sleep(0.1)
                self.send(s.Case("GET", f"{s.RESPONSES}/{response_id}", content_type=None))
        self.background.clear()

    def reconcile(self) -> None:
        """The ledger after every request of a test function."""
        self.finish_background()
        assert not UsageRecord.objects.filter(billing_result="pending").exists()
        assert not Hold.objects.filter(state=Hold.State.OPEN).exists()
        for account in Account.objects.all():
            assert account.balance == selectors.ledger_sum(account_id=account.pk), account
            assert account.reserved == 0, account
        assert UsageRecord.objects.count() == self.known, (UsageRecord.objects.count(), self.known)
        seconds = time.monotonic() - self.started
        print(f"\n{self.sent} requests ({self.known} with a known key) in {seconds:.1f}s:", dict(self.statuses))


@pytest.fixture
def fuzz(claude, settings, tmp_path):
    """gpt-5 (OpenAI route), CLAUDE (Anthropic route) and the image model s.IMAGE_MODEL (OpenAI
    route, per image), images stored in a directory of the test's own, and a key of every kind:
    the funded account's ($100), a $0 account's, a disabled one, one scoped to CLAUDE alone."""
    settings.STORAGES = {
        **settings.STORAGES,
        image_store.STORAGE_ALIAS: {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": tmp_path / "images"},
        },
    }
    image_model = CatalogModelFactory(
        name=s.IMAGE_MODEL, kind="image", owned_by="openai", context_window=32_768, max_output_tokens=8192
    )
    make_visible_model(
        image_model,
        prices={"input_per_mtok": Decimal("5.00"), "per_image": Decimal("0.04")},
        base_url=claude.upstream.url + "/v1",
    )
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


def encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def summary_route(route: str) -> str:
    if route in (s.CHAT, s.MESSAGES, s.COUNT_TOKENS, s.MODELS, s.RESPONSES, s.IMAGES, s.EDITS):
        return route
    for prefix, name in (
        (s.MODELS + "/", "/v1/models/{id}"),
        (s.RESPONSES + "/", "/v1/responses/{id}"),
        (s.IMAGE_FILES, "/v1/images/files/{token}"),
    ):
        if route.startswith(prefix):
            return name
    return "other"


def check_answer(case: s.Case, route: str, response: httpx.Response, *, http: httpx.Client) -> None:
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
    if route.startswith(s.IMAGE_FILES):  # no key needed: the URL is the capability
        assert case.method == "GET", case.method
        check_image(response)
        return
    kind = s.KEYS[case.key][0]
    assert kind in ("funded", "broke", "scoped"), "a 200 without a usable key"
    # what this key may see
    visible = {CLAUDE} if kind == "scoped" else {"gpt-5", CLAUDE, s.IMAGE_MODEL}
    if route == s.MODELS and case.method == "GET":
        data = response.json()
        assert data["object"] == "list" and {m["id"] for m in data["data"]} == visible, data
        return
    if route.startswith(s.MODELS + "/") and case.method == "GET":
        data = response.json()
        assert data["object"] == "model" and data["id"] == route[len(s.MODELS) + 1 :], data
        assert data["id"] in visible, data
        return
    if route.startswith(s.RESPONSES + "/"):
        check_stored(case, route, response, kind=kind)
        return
    assert case.method == "POST", (case.method, route)
    if route == s.EDITS:  # multipart: no JSON to read the model from; no other key can pay for it
        assert kind == "funded", kind
        check_images(response, http=http, n=None)
        return
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
    elif route == s.RESPONSES:
        if stream:
            check_responses_stream(response)
        else:  # a background response is answered queued, and billed when it finishes
            check_response(response.json(), final=body.get("background") is not True)
    elif route == s.IMAGES:
        assert body["model"] == s.IMAGE_MODEL, body["model"]
        check_images(response, http=http, n=body.get("n") or 1)
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


def check_response(data: dict, *, final: bool = True) -> None:
    """A Responses `response` object (finished, unless `final` is False)."""
    assert data["object"] == "response" and isinstance(data["id"], str) and data["id"], data
    assert isinstance(data["output"], list), data
    assert all(isinstance(item, dict) and isinstance(item["type"], str) for item in data["output"]), data
    if final:
        assert data["status"] in ("completed", "incomplete"), data
        usage = data["usage"]
        assert isinstance(usage["input_tokens"], int) and isinstance(usage["output_tokens"], int), data


def check_responses_stream(response: httpx.Response) -> None:
    """Events named for their type, one final event (response.completed or .incomplete) and it
    last, and no error or response.failed anywhere."""
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers
    events = sse_events(response.content)
    assert events, response.content
    names = [name for name, _ in events]
    assert "error" not in names and "response.failed" not in names, f"a failed stream: {response.content[-2000:]!r}"
    finals = [name for name in names if name in ("response.completed", "response.incomplete")]
    assert len(finals) == 1 and names[-1] == finals[0], names
    assert names[0] == "response.created", names
    for name, data in events:
        event = json.loads(data)
        assert event["type"] == name, (name, data)
    check_response(json.loads(events[-1][1])["response"])


def check_images(response: httpx.Response, *, http: httpx.Client, n: int | None) -> None:
    """`data[]` of `n` images, each with a URL that downloads it."""
    data = response.json()
    assert isinstance(data["created"], int) and isinstance(data["data"], list), data
    assert n is None or len(data["data"]) == n, (n, data)
    assert data["data"], data
    for item in data["data"]:
        url = item["url"]
        assert isinstance(url, str) and url.startswith("http"), item
        check_image(http.get(url))


def check_image(response: httpx.Response) -> None:
    assert response.status_code == 200, (response.status_code, response.text[:500])
    content_type = response.headers["content-type"]
    assert content_type.startswith("image/") and response.content, response.headers
    assert image_store.sniff(response.content) == content_type, (content_type, response.content[:20])


def check_stored(case: s.Case, route: str, response: httpx.Response, *, kind: str) -> None:
    """A 200 on /v1/responses/{id}[/...]: only for the funded account's own response."""
    # The funded account's response; the scoped key is that account's too (another account's: a 404).
    assert kind in ("funded", "scoped"), kind
    data = response.json()
    response_id, _, rest = route[len(s.RESPONSES) + 1 :].partition("/")
    if case.method == "GET" and rest == "":
        check_response(data, final=False)
        assert data["id"] == response_id, data
    elif case.method == "DELETE":
        assert data == {"id": response_id, "object": "response", "deleted": True}, data
    elif rest == "input_items":
        assert data["object"] == "list" and isinstance(data["data"], list), data
    else:
        assert (case.method, rest) == ("POST", "cancel"), (case.method, route)
        check_response(data, final=False)


def background_response(case: s.Case, route: str, response: httpx.Response) -> str | None:
    """The id of a background response the gateway answered queued (billed when it finishes)."""
    if route != s.RESPONSES or response.status_code != 200 or not response.headers["content-type"].startswith(JSON):
        return None
    data = response.json()
    return data["id"] if data.get("background") is True and data.get("status") in ("queued", "in_progress") else None


def check_row(response: httpx.Response, *, known: bool, pending: bool = False) -> None:
    """One finished row per request that presented a known key (with the status the client got);
    none for the others. A queued background response's row stays pending until it finishes."""
    request_id = response.headers["x-request-id"]
    rows = UsageRecord.objects.filter(request_id=request_id).values_list("billing_result", "status")
    if not known:
        assert list(rows) == []
        return
    deadline = time.monotonic() + 5  # written before the answer today; a later write may take a moment
    while True:
        found = list(rows.all())
        if (found and (pending or found[0][0] != "pending")) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(found) == 1, found
    billing_result, status = found[0]
    assert (billing_result == "pending") == pending, found
    assert status == response.status_code, found


# --- the fuzz --------------------------------------------------------------------------------------
# Case counts of the default run: 3,550 in all (≥ 2,000), about a minute and a half here.


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


def test_responses_bodies(fuzz):
    @bounded(400)
    @given(case=s.body_case(s.RESPONSES, s.RESPONSES_BODY))
    def run(case):
        fuzz.exchange(case)

    run()
    fuzz.reconcile()


def test_image_generation_bodies(fuzz):
    @bounded(150)
    @given(case=s.body_case(s.IMAGES, s.IMAGES_BODY))
    def run(case):
        fuzz.exchange(case)

    run()
    fuzz.reconcile()


def test_image_edit_multipart_bodies(fuzz):
    @bounded(200)
    @given(case=s.edit_case())
    def run(case):
        fuzz.exchange(case)

    run()
    fuzz.reconcile()


def test_stored_response_and_image_file_urls(fuzz):
    @bounded(200)
    @given(case=s.stored_case())
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


# --- bugs the fuzz found, fixed: their minimal examples, each checked like any fuzz case ------------


def test_a_stored_response_id_with_a_nul_is_not_found(fuzz):
    fuzz.send(s.Case("GET", s.RESPONSES + "/resp_1%00", content_type=None))


def test_a_previous_response_id_with_a_nul_is_refused(fuzz):
    body = {"model": "gpt-5", "input": "Hi", "previous_response_id": "resp_\x00"}
    fuzz.send(s.Case("POST", s.RESPONSES, json.dumps(body).encode()))


def test_a_previous_response_id_with_a_lone_surrogate_is_refused(fuzz):
    body = {"model": "gpt-5", "input": "Hi", "previous_response_id": "resp_\ud800"}
    fuzz.send(s.Case("POST", s.RESPONSES, json.dumps(body).encode()))


def test_an_edit_field_name_cannot_add_a_part_header_upstream(fuzz):
    # RFC 2231 lets a field name carry a quote and a CRLF; sent on as is, it ends the name and adds
    # a header of the client's choosing to the part the upstream reads.
    injected = b"name*=utf-8''user%22%3B%20filename%3D%22evil.png%22%0D%0AContent-Type%3A%20image%2Fpng"
    parts = [
        s.text_part("model", s.IMAGE_MODEL),
        s.text_part("prompt", "Make it blue"),
        s.file_part("image", s.PNG, "image/png"),
        s.Part(injected, b"not a file"),
    ]
    asked = len(fuzz.gateway.upstream.requests)
    answer = fuzz.send(s.Case("POST", s.EDITS, s.multipart(parts, "XyZ"), "multipart/form-data; boundary=XyZ"))
    # a field name OpenAI would not know is refused, and nothing reaches the upstream
    assert answer.status_code == 400 and answer.json()["error"]["message"].startswith("Unknown multipart field")
    assert len(fuzz.gateway.upstream.requests) == asked


def test_a_tool_type_that_is_a_list_is_refused(fuzz):
    body = {"model": "gpt-5", "input": "Hi", "tools": [{"type": ["function"], "name": "f"}]}
    fuzz.send(s.Case("POST", s.RESPONSES, json.dumps(body).encode()))


def test_a_lone_surrogate_in_a_tool_name_on_claude_does_not_fail_the_stream(fuzz):
    body = {"model": CLAUDE, "input": "Hi", "stream": True, "tools": [{"type": "function", "name": "f\ud800"}]}
    fuzz.send(s.Case("POST", s.RESPONSES, json.dumps(body).encode()))
