"""A request's parse cost is bounded in memory and time (issue "hardening" #2): one 32 MiB body
of `{},{},…` cost ~0.9 GB and seconds of event loop, from any key, even one of an account with no
credit, because the body was parsed before the balance was looked at."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from urllib.parse import urlsplit

import pytest

import usage.gateway.body
from billing import money, services
from tests.factories import AccountFactory
from tests.gateway.support import (
    MSG,
    assert_error_body,
    assert_ids,
    assert_outcome,
    cost_of,
    raw_exchange,
    rejected,
)
from usage.gateway.context import json_values_over
from usage.gateway.endpoints import chat
from usage.models import UsageRecord

CHAT = "/v1/chat/completions"
MIB = 1024 * 1024
HEAD = b'{"model":"gpt-5","max_tokens":10,"messages":['


def countless(size: int, item: bytes = b"{},") -> bytes:
    """A `size`-byte body whose messages are millions of tiny values."""
    count = (size - len(HEAD) - len(item) - 1) // len(item)
    return HEAD + item * count + item[:-1] + b"]}"


def rss() -> int:
    """This process's resident memory (the live gateway runs in it)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """The highest resident memory seen while the block runs, above what it was before."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    @property
    def grown(self) -> int:
        return self.peak - self.start


def poor_key(credit: Decimal = Decimal(0)) -> tuple[int, str]:
    account = AccountFactory(credit=credit)
    _, secret = services.key_create(account=account, name="poor")
    return account.pk, secret


# --- the number of values --------------------------------------------------------------------------


def test_a_body_of_millions_of_values_is_refused_before_they_are_built(gateway):
    # given 32 MiB of `{"model":"gpt-5","messages":[{},{},…]}`: 11 million dicts, from a funded key
    body = countless(32 * MIB)
    # when it is sent
    with PeakRss() as memory:
        started = time.monotonic()
        response = gateway.post(CHAT, content=body, headers={"Content-Type": "application/json"})
        elapsed = time.monotonic() - started
    # then a 400 in OpenAI's format with the request's id, its one not_billed row, no hold
    request_id = assert_error_body(response, status=400, code="invalid_json")
    assert "more than 200000 JSON values" in response.json()["error"]["message"]
    row = rejected(gateway, request_id, 400, "invalid_request", "invalid_json")
    assert row.hold_id is None
    assert not UsageRecord.objects.filter(billing_result="pending").exists()
    assert gateway.upstream.requests == []
    # and it cost about the body's own bytes (parsing it took ~0.9 GB), in a moment (it took seconds)
    assert memory.grown < 400 * MIB, memory.grown
    assert elapsed < 10, elapsed


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_the_messages_endpoints_refuse_it_in_their_own_format(claude, path):
    response = claude.post(path, content=countless(2 * MIB), headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    request_id, trace_id = assert_ids(response.headers)
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert (error["request_id"], error["trace_id"]) == (request_id, trace_id)
    rejected(claude, request_id, 400, "invalid_request", "invalid_json")
    assert claude.upstream.requests == []


def test_brackets_and_commas_inside_strings_are_not_values(gateway):
    # given a valid 3 MiB request whose text holds 600,000 commas and brackets, escaped quotes
    # and backslashes among them: only its few values are counted
    text = '[{"a", "b"}], \\", \\\\' * 120_000
    body = json.dumps({"model": "gpt-5", "max_tokens": 10, "messages": [{"role": "user", "content": text}]})
    assert len(body) > 3 * MIB
    gateway.upstream.script(tokens={"prompt": 10, "completion": 8})
    response = gateway.post(CHAT, content=body.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text[:300]
    assert gateway.upstream.requests[-1]["json"]["messages"][0]["content"] == text
    request_id, _ = assert_ids(response.headers)
    assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=10, output_tokens=8)
    )


