"""Requests that are not plain HTTP get a clean refusal, never a 500 (issue "hardening" #10), and what a
client sees and what its usage row says agree at the protocol's edges (#11, #12)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import threading
import time
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx
import pytest

from tests.gateway.support import wait_until
from usage.models import UsageRecord


def handshake(url: str, path: str) -> bytes:
    """A WebSocket opening handshake on a raw socket; the server's answer head."""
    parts = urlsplit(url)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    return answer


def test_a_websocket_handshake_is_refused_with_403_on_any_path(live_gateway, caplog):
    for path in ("/v1/chat/completions", "/admin/", "/"):
        answer = handshake(live_gateway.url, path)
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


def test_a_huge_request_head_is_refused_with_431_before_it_is_buffered(live_gateway):
    # given a header far beyond the bound (issue "hardening" #6: 64 MiB stalled everyone for seconds)
    parts = urlsplit(live_gateway.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {parts.netloc}\r\nX-Junk: ".encode())
        answer = b""
        try:
            for _ in range(256):  # up to 16 MiB; the gateway answers after the first 64 KiB
                sock.sendall(b"x" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it closed the connection: expected
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    # then 431 in the OpenAI format with a request id, and the connection closed
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"x-request-id: req_" in head
    assert json.loads(body)["error"]["code"] == "headers_too_large"


def test_ordinary_headers_pass(gateway):
    response = gateway.get("/v1/models", headers={"X-Big-But-Fine": "y" * 16_000})
    assert response.status_code == 200


def test_a_large_body_after_small_headers_is_not_mistaken_for_a_large_head(gateway):
    # the end of the headers and 200 kB of body arrive in the same reads
    content = "x" * 200_000
    response = gateway.post(
        "/v1/chat/completions", json={"model": "gpt-5", "messages": [{"role": "user", "content": content}]}
    )
    assert response.status_code == 200, response.text[:300]


def test_a_head_whose_end_straddles_two_reads_is_counted_right(gateway):
    # the blank line that ends the headers split between two sends, the body (200 kB) right after
    parts = urlsplit(gateway.url)
    body = json.dumps({"model": "gpt-5", "messages": [{"role": "user", "content": "y" * 200_000}]}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {gateway.secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head)
        time.sleep(0.05)  # (only makes the split likely; the test holds either way)
        sock.sendall(b"\r\n" + body)
        answer = b""
        with contextlib.suppress(ConnectionResetError):  # the server may close first, answer sent
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def counter():
    """The protocol's head counting alone, as a fresh connection starts it."""
    from openbili.http_protocol import HttpProtocol

    protocol = HttpProtocol.__new__(HttpProtocol)
    protocol._in_head, protocol._head_bytes, protocol._tail = True, 0, b""
    return protocol


def test_the_head_count_survives_any_split_of_the_reads():
    from openbili.http_protocol import MAX_HEADER_BYTES

    body = b"y" * (MAX_HEADER_BYTES * 2)
    request = b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    head_end = request.index(b"\r\n\r\n") + 4
    for cut in range(1, head_end + 4):
        protocol, seen = counter(), 0
        for piece in (request[:cut], request[cut:]):
            if protocol._in_head:  # as data_received does
                assert not protocol._head_too_large(piece), cut
            seen += len(piece)
            if seen >= head_end:
                protocol._in_head = False  # what the parser's on_headers_complete does
        assert protocol._head_bytes == head_end, cut
    # while a head that goes on and on is caught within one read of the bound
    protocol = counter()
    refused = [protocol._head_too_large(b"GET / HTTP/1.1\r\nX: " + b"z" * 16_000) for _ in range(10)]
    assert refused.index(True) == MAX_HEADER_BYTES // 16_000


@pytest.mark.parametrize(
    "request_head",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        b"GET /v1/models HTTP/1.1\r\nHost: h\r\nX-Bad\x01: yes\r\n\r\n",
        b"G\x00T /v1/models HTTP/1.1\r\nHost: h\r\n\r\n",
    ],
    ids=["two-content-lengths", "content-length-and-chunked", "bad-header-bytes", "bad-method"],
)
def test_requests_the_http_parser_refuses_get_a_json_400_with_a_request_id(live_gateway, request_head):
    parts = urlsplit(live_gateway.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request_head)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"content-type: application/json" in head and b"x-request-id: req_" in head
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_http" and error["request_id"].startswith("req_")


# Raw HTTP/1.1 exchanges: framing the parser refuses, upgrades we ignore, pipelines (issue "hardening"
# #11, #12). What the client reads and the account's usage rows must tell the same story.

CHAT = json.dumps({"model": "gpt-5", "messages": [{"role": "user", "content": "Hello from Openbili"}]}).encode()


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def request_id(self) -> str:
        return self.headers["x-request-id"]


class Connection:
    """One raw connection to the live gateway: send bytes, read whole responses (all the gateway's
    answers here carry a Content-Length)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> Response | None:
        """The next response, or None when the server closed the connection instead."""
        while True:
            end_of_head = self.buffer.find(b"\r\n\r\n")
            if end_of_head >= 0:
                status_line, *lines = self.buffer[:end_of_head].decode("latin-1").split("\r\n")
                headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
                end = end_of_head + 4 + int(headers.get("content-length", "0"))
                if len(self.buffer) >= end:
                    body, self.buffer = self.buffer[end_of_head + 4 : end], self.buffer[end:]
                    return Response(int(status_line.split()[1]), headers, body)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                assert not self.buffer, f"a partial response: {self.buffer[:300]!r}"
                return None
            self.buffer += data

    def responses(self) -> list[Response]:
        """Every response until the server closes the connection."""
        answers = []
        while (answer := self.response()) is not None:
            answers.append(answer)
        return answers

    def protocol(self, gateway):
        """The server's protocol object of this connection."""
        mine = self.sock.getsockname()
        connections = gateway.server.server.server_state.connections
        wait_until(lambda: any(p.client == mine for p in list(connections)), what="the server side of the socket")
        return next(p for p in list(connections) if p.client == mine)


def request(gateway, method: str, target: str, *headers: str, version: str = "1.1", host: bool = True) -> bytes:
    """A request head with the fixture's key (and Host unless told not to)."""
    lines = [f"{method} {target} HTTP/{version}", f"Authorization: Bearer {gateway.secret}", *headers]
    if host:
        lines.insert(1, f"Host: {urlsplit(gateway.url).netloc}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_refusal(answer: Response | None, status: int, code: str) -> str:
    """The protocol's own answer: the API's error format, a request id, the connection closed."""
    assert answer is not None
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json" and answer.headers["connection"] == "close"
    error = json.loads(answer.body)["error"]
    assert error["code"] == code and error["request_id"] == answer.request_id.strip()
    assert answer.request_id.startswith("req_")
    return answer.request_id


def rows_besides_a_probe(gateway) -> list[UsageRecord]:
    """The account's usage rows, after one more request on a new connection has its row: an app that
    was still running for an earlier request on this event loop has written its row by then."""
    probe = gateway.get("/v1/models")
    assert probe.status_code == 200
    gateway.row(probe.headers["x-request-id"])
    rows = UsageRecord.objects.filter(api_key__account=gateway.account)
    return list(rows.exclude(request_id=probe.headers["x-request-id"]).order_by("started_at"))


PROTOCOL_CODES = {"invalid_http", "headers_too_large", "unsupported_transfer_coding", "http_version_not_supported"}


def by_the_protocol(answer: Response) -> bool:
    """A refusal of openbili.http_protocol (its codes are its own), not an answer of the app."""
    if answer.status < 400:
        return False
    body = json.loads(answer.body)
    error = body["error"]
    return error.get("code") in PROTOCOL_CODES


def assert_rows_match(gateway, answers: list[Response]) -> None:
    """Exactly one row per answer the app gave, with the status the client read; none for the
    protocol's refusals (they never reached the gateway app, the key was never read)."""
    rows = rows_besides_a_probe(gateway)
    from_app = [answer for answer in answers if not by_the_protocol(answer)]
    assert [(row.request_id, row.status) for row in rows] == [(a.request_id, a.status) for a in from_app]
    assert not UsageRecord.objects.filter(billing_result="pending", api_key__account=gateway.account).exists()


H2C = ("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA")


@pytest.mark.parametrize("split", ["one-read", "body-in-a-later-read"])
def test_an_h2c_upgrade_is_ignored_and_the_request_served_with_its_body(gateway, split):
    # given what `curl --http2 http://…` sends: an h2c Upgrade on a POST with its body
    # (llhttp took the head for a protocol switch: it skipped the body, the app got none -> 400
    # invalid_json; a body arriving in a later read was then parsed as a request of its own)
    head = request(gateway, "POST", "/v1/chat/completions", *H2C, f"Content-Length: {len(CHAT)}")
    with Connection(gateway.url) as conn:
        if split == "one-read":
            conn.send(head + CHAT)
        else:
            conn.send(head)
            time.sleep(0.1)  # (only makes the second read likely; the test holds either way)
            conn.send(CHAT)
        chat = conn.response()
        # then it is answered as HTTP/1.1, and the connection goes on as HTTP/1.1
        conn.send(request(gateway, "GET", "/v1/models", "Connection: close"))
        answers = [chat, *conn.responses()]
    assert [answer.status for answer in answers if answer] == [200, 200], answers
    assert answers[0] and json.loads(answers[0].body)["object"] == "chat.completion"
    assert gateway.row(answers[0].request_id).billing_result == "billed"
    assert_rows_match(gateway, [a for a in answers if a])


def test_an_h2c_upgrade_with_a_chunked_body_is_served(gateway):
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT)
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "POST", "/v1/chat/completions", *H2C, "Transfer-Encoding: chunked") + chunked)
        answer = conn.response()
    assert answer is not None and answer.status == 200, answer
    assert gateway.row(answer.request_id).billing_result == "billed"


