"""Requests that are not plain HTTP get a clean refusal, never a 500 (issue "hardening" #10)."""

from __future__ import annotations

import base64
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