@pytest.mark.parametrize(
    ("body", "limit", "over"),
    [
        (b'{"a":[1,2,3]}', 4, True),  # the root, a member, three items: 5 values
        (b'{"a":[1,2,3]}', 5, False),
        (b'{"a":"[1,2,3,{,{,["}', 2, False),  # marks inside a string are text
        (b'{"a":"\\"[1,2,3]","b":1}', 3, False),  # an escaped quote does not end the string
        (b'{"a":"\\\\","b":[1,2]}', 4, True),  # an escaped backslash does not escape the quote
        ('{"a":[1,2,3]}'.encode("utf-16"), 4, True),  # JSON in UTF-16 is counted as characters
        ('{"a":"\u222c\u222c[1,2,3]"}'.encode("utf-16-le"), 2, False),  # ∬ is bytes 2C 22: not `,"`
    ],
)
def test_values_are_counted_as_the_parser_reads_them(body, limit, over):
    assert json_values_over(body, limit) is over


# --- a key that cannot pay ------------------------------------------------------------------------


def test_an_account_that_cannot_pay_is_refused_before_its_large_body_is_even_sent(gateway):
    # given a key of an account with no credit, and a request announcing 8 MiB
    account_id, secret = poor_key()
    parts = urlsplit(gateway.url)
    head = (
        f"POST {CHAT} HTTP/1.1\nHost: {parts.netloc}\nAuthorization: Bearer {secret}\n"
        f"Content-Type: application/json\nContent-Length: {8 * MIB}\n\n"
    )
    # when only its head is sent: the gateway answers without waiting for the body
    status, error = raw_exchange(gateway.url, head)
    # then 402 in OpenAI's format, its one not_billed row, nothing held or charged
    assert status.startswith(b"HTTP/1.1 402"), status
    assert error["error"]["code"] == "insufficient_balance"
    row = rejected(
        gateway,
        error["error"]["request_id"],
        402,
        "quota_or_rate_limit",
        "insufficient_balance",
        account_id=account_id,
        credit=Decimal(0),
    )
    assert row.hold_id is None


