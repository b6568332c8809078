"""/healthz and /readyz on the live gateway (issue 15, Deliver 1): no key, no usage row, no rate
limit, nothing written. Each dependency down: tests/faults/test_operations.py, on real processes."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
import redis.asyncio as aioredis

from billing import services
from billing.models import ApiKey
from openbili.ops import health
from usage.models import UsageRecord


def test_healthz_answers_without_a_key_and_touches_nothing(gateway):
    before = UsageRecord.objects.count()
    response = httpx.get(gateway.url + "/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["cache-control"] == "no-store"
    assert "x-request-id" not in response.headers  # not a /v1 request: nothing of the gateway's ran
    assert UsageRecord.objects.count() == before


def test_readyz_checks_postgres_redis_and_the_broker(gateway, settings):
    response = httpx.get(gateway.url + "/readyz", timeout=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready" and body["failed"] == []
    assert set(body["checks"]) == {"postgres", "redis", "broker"}
    assert all(check["ok"] for check in body["checks"].values())
    assert all(isinstance(check["ms"], float) for check in body["checks"].values())
    # The suite's broker is in-process (memory://): said, not pretended to be a server.
    assert body["checks"]["broker"]["detail"].startswith("in-process")
    assert "detail" not in body["checks"]["postgres"]
    if settings.REDIS_URL:
        assert "detail" not in body["checks"]["redis"]


def test_readyz_is_not_rate_limited_and_writes_no_row_even_with_a_key(gateway):
    # A key limited to 2 requests a minute, presented to the probes: they are not /v1 requests.
    key = ApiKey.objects.get(account=gateway.account)
    services.key_update(key=key, rpm_limit=2)
    gateway.refresh()
    before = UsageRecord.objects.count()
    headers = {"Authorization": f"Bearer {gateway.secret}"}
    answers = [httpx.get(gateway.url + path, headers=headers, timeout=5) for path in ["/readyz", "/healthz"] * 10]
    assert [a.status_code for a in answers] == [200] * 20
    assert UsageRecord.objects.count() == before
    # The key's limit is untouched by them: its two requests still pass, the third is refused.
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
    statuses = [gateway.post("/v1/chat/completions", json=body).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_head_has_no_body_and_other_methods_are_refused(gateway, path):
    head = httpx.head(gateway.url + path, timeout=5)
    assert head.status_code == 200 and head.content == b""
    post = httpx.post(gateway.url + path, timeout=5)
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"
    assert post.json()["error"]["code"] == "method_not_allowed"


def test_metrics_do_not_exist_on_the_service_port_without_a_token(gateway, settings):
    settings.OPENBILI_METRICS_TOKEN = ""
    response = httpx.get(gateway.url + "/metrics", timeout=5)
    assert response.status_code == 404
    assert "openbili_requests" not in response.text


def test_metrics_need_the_operators_token(gateway, settings):
    settings.OPENBILI_METRICS_TOKEN = "s3cret-operators-token"
    missing = httpx.get(gateway.url + "/metrics", timeout=5)
    wrong = httpx.get(gateway.url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=5)
    key = httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {gateway.secret}"}, timeout=5)
    for answer in (missing, wrong, key):  # a customer's API key is not the operators' token either
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        assert "openbili_requests" not in answer.text
    right = httpx.get(gateway.url + "/metrics", headers={"Authorization": "Bearer s3cret-operators-token"}, timeout=20)
    assert right.status_code == 200
    assert "# TYPE openbili_requests_total counter" in right.text


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def unready(gateway, monkeypatch):
    """Readiness checked afresh on every probe; what a test breaks is reached over a real socket."""
    monkeypatch.setattr(health, "READY_CACHE_SECONDS", 0.0)
    return gateway


def test_a_redis_that_does_not_answer_makes_the_process_not_ready(unready, monkeypatch):
    state = unready.server.state
    monkeypatch.setattr(state.limiter, "redis", aioredis.Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0"))
    response = httpx.get(unready.url + "/readyz", timeout=5)
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["failed"]) == ("not_ready", ["redis"])
    assert body["checks"]["redis"]["error"] == "ConnectionError" and body["checks"]["postgres"]["ok"]
    # Required only PostgreSQL (docs/operations.md: a shared Redis down must not take every gateway out).
    monkeypatch.setattr(health, "REQUIRED", frozenset({"postgres"}))
    response = httpx.get(unready.url + "/readyz", timeout=5)
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["failed"]) == ("degraded", ["redis"])


def test_a_broker_that_does_not_answer_makes_the_process_not_ready(unready, settings):
    settings.CELERY_BROKER_URL = f"amqp://guest:guest@127.0.0.1:{closed_port()}//"
    response = httpx.get(unready.url + "/readyz", timeout=5)
    assert response.status_code == 503
    assert response.json()["failed"] == ["broker"]
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"  # the machine's RabbitMQ
    reachable = socket.socket()
    try:
        rabbit = reachable.connect_ex(("127.0.0.1", 5672)) == 0
    finally:
        reachable.close()
    if rabbit:
        assert httpx.get(unready.url + "/readyz", timeout=5).status_code == 200


def test_a_dependency_that_hangs_fails_within_the_timeout(unready, settings, monkeypatch):
    # A port that accepts and never answers (a listening socket nobody reads): the check gives up.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        monkeypatch.setattr(health, "READY_TIMEOUT", 0.3)
        settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        started = time.monotonic()
        response = httpx.get(unready.url + "/readyz", timeout=10)
        assert time.monotonic() - started < 3
        assert response.status_code == 503 and response.json()["failed"] == ["broker"]
    finally:
        silent.close()
