"""Gateway processes are stateless: two of them side by side, sharing only PostgreSQL, never spend
the same credit twice and keep the ledger exact (DEVELOPERS.md: scale out on real engines)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from billing import money, services
from tests.factories import AccountFactory
from tests.gateway.support import MSG, PRICES, assert_ledger, wait_until
from usage.gateway.endpoints.base import TEMPLATE_TOKENS
from usage.models import UsageRecord

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def second_gateway(gateway):
    """A second gateway: its own uvicorn process on the same (test) database."""
    db = settings.DATABASES["default"]
    port = free_port()
    env = dict(os.environ)
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "openbili.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/v1/models", timeout=1)
            break
        except httpx.TransportError:
            assert process.poll() is None and time.monotonic() < deadline, "second gateway did not start"
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_two_gateway_processes_share_one_ledger(gateway, second_gateway):
    body = json.dumps({"model": "gpt-5", "messages": MSG, "max_tokens": 100}).encode()
    hold = money.max_cost(PRICES, max_input_tokens=len(body) + TEMPLATE_TOKENS, max_output_tokens=100)
    account = AccountFactory(credit=hold * 6)  # exactly six requests' worth
    _, secret = services.key_create(account=account, name="two-processes")
    # held at the upstream until all 20 are reserved or refused: no settle frees credit meanwhile
    gateway.upstream.script(gate="two", tokens={"prompt": 10, "completion": 8}, times=6)
    urls = [gateway.url, second_gateway] * 10  # 20 requests, alternating between the processes

    def call(url):
        return httpx.post(
            url + "/v1/chat/completions",
            content=body,
            timeout=30,
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        )

    with ThreadPoolExecutor(len(urls)) as pool:
        futures = [pool.submit(call, url) for url in urls]
        rows = UsageRecord.objects.filter(api_key__account=account)
        wait_until(lambda: rows.count() == 20, what="all 20 requests reserved or refused")
        gateway.upstream.open_gate("two")
        statuses = sorted(future.result().status_code for future in futures)

    assert statuses == [200] * 6 + [402] * 14
    rows = UsageRecord.objects.filter(api_key__account=account)
    assert rows.count() == 20
    spent = sum(row.cost_usd for row in rows)
    assert spent == 6 * money.usage_cost(PRICES, money.TokenUsage(input_tokens=10, output_tokens=8))
    assert_ledger(account.pk, spent=spent, credit=hold * 6)