def test_a_connect_is_answered_and_nothing_after_it_is_read(gateway):
    # llhttp takes what follows a CONNECT head for a tunnel; it used to be parsed as more requests
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "CONNECT", "/v1/models"))
        connect = conn.response()
        with contextlib.suppress(OSError):
            conn.send(request(gateway, "GET", "/v1/models"))
        after = conn.responses()
    assert connect is not None and connect.status == 405 and connect.headers["connection"] == "close"
    assert after == []
    assert_rows_match(gateway, [connect])


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        (["Transfer-Encoding: gzip"], b"", 400, "invalid_http"),  # the row of issue #12
        (["Transfer-Encoding: identity"], b"", 400, "invalid_http"),
        (["Transfer-Encoding: gzip, chunked"], b"0\r\n\r\n", 501, "unsupported_transfer_coding"),
        (["Transfer-Encoding: chunked"], b"zz\r\n", 400, "invalid_http"),  # a broken chunk, same read
        ([], b"", 400, "invalid_http"),  # HTTP/1.1 without Host (RFC 9112 §3.2)
        (["Host: second.example"], b"", 400, "invalid_http"),
    ],
    ids=["te-gzip", "te-identity", "te-gzip-chunked", "broken-chunk", "no-host", "two-hosts"],
)
def test_a_request_refused_after_its_head_never_reaches_the_app(gateway, headers, body, status, code):
    # given a valid key: uvicorn had handed the head to the app already, which wrote a 200 row
    # while the client read a 400
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "GET", "/v1/models", *headers, host=bool(headers)) + body)
        answers = conn.responses()
    assert len(answers) == 1, answers
    assert_refusal(answers[0], status, code)
    assert_rows_match(gateway, answers)  # no row: the request never reached the gateway app