def test_an_account_that_cannot_pay_is_refused_before_its_chunked_body_is_parsed(gateway):
    # given a $0 account's 1 MiB body, sent chunked (no Content-Length), that is not even JSON
    account_id, secret = poor_key()
    response = gateway.post(
        CHAT,
        key=secret,
        content=iter([b"{not json at all" + b"x" * (512 * 1024), b"y" * (512 * 1024)]),
        headers={"Content-Type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    # then 402, not the parser's 400: the balance was looked at first
    request_id = assert_error_body(response, status=402, code="insufficient_balance")
    rejected(gateway, request_id, 402, "quota_or_rate_limit", "insufficient_balance", account_id=account_id, credit=0)


def test_the_smallest_request_is_the_cheapest_input_price_times_the_body_tokens(gateway):
    # given a 100,000-byte request: 25,000 tokens, which cost at least $0.03125 at gpt-5's $1.25/M
    filler = 100_000 - len(json.dumps({"model": "gpt-5", "messages": [{"role": "user", "content": ""}]}))
    body = json.dumps({"model": "gpt-5", "messages": [{"role": "user", "content": "x" * filler}]}).encode()
    assert len(body) == 100_000
    least = money.token_cost(25_000, Decimal("1.25"))
    assert least == Decimal("0.03125")
    # when an account holding a trillionth of a dollar less sends it: refused before it is parsed
    short_id, short = poor_key(least - Decimal("1e-12"))
    response = gateway.post(CHAT, key=short, content=body, headers={"Content-Type": "application/json"})
    request_id = assert_error_body(response, status=402, code="insufficient_balance")
    assert response.json()["error"]["message"].startswith("This request's input costs at least $0.03125,")
    rejected(
        gateway,
        request_id,
        402,
        "quota_or_rate_limit",
        "insufficient_balance",
        account_id=short_id,
        credit=least - Decimal("1e-12"),
    )
    # and an account holding exactly that gets past it, to the reserve of the request's maximum cost
    enough_id, enough = poor_key(least)
    response = gateway.post(CHAT, key=enough, content=body, headers={"Content-Type": "application/json"})
    request_id = assert_error_body(response, status=402, code="insufficient_balance")
    assert response.json()["error"]["message"].startswith("This request may cost up to $")
    rejected(
        gateway, request_id, 402, "quota_or_rate_limit", "insufficient_balance", account_id=enough_id, credit=least
    )
    assert gateway.upstream.requests == []


def test_an_ordinary_request_does_not_look_the_balance_up(gateway, monkeypatch):
    looked_up = []
    execute = usage.gateway.body.execute

    async def counting(state, statement, params):
        looked_up.append(statement == usage.gateway.body.AVAILABLE_CREDIT)
        return await execute(state, statement, params)

    monkeypatch.setattr(usage.gateway.body, "execute", counting)
    gateway.upstream.script(tokens={"prompt": 10, "completion": 8}, times=2)
    # a small request: no query before the reserve
    assert gateway.post(CHAT, json={"model": "gpt-5", "messages": MSG}).status_code == 200
    assert looked_up == []
    # a large one: one point query
    big = [{"role": "user", "content": "word " * 20_000}]
    assert gateway.post(CHAT, json={"model": "gpt-5", "messages": big}).status_code == 200
    assert looked_up == [True]


# --- the body limit --------------------------------------------------------------------------------


def test_each_endpoint_has_its_body_limit(claude, monkeypatch):
    # given chat completions limited to 10,000 bytes, the Messages endpoint left at its default
    monkeypatch.setattr(chat.ENDPOINT, "max_body_bytes", 10_000)
    messages = [{"role": "user", "content": "word " * 4_000}]
    # then a 20,000-byte chat request is 413 with its row, before the upstream is called
    response = claude.post(CHAT, json={"model": "gpt-5", "messages": messages})
    request_id = assert_error_body(response, status=413, code="request_too_large")
    assert "10000 bytes" in response.json()["error"]["message"]
    rejected(claude, request_id, 413, "invalid_request", "request_too_large")
    assert claude.upstream.requests == []
    # and the same on /v1/messages goes through
    claude.upstream.script(tokens={"prompt": 10, "completion": 8})
    response = claude.post("/v1/messages", json={"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": messages})
    assert response.status_code == 200, response.text


def test_a_body_announced_over_the_limit_is_413_before_it_is_sent(gateway):
    parts = urlsplit(gateway.url)
    head = (
        f"POST {CHAT} HTTP/1.1\nHost: {parts.netloc}\nAuthorization: Bearer {gateway.secret}\n"
        f"Content-Type: application/json\nContent-Length: {32 * MIB + 1}\n\n"
    )
    status, error = raw_exchange(gateway.url, head)
    assert status.startswith(b"HTTP/1.1 413"), status
    assert error["error"]["code"] == "request_too_large"
    rejected(gateway, error["error"]["request_id"], 413, "invalid_request", "request_too_large")


# --- large, valid bodies ---------------------------------------------------------------------------


def test_a_large_valid_body_still_goes_through(gateway):
    # given a 5 MiB image, as a data URL
    image = "data:image/png;base64," + base64.b64encode(os.urandom(int(3.75 * MIB))).decode()
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": image}}]
    gateway.upstream.script(tokens={"prompt": 800, "completion": 8})
    response = gateway.post(CHAT, json={"model": "gpt-5", "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200, response.text[:300]
    assert gateway.upstream.requests[-1]["json"]["messages"][0]["content"][1]["image_url"]["url"] == image
    request_id, _ = assert_ids(response.headers)
    assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=800, output_tokens=8)
    )


def test_a_small_request_is_served_promptly_while_large_bodies_are_handled(gateway):
    # given four 32 MiB bodies of countless arrays (each took seconds of event loop to parse)
    body = countless(32 * MIB, b"[],")
    gateway.upstream.script(tokens={"prompt": 10, "completion": 8}, times=0)
    with ThreadPoolExecutor(4) as pool:
        large = [
            pool.submit(gateway.post, CHAT, content=body, headers={"Content-Type": "application/json"})
            for _ in range(4)
        ]
        # when small requests are sent meanwhile, one after another
        latencies = []
        while not all(future.done() for future in large) or not latencies:
            started = time.monotonic()
            response = gateway.post(CHAT, json={"model": "gpt-5", "messages": MSG, "max_tokens": 10})
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200, response.text
    # then each was answered promptly (parsing just one large body blocked them for seconds)
    assert max(latencies) < 3.0, latencies
    for future in large:
        assert future.result().status_code == 400
