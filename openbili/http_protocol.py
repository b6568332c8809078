"""uvicorn's httptools protocol, with the HTTP/1.1 framing the gateway relies on made strict and consistent.

- A bound on the request head. httptools accepts a request line and headers of any size, buffering
  them while the event loop parses: one 64 MiB header (no key needed) stalled every other request
  for seconds (issue "hardening" #6). Bytes of a head beyond OPENBILI_MAX_HEADER_BYTES are refused
  with 431, before they are parsed or buffered further.
- Requests the parser refuses get the API's JSON error with a request id, not a bare text/plain 400
  (#12), and the refusal and the app never both answer one request (below).
- An Upgrade we do not speak (h2c from `curl --http2`) is ignored, as RFC 9110 §7.8 allows: the
  request is served as HTTP/1.1, body included (#11). llhttp reads any Upgrade + Connection: upgrade
  head as the end of HTTP on the connection: it skips the body, completes the message and stops.
- Transfer-Encoding other than a single final `chunked`, an HTTP version other than 1.0/1.1, and a
  missing or repeated Host (RFC 9112 §3.2, §6.1, §6.3) are refused at the end of the head, before
  the app is given the request.

Who answers a refused request, and whether it has a usage row: the parser may refuse a request after
uvicorn has already handed its head to the app (a broken chunked body; llhttp's own Transfer-Encoding
check runs just after on_headers_complete). uvicorn then wrote its 400 while the app ran on and wrote
a 200 row (`GET /v1/models` with `Transfer-Encoding: gzip`). Here:
- an app that has not started yet never starts: the client gets the refusal, there is no row, even
  for a known key — the key was never read, the request never reached the gateway; the log line
  carries the refusal's request id;
- an app already running owns its answer: if it answers without the body, that answer goes out and
  the connection closes after it; if it asks for the body, it gets http.disconnect (for a known key,
  its one row: 499, not billed) and the client gets the refusal;
- a refusal of a pipelined request waits until the requests before it are answered.

Run the server with it: `uvicorn openbili.asgi:application --http openbili.http_protocol:HttpProtocol`
(scripts/run, the tests' live server and the bench do). It overrides some of uvicorn's internals
(data_received, _start_asgi_task, the parser callbacks); tests/gateway/test_protocols.py pins them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import uuid
from dataclasses import dataclass, field, replace

import httptools
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGIReceiveEvent, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from openbili.core.errors import InvalidRequest
from usage.gateway.errors import anthropic_error_body, openai_error_body

MAX_HEADER_BYTES = int(os.environ.get("OPENBILI_MAX_HEADER_BYTES", str(64 * 1024)))

log = logging.getLogger("openbili.http")


def refusal(
    status: int, reason: str, code: str, message: str, *, request_id: str | None = None, path: bytes = b""
) -> bytes:
    """A complete HTTP response in the error format of the surface the path names (Anthropic's
    under /v1/messages, else OpenAI's), with ids of its own."""
    request_id = request_id or "req_" + uuid.uuid4().hex
    trace_id = "trace_" + secrets.token_hex(16)
    error = InvalidRequest(message, code=code, status=status)
    ids = f"x-request-id: {request_id}\r\nx-trace-id: {trace_id}\r\n"
    if path.startswith(b"/v1/messages"):
        body = json.dumps(anthropic_error_body(error, request_id=request_id, trace_id=trace_id)).encode()
        ids += f"request-id: {request_id}\r\n"
    else:
        body = json.dumps(openai_error_body(error, request_id=request_id, trace_id=trace_id)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"{ids}connection: close\r\n\r\n"
    )
    return head.encode() + body


@dataclass(frozen=True)
class Refusal:
    """The protocol's own answer to a request it will not pass on; the connection closes after it."""

    status: int
    reason: str
    code: str
    message: str
    request_id: str = field(default_factory=lambda: "req_" + uuid.uuid4().hex)
    path: bytes = b""  # the request's target, when the parser got that far: it picks the error format

    def encode(self) -> bytes:
        return refusal(self.status, self.reason, self.code, self.message, request_id=self.request_id, path=self.path)


def bad_request(message: str) -> Refusal:
    return Refusal(400, "Bad Request", "invalid_http", message)


class _HeadRefused(Exception):
    """Raised in on_headers_complete to stop the parser; data_received answers with the refusal."""


class HttpProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""  # the head's last bytes so far: its end may straddle two reads
        self._head_refusal: Refusal | None = None  # what on_headers_complete found wrong with a head
        self._declined: tuple[bytes, str] | None = None  # (method, version) of a head whose Upgrade we ignore
        self._parsing: RequestResponseCycle | None = None  # the request whose body the parser is reading
        self._unanswered: list[RequestResponseCycle] = []  # requests handed to the app, in order
        self._guard: _Guard | None = None  # the app of the request started last
        self._stopped = False  # nothing more is read on this connection
        self._last_word: Refusal | None = None  # written once the requests before it are answered

    # Parser callbacks

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_refusal = self._refusal_of_head()
        if self._head_refusal is not None:
            raise _HeadRefused  # the parser stops here: the app is never given this request
        method = self.parser.get_method()
        if self.parser.should_upgrade() and not self._should_upgrade() and method != b"CONNECT":
            # Not a WebSocket handshake: ignore the Upgrade (RFC 9110 §7.8). llhttp will skip this
            # head's body and stop; data_received parses the head again without it (_reread).
            self._declined = (method, self.parser.get_http_version())
            return
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # (a WebSocket handshake gets no cycle)
            self._parsing = self.cycle
            self._unanswered.append(self.cycle)

    def on_message_complete(self) -> None:
        if self._declined is not None:
            return  # the end of a body llhttp skipped: the message is parsed again, with its body
        # The next bytes on this connection start the next request's head. (Not on_message_begin:
        # the parser calls it while it reads the very bytes already counted.)
        super().on_message_complete()
        self._parsing = None
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""

    def _refusal_of_head(self) -> Refusal | None:
        """RFC 9112's rules for a request head that llhttp lets through, or checks only after the
        app has been given the request."""
        version = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):
            message = f"HTTP/{version} is not supported here; send HTTP/1.1."
            return Refusal(505, "HTTP Version Not Supported", "http_version_not_supported", message)
        hosts = sum(name == b"host" for name, _ in self.headers)
        if hosts > 1 or (version == "1.1" and hosts == 0):
            return bad_request("An HTTP/1.1 request needs a Host header, and no request may have two.")
        codings = [
            coding.strip().lower()
            for name, value in self.headers
            if name == b"transfer-encoding"
            for coding in value.split(b",")
        ]
        if codings and codings[-1] != b"chunked":
            # RFC 9112 §6.3: the length of the body cannot be determined; MUST answer 400 and close.
            return bad_request("The body's length cannot be determined: chunked must be the last transfer coding.")
        if codings and codings != [b"chunked"]:
            # llhttp would strip the chunked framing and hand the app the body still gzip'd (§6.1: 501).
            names = ", ".join(sorted({coding.decode("latin-1") for coding in codings[:-1]}))
            message = f"Transfer coding {names} is not supported: send the body with chunked or Content-Length."
            return Refusal(501, "Not Implemented", "unsupported_transfer_coding", message)
        return None

    # Reading

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return  # a refusal or a CONNECT ended HTTP on this connection: what follows is not read
        if self._in_head and self._head_too_large(data):
            self._refuse(Refusal(431, "Request Header Fields Too Large", "headers_too_large", self._too_large()))
            return
        self._unset_keepalive_if_required()
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """uvicorn's data_received, with upgrades we do not speak declined and every refusal through
        _refuse (uvicorn drops the bytes after any upgrade head and writes its 400 at once)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
            if self._declined is not None:
                self._reread(rest)
            elif self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                # CONNECT: llhttp takes what follows its head for a tunnel. The app answers the head
                # (405); nothing after it is HTTP, so nothing after it is read.
                self._stopped = True
                if self.cycle is not None:
                    self.cycle.keep_alive = False
        except httptools.HttpParserError as error:
            self._refuse(self._head_refusal or self._refusal_of(error))

    def _reread(self, rest: bytes) -> None:
        """Parse a head whose Upgrade we ignore again, without Upgrade (and its Connection token), with
        a new parser, followed by the bytes llhttp left unread: the body is framed as HTTP/1.1."""
        assert self._declined is not None
        (method, version), self._declined = self._declined, None
        lines = [b"%s %s HTTP/%s" % (method, self.url, version.encode())]
        for name, value in self.headers:  # as parsed (names lowercased): llhttp accepted them once
            if name == b"connection":
                tokens = [token.strip() for token in value.split(b",")]
                value = b", ".join(token for token in tokens if token and token.lower() != b"upgrade")
                if not value:
                    continue
            if name != b"upgrade":
                lines.append(name + b": " + value)
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn sets it
        self._feed(b"\r\n".join(lines) + b"\r\n\r\n" + rest)

    def _refusal_of(self, error: httptools.HttpParserError) -> Refusal:
        if isinstance(error, httptools.HttpParserCallbackError):  # raised in a callback, ours or uvicorn's
            log.warning("HTTP parser callback failed: %r", error.__context__)
            return bad_request("The request was not understood.")
        return bad_request(f"The request was not understood: {error}.")

    def _too_large(self) -> str:
        return f"The request line and headers exceed {MAX_HEADER_BYTES} bytes."

    # Refusing

    def _refuse(self, refusal: Refusal) -> None:
        """The request being read is refused; nothing more is read on this connection."""
        url = getattr(self, "url", b"")  # (uvicorn sets it when a message begins)
        if not refusal.path and url:
            refusal = replace(refusal, path=url)
        self._stopped = True
        self.flow.pause_reading()
        cycle, self._parsing = self._parsing, None
        if cycle is not None:  # its head was handed over: uvicorn made it a cycle
            queued = [item for item in self.pipeline if item[0] is cycle]
            if queued:  # waiting behind an earlier request: never started, now never will
                self.pipeline.remove(queued[0])
            elif self._guard is not None and self._guard.cycle is cycle and self._guard.started:
                if cycle.response_complete:  # answered already, before its body: nothing more to say
                    log.warning("a request's body was refused after its answer: %s", refusal.message)
                    self.transport.close()
                else:
                    self._guard.refuse(refusal)  # its app is running: it owns the answer (_Guard)
                return
            elif self._guard is not None and self._guard.cycle is cycle:
                self._guard.refuse(refusal)  # started, not yet running: it never will
            self._unanswered.remove(cycle)
        if any(not earlier.response_complete for earlier in self._unanswered):
            self._last_word = refusal  # on_response_complete writes it after their answers
        else:
            self._write_and_close(refusal)

    def _write_and_close(self, refusal: Refusal) -> None:
        if not self.transport.is_closing():
            log.warning(
                "request_id=%s refused by the HTTP protocol: %d %s: %s",
                refusal.request_id,
                refusal.status,
                refusal.code,
                refusal.message,
            )
            self.transport.write(refusal.encode())
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """(uvicorn's own path to a 400; ours is _refuse. Kept in the API's format for any caller.)"""
        self._write_and_close(bad_request(f"{msg} The request was not understood."))

    # Answering

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._guard = _Guard(self, cycle, app)
        super()._start_asgi_task(cycle, self._guard)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if any
        self._unanswered = [cycle for cycle in self._unanswered if not cycle.response_complete]
        if self._last_word is not None and not self._unanswered:
            self._write_and_close(self._last_word)

    def _head_too_large(self, data: bytes) -> bool:
        """Counts this read's head bytes: a read may carry the end of the headers and the body, and
        the blank line that ends them may straddle two reads."""
        window = self._tail + data
        ends = [i + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (i := window.find(mark)) >= 0]
        self._head_bytes += (min(ends) - len(self._tail)) if ends else len(data)
        self._tail = window[-3:]
        return self._head_bytes > MAX_HEADER_BYTES


class _Guard:
    """The app of one request as uvicorn runs it, so that the parser can still refuse the request
    after its head was handed over (see the module's docstring)."""

    def __init__(self, protocol: HttpProtocol, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self.protocol = protocol
        self.cycle = cycle
        self.app = app
        self.started = False
        self.refusal: Refusal | None = None

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if self.refusal is not None:
            return  # refused before the app saw it (the cycle is marked disconnected: uvicorn adds nothing)
        self.started = True

        async def guarded_receive() -> ASGIReceiveEvent:
            if self.refusal is None or self.cycle.response_started:
                message = await receive()
                if self.refusal is None or self.cycle.response_started:
                    return message
            # It asks for a body the parser refused, before answering: the client gets the refusal,
            # the app a client gone away (its sends go nowhere).
            self.cycle.disconnected = True
            assert self.refusal is not None
            self.protocol._write_and_close(self.refusal)
            return {"type": "http.disconnect"}

        await self.app(scope, guarded_receive, send)

    def refuse(self, refusal: Refusal) -> None:
        """An app not running yet never runs; a running one owns the answer (guarded_receive)."""
        self.refusal = refusal
        if not self.started:
            self.cycle.disconnected = True  # uvicorn: no 500 for an app that returned without answering
            return
        self.cycle.keep_alive = False  # whatever it answers is the connection's last answer
        self.cycle.message_event.set()  # wakes a receive() waiting for the body