def test_a_refusal_on_the_messages_surface_is_in_anthropic_format_with_both_ids(gateway):
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "POST", "/v1/messages", "Transfer-Encoding: gzip"))
        answers = conn.responses()
    (answer,) = answers
    body = json.loads(answer.body)
    assert answer.status == 400 and body["type"] == "error"
    assert (body["error"]["type"], body["error"]["code"]) == ("invalid_request_error", "invalid_http")
    assert body["request_id"] == answer.headers["request-id"] == answer.headers["x-request-id"]
    assert body["trace_id"] == answer.headers["x-trace-id"] and body["trace_id"].startswith("trace_")


def test_a_refused_post_never_reaches_the_app(gateway):
    chunk = b"%x\r\n%s\r\n" % (10, CHAT[:10])
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "POST", "/v1/chat/completions", "Transfer-Encoding: chunked") + chunk + b"zz\r\n")
        answers = conn.responses()
    assert len(answers) == 1
    assert_refusal(answers[0], 400, "invalid_http")
    assert_rows_match(gateway, answers)
    assert not gateway.upstream.requests


def test_a_body_refused_while_the_app_waits_for_it(gateway):
    # given an app already reading the body when the parser refuses the rest of it
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "POST", "/v1/chat/completions", "Transfer-Encoding: chunked"))
        conn.send(b"%x\r\n%s\r\n" % (10, CHAT[:10]))
        protocol = conn.protocol(gateway)
        wait_until(lambda: protocol._guard is not None and protocol._guard.started, what="the app to start")
        conn.send(b"zz\r\n")
        answers = conn.responses()
    # then the client gets the refusal, and the app (a client gone, to it) its one row: not billed
    assert len(answers) == 1
    assert_refusal(answers[0], 400, "invalid_http")
    (row,) = rows_besides_a_probe(gateway)
    assert (row.status, row.billing_result, row.error_code) == (499, "not_billed", "client_disconnected")
    assert not gateway.upstream.requests


