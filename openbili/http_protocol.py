"""uvicorn's httptools protocol with a bound on the request head.

httptools accepts a request line and headers of any size, buffering them in the process while the
event loop parses: one 64 MiB header (no key needed) stalled every other request for seconds
(issue "hardening" #6). Bytes of a request's head beyond OPENBILI_MAX_HEADER_BYTES are refused
with 431 at once and the connection closed, before they are parsed or buffered further. Requests
the parser refuses get the API's JSON error with a request id too, not a bare text/plain 400.

Run the server with it: `uvicorn openbili.asgi:application --http openbili.http_protocol:HttpProtocol`
(scripts/run, the tests' live server and the bench do).
"""

from __future__ import annotations

import json
import os
import uuid

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = int(os.environ.get("OPENBILI_MAX_HEADER_BYTES", str(64 * 1024)))


def refusal(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete HTTP response in the OpenAI error format, with a request id of its own."""
    request_id = "req_" + uuid.uuid4().hex
    error = {"message": message, "type": "invalid_request_error", "code": code, "param": None}
    body = json.dumps({"error": error | {"request_id": request_id, "trace_id": None}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"x-request-id: {request_id}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class HttpProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""  # the head's last bytes so far: its end may straddle two reads

    def on_message_complete(self) -> None:
        # The next bytes on this connection start the next request's head. (Not on_message_begin:
        # the parser calls it while it reads the very bytes already counted.)
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._in_head and self._head_too_large(data):
            message = f"The request line and headers exceed {MAX_HEADER_BYTES} bytes."
            self.transport.write(refusal(431, "Request Header Fields Too Large", "headers_too_large", message))
            self.transport.close()
            return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser refuses (duplicate Content-Length, bad bytes, a bad method):
        the API's error format with a request id, not uvicorn's bare text/plain."""
        self.transport.write(refusal(400, "Bad Request", "invalid_http", f"{msg} The request was not understood."))
        self.transport.close()

    def _head_too_large(self, data: bytes) -> bool:
        """Counts this read's head bytes: a read may carry the end of the headers and the body, and
        the blank line that ends them may straddle two reads."""
        window = self._tail + data
        ends = [i + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (i := window.find(mark)) >= 0]
        self._head_bytes += (min(ends) - len(self._tail)) if ends else len(data)
        self._tail = window[-3:]
        return self._head_bytes > MAX_HEADER_BYTES
