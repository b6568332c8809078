"""The `/v1` gateway: a lean ASGI app in front of Django — the router only (path → endpoint).

Django's stock ASGI handler costs two thread hops per request even without the ORM; the request
path here stays on the event loop: keys and catalog come from in-memory caches (state.py), the
ledger is two single-statement round trips on an async psycopg pool (sql.py, batch.py), upstreams
are called through one pooled aiohttp session. Everything else (admin, dashboard API) stays Django.

Each client format is an endpoint module (endpoints/); every generating endpoint runs the one
request lifecycle (lifecycle.py). Nothing imports this module but the ASGI entry point.
"""

from __future__ import annotations

import logging

from openbili.core.errors import OpenbiliError
from usage import images as image_store
from usage.gateway import lifecycle, observe
from usage.gateway.context import Ctx, MethodNotAllowed, NotFoundUrl
from usage.gateway.endpoints import chat, images, messages, models, responses, stored
from usage.gateway.endpoints.base import Endpoint
from usage.gateway.state import GatewayState

log = logging.getLogger("openbili.gateway")

GENERATING: dict[str, Endpoint] = {
    endpoint.path: endpoint
    for endpoint in (chat.ENDPOINT, messages.ENDPOINT, responses.ENDPOINT, images.GENERATIONS, images.EDITS)
}
STORED = "/v1/responses/"
IMAGE_FILES = "/v1/images/files/"


class Gateway:
    def __init__(self) -> None:
        self.state = GatewayState()

    async def __call__(self, scope, receive, send) -> None:
        if not self.state.pool:
            await self.state.start()
        ctx = Ctx(scope)
        try:
            await self.route(ctx, scope, receive, send)
        finally:
            observe.finished(self.state, ctx)  # metrics and the log line, after the answer's last byte

    async def route(self, ctx: Ctx, scope, receive, send) -> None:
        path, method = scope["path"].rstrip("/"), scope["method"]
        endpoint = GENERATING.get(path)
        if endpoint is not None:
            ctx.label = endpoint.path
            if method != "POST":
                await lifecycle.refuse(
                    self.state, ctx, endpoint, send, MethodNotAllowed(f"{method} is not allowed on {path}.")
                )
                return
            await lifecycle.serve(self.state, ctx, endpoint, receive, send)
            return
        if path == messages.COUNT_TOKENS.path:
            ctx.label = path
            if method != "POST":
                await lifecycle.refuse(
                    self.state,
                    ctx,
                    messages.COUNT_TOKENS,
                    send,
                    MethodNotAllowed(f"{method} is not allowed on {path}."),
                )
                return
            await lifecycle.count_tokens(self.state, ctx, messages.COUNT_TOKENS, receive, send)
            return
        await self.other(ctx, scope, send, path, method)

    async def other(self, ctx: Ctx, scope, send, path: str, method: str) -> None:
        """/v1/models and unknown URLs, answered in OpenAI's format (Anthropic's under /v1/messages)."""
        endpoint: Endpoint = messages.ENDPOINT if path.startswith("/v1/messages") else models.ENDPOINT
        try:
            if path == "/v1/models" or path.startswith("/v1/models/"):
                ctx.label = "/v1/models"
                if method != "GET":
                    raise MethodNotAllowed(f"{method} is not allowed on {path}.")
                model_id = path[len("/v1/models/") :] if path.startswith("/v1/models/") else None
                await models.handle(self.state, ctx, send, model_id=model_id)
            elif scope["path"].startswith(IMAGE_FILES):  # no key: the URL is the capability
                ctx.label = observe.IMAGE_FILES_LABEL
                await image_store.serve_image(self.state, ctx, send, scope["path"][len(IMAGE_FILES) :], method=method)
            elif path.startswith(STORED):
                response_id, _, rest = path[len(STORED) :].partition("/")
                suffix = f"/{rest}" if rest else ""
                ctx.label = STORED + "{id}" + (suffix if suffix in ("/cancel", "/input_items") else "")
                if suffix not in ("", "/cancel", "/input_items"):
                    raise NotFoundUrl(f"Unknown URL: {method[:20]} {path[:200]}.")
                if (method, suffix) not in stored.OPERATIONS:
                    raise MethodNotAllowed(f"{method} is not allowed on /v1/responses/{{id}}{suffix}.")
                await stored.handle(self.state, ctx, send, method, response_id, suffix, scope.get("query_string", b""))
            else:
                shown = scope["path"] if len(scope["path"]) <= 200 else scope["path"][:200] + "…"
                raise NotFoundUrl(f"Unknown URL: {method[:20]} {shown}.")
        except OpenbiliError as error:
            await lifecycle.refuse(self.state, ctx, endpoint, send, error)
        except Exception:
            log.exception("request_id=%s trace_id=%s unexpected error", ctx.request_id, ctx.trace_id)
            await lifecycle.reject(self.state, ctx, endpoint, send, OpenbiliError())


gateway = Gateway()