def test_an_app_answering_without_the_body_keeps_its_answer(gateway, monkeypatch):
    # given GET /v1/models with a chunked body, its app running (held) when the parser refuses a chunk
    from usage.gateway.endpoints import models

    entered, release, original = threading.Event(), threading.Event(), models.handle

    async def held(*args, **kwargs):
        entered.set()
        await asyncio.to_thread(release.wait, 20)
        await original(*args, **kwargs)

    monkeypatch.setattr(models, "handle", held)
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "GET", "/v1/models", "Transfer-Encoding: chunked"))
        wait_until(entered.is_set, what="the app to start")
        protocol = conn.protocol(gateway)
        conn.send(b"zz\r\n")
        wait_until(
            lambda: getattr(protocol, "_stopped", False) or protocol.transport.is_closing(), what="the broken chunk"
        )
        release.set()
        answers = conn.responses()
    # then the client reads the app's answer (not a 400 the row does not know of), then the close
    assert [answer.status for answer in answers] == [200], answers
    assert answers[0].headers["connection"] == "close"
    assert_rows_match(gateway, answers)


def test_a_body_refused_after_its_answer_closes_the_connection_quietly(gateway):
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "GET", "/v1/models", "Transfer-Encoding: chunked"))
        models = conn.response()  # the app answers without reading the body
        conn.send(b"zz\r\n")
        after = conn.responses()
    assert models is not None and models.status == 200
    assert after == []  # no second answer to a request the client did not make
    assert_rows_match(gateway, [models])


@pytest.mark.parametrize(
    ("tail", "statuses"),
    [
        (b"GARBAGE\r\n\r\n", [200, 400]),
        (b"GET /v1/models HTTP/1.1\r\nHost: h\r\nX-Bad\x01: yes\r\n\r\n", [200, 400]),
        (b"GET /v1/models HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", [200, 400]),
        (b"GET /v1/models HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", [200, 400]),
    ],
    ids=["bad-request-line", "bad-header", "te-gzip", "queued-then-broken-chunk"],
)
def test_a_malformed_pipelined_request_is_refused_after_the_answers_before_it(gateway, tail, statuses):
    # given a good request and a malformed one in one read (uvicorn wrote its 400 at once: the client
    # read it as the answer to the first request, whose row said 200)
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "GET", "/v1/models") + tail)
        answers = conn.responses()
    assert [answer.status for answer in answers] == statuses, answers
    assert_refusal(answers[-1], 400, "invalid_http")
    assert_rows_match(gateway, answers)


