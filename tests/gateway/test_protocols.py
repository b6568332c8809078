"""Requests that are not plain HTTP get a clean refusal, never a 500 (issue "hardening" #10)."""

from __future__ import annotations

import base64
import json
import os
import socket
from urllib.parse import urlsplit


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
