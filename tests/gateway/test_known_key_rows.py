"""Exactly one usage row per request that presented a known key (CONTRACT §3), also for requests
refused before their body is read (issue "hardening" #7: a wrong method, an unknown URL, a client
gone before its body arrived)."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
import pytest

from tests.gateway.support import assert_error_body, assert_ids, raw_exchange, rejected, wait_until
from usage.models import UsageRecord


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
        ("PUT", "/v1/messages", 405, "method_not_allowed"),
        ("GET", "/v1/messages/count_tokens", 405, "method_not_allowed"),
        ("DELETE", "/v1/models", 405, "method_not_allowed"),
        ("GET", "/v1/no-such-thing", 404, "unknown_url"),
    ],
)
def test_a_request_refused_before_its_body_with_a_known_key_has_its_row(gateway, method, path, status, code):
    response = httpx.request(method, gateway.url + path, headers={"Authorization": f"Bearer {gateway.secret}"})
    assert response.status_code == status
    request_id, _ = assert_ids(response.headers)
    if not path.startswith("/v1/messages"):
        assert_error_body(response, status=status, code=code)
    row = rejected(gateway, request_id, status, "invalid_request", code)
    assert row.api_key_id is not None and row.endpoint == path


def test_the_same_refusal_without_a_key_has_no_row(gateway):
    response = httpx.get(gateway.url + "/v1/chat/completions")
    assert response.status_code == 405
    request_id, _ = assert_ids(response.headers)
    assert not UsageRecord.objects.filter(request_id=request_id).exists()


def test_a_client_gone_before_its_body_arrived_has_its_row(gateway):
    # given a client that announces 100 bytes, sends 8 and closes
    parts = urlsplit(gateway.url)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {gateway.secret}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    before = UsageRecord.objects.filter(api_key__account=gateway.account).count()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head + b'{"model"')
    # then its row says so: not billed, the client's disconnect time, nothing sent
    rows = UsageRecord.objects.filter(api_key__account=gateway.account)
    wait_until(lambda: rows.count() == before + 1, what="the abandoned request's row")
    row = rows.order_by("-started_at").first()
    assert row is not None
    assert (row.billing_result, row.status, row.error_class, row.error_code) == (
        "not_billed",
        499,
        "stream_interrupted",
        "client_disconnected",
    )
    assert row.client_disconnected_at is not None and row.cost_usd == 0
    assert not gateway.upstream.requests


def test_a_client_that_stops_sending_its_body_gets_408_and_its_row(gateway, monkeypatch):
    import usage.gateway.context

    monkeypatch.setattr(usage.gateway.context, "BODY_IDLE_SECONDS", 0.5)
    parts = urlsplit(gateway.url)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\nHost: {parts.netloc}\nAuthorization: Bearer {gateway.secret}\n"
        "Content-Type: application/json\nContent-Length: 100\n\n"
    )
    # ... and only 8 bytes of its body, the connection left open
    status, answer = raw_exchange(gateway.url, head, b'{"model"')
    # then the gateway answered by itself: 408, in the endpoint's format, with the request's id
    assert status.startswith(b"HTTP/1.1 408"), status
    error = answer["error"]
    assert error["code"] == "request_timeout"
    row = gateway.row(error["request_id"])
    assert (row.billing_result, row.status, row.error_code) == ("not_billed", 408, "request_timeout")