def test_two_good_pipelined_requests_then_a_bad_one(gateway):
    chat = request(gateway, "POST", "/v1/chat/completions", f"Content-Length: {len(CHAT)}") + CHAT
    with Connection(gateway.url) as conn:
        conn.send(chat + request(gateway, "GET", "/v1/models") + b"BAD\x01 / HTTP/1.1\r\n\r\n")
        answers = conn.responses()
    assert [answer.status for answer in answers] == [200, 200, 400], answers
    assert_rows_match(gateway, answers)


def test_expect_100_continue_gets_continue_then_the_answer(gateway):
    with Connection(gateway.url) as conn:
        conn.send(
            request(gateway, "POST", "/v1/chat/completions", "Expect: 100-continue", f"Content-Length: {len(CHAT)}")
        )
        interim = conn.response()
        conn.send(CHAT)
        answer = conn.response()
    assert interim is not None and interim.status == 100
    assert answer is not None and answer.status == 200
    assert gateway.row(answer.request_id).billing_result == "billed"
    assert_rows_match(gateway, [answer])


def test_http_1_0_without_host_is_served_and_closed(gateway):
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "GET", "/v1/models", version="1.0", host=False))
        answers = conn.responses()
    assert [answer.status for answer in answers] == [200]
    assert answers[0].headers["connection"] == "close"
    assert_rows_match(gateway, answers)


def test_an_absolute_form_target_is_served_by_its_path(gateway):
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "GET", "http://elsewhere.example/v1/models?x=1", "Connection: close"))
        answers = conn.responses()
    assert [answer.status for answer in answers] == [200]
    assert gateway.row(answers[0].request_id).endpoint == "/v1/models"
    assert_rows_match(gateway, answers)


@pytest.mark.parametrize(
    ("target", "status", "code"),
    [
        ("/v1/models/" + "m" * 60_000, 404, "model_not_found"),
        ("/v1/" + "m" * 60_000, 404, "unknown_url"),
        ("/v1/models?" + "q" * 60_000, 200, None),
    ],
    ids=["model-id", "unknown-url", "query"],
)
def test_a_huge_url_under_the_head_bound_is_answered_with_its_row(gateway, target, status, code):
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "GET", target, "Connection: close"))
        answers = conn.responses()
    assert [answer.status for answer in answers] == [status]
    if code:
        assert json.loads(answers[0].body)["error"]["code"] == code
    assert_rows_match(gateway, answers)


@pytest.mark.parametrize("value", ["-1", "1e3", "+5", "99999999999999999999999", "0x10"])
def test_an_invalid_content_length_with_a_known_key_is_refused_with_no_row_and_a_log_line(gateway, caplog, value):
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "POST", "/v1/chat/completions", f"Content-Length: {value}") + CHAT)
        answers = conn.responses()
    assert len(answers) == 1
    request_id = assert_refusal(answers[0], 400, "invalid_http")
    assert_rows_match(gateway, answers)  # refused before the key was read: no row
    assert any(request_id in record.getMessage() for record in caplog.records), "a log line with the request id"


@pytest.mark.parametrize("version", ["2.0", "0.9"])
def test_an_http_version_other_than_1_x_is_refused_with_505(gateway, version):
    # llhttp accepts `HTTP/2.0` in a request line; uvicorn served it as HTTP/1 and told the app 2.0
    with Connection(gateway.url) as conn:
        conn.send(request(gateway, "GET", "/v1/models", version=version))
        answers = conn.responses()
    assert len(answers) == 1
    assert_refusal(answers[0], 505, "http_version_not_supported")
    assert_rows_match(gateway, answers)


def test_heads_llhttp_refuses_get_the_json_400_too(gateway):
    # any head llhttp refuses, with or without a key: the API's format
    for raw in (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET /v1/mod\xffels HTTP/1.1\r\nHost: h\r\n\r\n"):
        with Connection(gateway.url) as conn:
            conn.send(raw)
            answers = conn.responses()
        assert len(answers) == 1
        assert_refusal(answers[0], 400, "invalid_http")
    assert httpx.get(gateway.url + "/v1/models").status_code == 401  # (the server still serves)
