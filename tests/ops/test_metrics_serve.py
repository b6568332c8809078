"""`manage.py metrics_serve`: one port per host serving every process's metrics from
PROMETHEUS_MULTIPROC_DIR (here: two other processes'), and the ledger's gauges."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def environment(tmp_path, transactional_db):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS", "DJANGO_SETTINGS"))}
    return env | {
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "DJANGO_SETTINGS_MODULE": "openbili.settings",
        "DATABASE_URL": database_url(),
    }


def a_process_probes(env: dict, route: int, times: int) -> None:
    code = (
        "import django; django.setup(); from openbili.ops import metrics; "
        f"[metrics.PROBES.labels('{route}', 'openai', 'ok').inc() for _ in range({times})]"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


def serve(env: dict, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "metrics_serve", "--port", str(port), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            return server, httpx.get(url, timeout=5).text
        except httpx.TransportError:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            time.sleep(0.1)
    server.kill()
    raise AssertionError("metrics_serve did not answer")


def samples(text: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_metrics_of_every_process_of_the_host_are_summed(environment):
    a_process_probes(environment, route=7, times=2)
    a_process_probes(environment, route=7, times=3)  # another process, another file
    server, text = serve(environment)
    try:
        found = samples(text)
        assert found[("openbili_probes_total", (("outcome", "ok"), ("provider", "openai"), ("route", "7")))] == 5
        assert found[("openbili_ledger_scrape_ok", ())] == 1  # the ledger's gauges, from PostgreSQL
        assert ("openbili_holds_open", ()) in found
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_without_the_ledger(environment):
    a_process_probes(environment, route=8, times=1)
    server, text = serve(environment, "--no-ledger")
    try:
        assert "openbili_probes_total" in text and "openbili_ledger_scrape_ok" not in text
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_refused_without_a_multiprocess_directory(environment):
    env = {k: v for k, v in environment.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run(
        [sys.executable, "manage.py", "metrics_serve", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "PROMETHEUS_MULTIPROC_DIR is not set" in result.stderr
