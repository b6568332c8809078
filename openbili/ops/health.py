"""`GET /healthz`, `GET /readyz` and `GET /metrics`, answered by the ASGI entry point before the
gateway or Django see them: no key, no usage row, no rate limit, nothing written.

- /healthz: the process is alive and its event loop answers. No dependency is touched, so a
  database outage never makes an orchestrator restart healthy gateways.
- /readyz: PostgreSQL (through the gateway's own pool), Redis (the limiter's client) and the
  Celery broker each answer within OPENBILI_READY_TIMEOUT_SECONDS; `failed` names those that did
  not. A failed dependency listed in OPENBILI_READY_REQUIRES (default: all three) makes the answer
  503, which takes the process out of a load balancer's rotation; one not listed leaves it 200
  with status "degraded". They are shared by every process, so a failure takes all of them out
  at once: where that is an outage (a Kubernetes Service with no ready pod), require only
  `postgres` — without Redis the gateway serves unlimited (limits fail open), without the broker
  /v1 does not notice (docs/operations.md). Checked at most once per OPENBILI_READY_CACHE_SECONDS
  per process, however often it is asked: probes cannot load the dependencies.
- /metrics: the Prometheus text format (metrics.py), only with `Authorization: Bearer
  <OPENBILI_METRICS_TOKEN>`; without the setting the path does not exist here (run `manage.py
  metrics_serve` on a port only operators reach instead).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time

from django.conf import settings

from openbili.ops import metrics

PATHS = frozenset(("/healthz", "/readyz", "/metrics"))
READY_TIMEOUT = float(os.environ.get("OPENBILI_READY_TIMEOUT_SECONDS", "1"))
READY_CACHE_SECONDS = float(os.environ.get("OPENBILI_READY_CACHE_SECONDS", "1"))
DEPENDENCIES = ("postgres", "redis", "broker")
REQUIRED = frozenset(
    name.strip()
    for name in os.environ.get("OPENBILI_READY_REQUIRES", ",".join(DEPENDENCIES)).split(",")
    if name.strip()
)
if REQUIRED - set(DEPENDENCIES):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"OPENBILI_READY_REQUIRES: unknown {sorted(REQUIRED - set(DEPENDENCIES))}")
NO_STORE = (b"cache-control", b"no-store")


async def handle(scope, receive, send, state) -> None:
    path, method = scope["path"], scope["method"]
    if method not in ("GET", "HEAD"):
        await _json(send, 405, {"error": {"code": "method_not_allowed", "message": f"{method[:20]} is not allowed."}},
                    extra=[(b"allow", b"GET, HEAD")], head=False)  # fmt: skip
        return
    head = method == "HEAD"
    if path == "/healthz":
        await _json(send, 200, {"status": "ok"}, head=head)
    elif path == "/readyz":
        status, body = await READINESS.check(state)
        await _json(send, status, body, head=head)
    else:
        await _metrics(scope, send, head=head)


class Readiness:
    def __init__(self) -> None:
        self.answer: tuple[int, dict] | None = None
        self.checked_at = 0.0
        self.lock = asyncio.Lock()

    async def check(self, state) -> tuple[int, dict]:
        if self.answer is not None and time.monotonic() - self.checked_at < READY_CACHE_SECONDS:
            return self.answer
        async with self.lock:  # probes arriving together share one check
            if self.answer is None or time.monotonic() - self.checked_at >= READY_CACHE_SECONDS:
                self.answer = await self._check(state)
                self.checked_at = time.monotonic()
        return self.answer

    async def _check(self, state) -> tuple[int, dict]:
        if state.pool is None:
            await state.start()  # as the gateway does on its first request: nothing waits on the database
        results = await asyncio.gather(_postgres(state), _redis(state), _broker())
        checks = dict(zip(DEPENDENCIES, results, strict=True))
        failed = [name for name, result in checks.items() if not result["ok"]]
        ready = not REQUIRED.intersection(failed)
        status = ("ready" if not failed else "degraded") if ready else "not_ready"
        return (200 if ready else 503), {"status": status, "failed": failed, "checks": checks}


READINESS = Readiness()


async def _timed(probe) -> dict:
    """{"ok", "ms"} of one dependency, with the error's class name if it failed (never its text:
    a driver's message may carry a host name or a user)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            detail = await probe()
    except TimeoutError:
        return {"ok": False, "ms": _ms(started), "error": f"no answer within {READY_TIMEOUT:g} s"}
    except Exception as exc:
        return {"ok": False, "ms": _ms(started), "error": type(exc).__name__}
    result: dict = {"ok": True, "ms": _ms(started)}
    if detail:
        result["detail"] = detail
    return result


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


async def _postgres(state) -> dict:
    async def probe() -> str | None:
        if not state.db_ok:
            raise ConnectionError("the gateway found the database unreachable")
        async with state.pool.connection(timeout=READY_TIMEOUT) as conn:
            await conn.execute("SELECT 1")
        return None

    return await _timed(probe)


async def _redis(state) -> dict:
    async def probe() -> str | None:
        client = state.limiter.redis if state.limiter is not None else None
        if client is None:
            return "not configured: rate limits are counted in this process"
        await client.ping()
        return None

    return await _timed(probe)


async def _broker() -> dict:
    url = settings.CELERY_BROKER_URL

    async def probe() -> str | None:
        if url.startswith("memory://"):
            return "in-process: tasks run in the serving process"
        await asyncio.to_thread(_connect_broker, url)
        return None

    return await _timed(probe)


def _connect_broker(url: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=READY_TIMEOUT) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=READY_TIMEOUT)


async def _metrics(scope, send, *, head: bool) -> None:
    token = settings.OPENBILI_METRICS_TOKEN
    if not token:
        await _json(send, 404, {"error": {"code": "unknown_url", "message": "Unknown URL: GET /metrics."}}, head=head)
        return
    presented = b""
    for name, value in scope["headers"]:
        if name == b"authorization":
            presented = value
    if not hmac.compare_digest(presented, b"Bearer " + token.encode()):
        body = {"error": {"code": "unauthorized", "message": "/metrics needs the operators' bearer token."}}
        await _json(send, 401, body, extra=[(b"www-authenticate", b"Bearer")], head=head)
        return
    metrics.TALLY.flush()  # this process's last second, on the loop that keeps it
    text = await asyncio.to_thread(metrics.exposition)
    headers = [(b"content-type", metrics.CONTENT_TYPE.encode()), (b"content-length", str(len(text)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": [*headers, NO_STORE]})
    await send({"type": "http.response.body", "body": b"" if head else text})


async def _json(send, status: int, body: dict, *, head: bool, extra: list | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), NO_STORE]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *(extra or [])]})
    await send({"type": "http.response.body", "body": b"" if head else data})
