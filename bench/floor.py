"""The floor: the cheapest proxy on the gateway's own stack, to show what billing costs on top of it.

    OPENBILI_FLOOR_UPSTREAM=http://127.0.0.1:18300 .venv/bin/python -m uvicorn floor:app \\
        --app-dir bench --host 127.0.0.1 --port 18400 --no-access-log --log-level warning

A bare ASGI app under the same uvicorn (same flags, same loop and HTTP parser: uvloop + httptools
when installed, as for `openbili.asgi:application`) with one pooled aiohttp ClientSession per
process, configured like the gateway's (state.py). No auth, no database, no Redis, no JSON
parsing: the request body goes to the upstream as it came, with fixed upstream credentials, and
the response comes back as it came: a non-stream body is read and returned, an event stream
(`text/event-stream`) is passed through chunk by chunk as the upstream sends it.

    POST /v1/chat/completions      ->  {upstream}/v1/chat/completions      (Authorization: Bearer)
    POST /v1/messages              ->  {upstream}/v1/messages              (x-api-key + anthropic-version)
    POST /v1/responses             ->  {upstream}/v1/responses             (Authorization: Bearer)
    POST /v1/images/generations    ->  {upstream}/v1/images/generations    (Authorization: Bearer)

Anything else answers 404. An unreachable upstream answers 502. Whatever Openbili spends above
this per request is the price of what it does on top: keys, limits, the ledger, the usage row,
validation, (for chat and Responses on a Claude model) translation and (for images) storing the
image behind a URL: the floor passes the upstream's `b64_json` through as it came.
"""

from __future__ import annotations

import os

import aiohttp

UPSTREAM = os.environ.get("OPENBILI_FLOOR_UPSTREAM", "http://127.0.0.1:8181").rstrip("/")
UPSTREAM_KEY = os.environ.get("OPENBILI_FLOOR_UPSTREAM_KEY", "sk-bench-upstream")

# client path -> (upstream URL, upstream headers); built once.
BEARER = {"Content-Type": "application/json", "Authorization": f"Bearer {UPSTREAM_KEY}"}
ROUTES: dict[str, tuple[str, dict[str, str]]] = {
    "/v1/chat/completions": (UPSTREAM + "/v1/chat/completions", BEARER),
    "/v1/responses": (UPSTREAM + "/v1/responses", BEARER),
    "/v1/images/generations": (UPSTREAM + "/v1/images/generations", BEARER),
    "/v1/messages": (
        UPSTREAM + "/v1/messages",
        {"Content-Type": "application/json", "x-api-key": UPSTREAM_KEY, "anthropic-version": "2023-06-01"},
    ),
}
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
NOT_FOUND = b'{"error":{"message":"unknown URL","type":"invalid_request_error"}}'
STREAM_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]

session: aiohttp.ClientSession | None = None


async def lifespan(receive, send) -> None:
    global session
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if session is not None:
                await session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def respond(send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    route = ROUTES.get(scope["path"])
    if route is None or scope["method"] != "POST":
        await respond(send, 404, NOT_FOUND)
        return
    url, headers = route
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    assert session is not None
    started = False
    try:
        async with session.post(url, data=body, headers=headers, timeout=TIMEOUT) as resp:
            content_type = resp.headers.get("Content-Type", "application/json")
            if content_type.startswith("text/event-stream"):
                await send({"type": "http.response.start", "status": resp.status, "headers": STREAM_HEADERS})
                started = True
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            data = await resp.read()
            await respond(send, resp.status, data, content_type.encode())
    except (aiohttp.ClientError, TimeoutError) as exc:
        if started:  # mid-stream: end the body; the client sees a stream without its last event
            await send({"type": "http.response.body", "body": b""})
            return
        await respond(send, 502, f'{{"error":{{"message":"upstream: {type(exc).__name__}"}}}}'.encode())
