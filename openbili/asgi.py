"""ASGI entry point: `uvicorn openbili.asgi:application`.

`/v1/*` goes to the lean gateway app (usage/gateway/app.py); `/healthz`, `/readyz` and `/metrics`
to openbili/ops/health.py; everything else (admin, dashboard API, console) to Django. Lifespan
events open and close the gateway's database pool and HTTP client.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "openbili.settings")

django_application = get_asgi_application()

from openbili.core.checks import require_secret_key  # noqa: E402 - needs Django set up first

require_secret_key("to serve")

from openbili.ops import health  # noqa: E402 - needs Django set up first
from usage.gateway.app import gateway  # noqa: E402 - needs Django set up first


async def application(scope, receive, send):
    kind = scope["type"]
    if kind == "http" and (scope["path"] == "/v1" or scope["path"].startswith("/v1/")):
        await gateway(scope, receive, send)
    elif kind == "http" and scope["path"] in health.PATHS:  # no key, no row, no rate limit
        await health.handle(scope, receive, send, gateway.state)
    elif kind == "lifespan":
        await lifespan(receive, send)
    elif kind == "websocket":
        await refuse_websocket(receive, send)
    else:
        await django_application(scope, receive, send)


async def refuse_websocket(receive, send):
    """No endpoint speaks WebSocket. Closing before accepting makes the server answer the handshake
    with 403 (ASGI spec), instead of Django failing on a scope it does not know (a 500 and a
    traceback in the log)."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await gateway.state.start()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await gateway.state.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
