"""Operations on real processes (issue 15): /readyz with each dependency down, and the metrics of a
gateway running several uvicorn workers, aggregated through PROMETHEUS_MULTIPROC_DIR.

Besides the stack's own gateway, a second one runs here with two workers, its Celery broker on a
private redis-server of its own (so that the broker can go down while Redis stays up) and the
operators' metrics token."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.harness import GPT, Gateway, RedisServer, Stack, send, wait_until

TOKEN = "faults-metrics-token"


def readiness(url: str) -> tuple[int, list[str]]:
    try:
        response = httpx.get(url + "/readyz", timeout=5)
    except httpx.TransportError as exc:
        return 0, [type(exc).__name__]
    return response.status_code, response.json()["failed"]


@pytest.fixture(scope="module")
def ops(stack: Stack):
    """The second gateway: two workers, a broker of its own, metrics on."""
    root = stack.root / "ops"
    root.mkdir(exist_ok=True)
    broker = RedisServer(root)
    broker.start()
    env = stack.env | {
        "CELERY_BROKER_URL": broker.url,
        "PROMETHEUS_MULTIPROC_DIR": str(root / "metrics"),
        "OPENBILI_METRICS_TOKEN": TOKEN,
        "OPENBILI_READY_CACHE_SECONDS": "0",  # each probe looks again: the test waits on changes
    }
    gateway = Gateway(root, env, health_key=stack.named["health"].secret)
    gateway.argv += ["--workers", "2"]
    gateway.broker = broker
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.stop()
        broker.stop()
        suite_logs = os.environ.get("OPENBILI_TEST_LOG_DIR")
        if suite_logs:  # for the suite's secret scan
            with contextlib.suppress(OSError):
                (root / "gateway.log").replace(f"{suite_logs}/faults-ops-gateway.log")


def test_readyz_names_each_dependency_that_is_down_and_healthz_stays_up(faults, ops):
    assert readiness(ops.url) == (200, [])
    # the broker alone
    ops.broker.stop()
    wait_until(lambda: readiness(ops.url) == (503, ["broker"]), what="readyz naming the broker", timeout=10)
    body = httpx.get(ops.url + "/readyz", timeout=5).json()
    assert body["status"] == "not_ready"
    assert body["checks"]["postgres"]["ok"] and body["checks"]["redis"]["ok"]
    assert body["checks"]["broker"]["error"]  # the exception's class, never its text (a URL, a password)
    assert "127.0.0.1" not in str(body)
    ops.broker.start()
    wait_until(lambda: readiness(ops.url) == (200, []), what="ready again with the broker back", timeout=10)
    # Redis (the limiter's, the outbox's)
    faults.disturbed = True
    faults.redis.stop()
    try:
        wait_until(lambda: readiness(ops.url) == (503, ["redis"]), what="readyz naming Redis", timeout=10)
        assert httpx.get(ops.url + "/healthz", timeout=5).status_code == 200
    finally:
        faults.redis.start()
    wait_until(lambda: readiness(ops.url) == (200, []), what="ready again with Redis back", timeout=10)
    # PostgreSQL
    faults.pg.stop()
    try:
        started = time.monotonic()
        wait_until(lambda: readiness(ops.url)[1] == ["postgres"], what="readyz naming PostgreSQL", timeout=15)
        assert time.monotonic() - started < 10
        # Alive all along: an orchestrator must not restart gateways for the database's outage.
        assert httpx.get(ops.url + "/healthz", timeout=5).status_code == 200
        assert httpx.get(faults.gateway.url + "/healthz", timeout=5).status_code == 200
    finally:
        faults.pg.start()
    wait_until(lambda: readiness(ops.url) == (200, []), what="ready again with PostgreSQL back", timeout=20)


def test_metrics_add_up_across_the_workers(faults, ops, account):
    # Fresh workers on an empty metrics directory, as a deployment starts them (docs/operations.md):
    # the test before stopped PostgreSQL under them, and a worker's first statement on a pooled
    # connection from before the restart answers 503 (tests/faults/test_postgres.py).
    ops.stop()
    metrics_dir = Path(ops.env["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(metrics_dir)
    metrics_dir.mkdir()
    ops.start()
    sent = 24
    answers = [send(ops.url, account.secret, surface="chat", stream=False) for _ in range(sent)]
    assert all(a.status == 200 for a in answers)

    def requests_counted() -> float:
        response = httpx.get(ops.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert response.status_code == 200
        for family in text_string_to_metric_families(response.text):
            if family.name == "openbili_requests":
                return sum(
                    s.value
                    for s in family.samples
                    if s.name == "openbili_requests_total"
                    and s.labels["model"] == GPT
                    and s.labels["status"] == "200"
                    and s.labels["endpoint"] == "/v1/chat/completions"
                )
        return 0.0

    # Each worker writes its tally once a second; whichever worker serves the scrape reads both.
    # Under load a scrape (every worker's files, the ledger's gauges) can take seconds of its own.
    wait_until(lambda: requests_counted() == sent, what=f"{sent} requests in the metrics", timeout=45, every=0.5)
    files = list(metrics_dir.glob("counter_*.db"))
    assert len(files) >= 2, f"one metrics file per worker expected, found {[f.name for f in files]}"
