"""Fixtures for testing /v1 end to end: a live gateway, the fake upstream, funded accounts, SDK clients."""

from __future__ import annotations

import time
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
import redis

from billing import services
from billing.models import Account
from openbili.fake_upstream import FakeUpstream
from tests.factories import AccountFactory, CatalogModelFactory, make_visible_model
from tests.live import LiveServer
from usage.models import UsageRecord

GPT_PRICES = {
    "input_per_mtok": Decimal("1.25"),
    "output_per_mtok": Decimal("10"),
    "cached_input_per_mtok": Decimal("0.125"),
}
CLAUDE_PRICES = {
    "input_per_mtok": Decimal("3"),
    "output_per_mtok": Decimal("15"),
    "cached_input_per_mtok": Decimal("0.30"),
    "cache_write_per_mtok": Decimal("3.75"),
}
CLAUDE = "claude-sonnet-4-6"  # on an Anthropic route (the fake upstream's /v1/messages)


@pytest.fixture(scope="session")
def upstream():
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def live_gateway(django_db_setup, django_db_blocker):
    from openbili.asgi import application
    from usage.gateway.app import gateway as gateway_app

    server = LiveServer(application).start()
    server.state = gateway_app.state
    yield server
    server.stop()


def flush_rate_limits() -> None:
    """Rate-limit counters live in Redis (when REDIS_URL is set): start each test from none."""
    from django.conf import settings

    if settings.REDIS_URL:
        client = redis.Redis.from_url(settings.REDIS_URL)
        for key in client.scan_iter("openbili-limits*"):
            client.delete(key)
        client.close()


class GatewayClient:
    """The live gateway as a customer sees it, plus helpers to read the ledger afterwards."""

    def __init__(self, server: LiveServer, upstream: FakeUpstream, account: Account, secret: str) -> None:
        self.server = server
        self.url = server.url
        self.upstream = upstream
        self.account = account
        self.secret = secret

    def openai(self, key: str | None = None, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 20)
        return openai.OpenAI(api_key=key or self.secret, base_url=self.url + "/v1", **kwargs)

    def anthropic(self, key: str | None = None, **kwargs) -> anthropic.Anthropic:
        kwargs.setdefault("max_retries", 0)
        return anthropic.Anthropic(api_key=key or self.secret, base_url=self.url, **kwargs)

    def post(self, path: str, *, key: str | None = None, **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if key is not False:
            headers.setdefault("Authorization", f"Bearer {key or self.secret}")
        return httpx.post(self.url + path, headers=headers, timeout=20, **kwargs)

    def get(self, path: str, *, key: str | None = None, **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if key is not False:
            headers.setdefault("Authorization", f"Bearer {key or self.secret}")
        return httpx.get(self.url + path, headers=headers, timeout=20, **kwargs)

    def refresh(self) -> None:
        """Drop the gateway's caches (the NOTIFY triggers do this too; tests don't wait for them)."""
        self.server.state.invalidate()

    def row(self, request_id: str, *, wait: float = 5.0) -> UsageRecord:
        """The finished usage row of a request (streams may still be settling when the client is done)."""
        deadline = time.monotonic() + wait
        while True:
            row = UsageRecord.objects.filter(request_id=request_id).first()
            if row is not None and row.billing_result != "pending":
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"no finished usage row for {request_id}: {row}")
            time.sleep(0.02)


@pytest.fixture
def gateway(transactional_db, live_gateway, upstream):
    """A funded account ($100) with a key, and gpt-5 routed to the fake upstream."""
    upstream.reset()
    flush_rate_limits()
    model = CatalogModelFactory(name="gpt-5", context_window=400_000, max_output_tokens=128_000)
    make_visible_model(model, prices=GPT_PRICES, base_url=upstream.url + "/v1")
    account = AccountFactory(credit=Decimal("100"))
    _, secret = services.key_create(account=account, name="test")
    client = GatewayClient(live_gateway, upstream, account, secret)
    client.refresh()
    yield client
    client.refresh()


@pytest.fixture
def claude(gateway):
    """The `gateway` fixture plus claude-sonnet-4-6 routed to the fake upstream as an Anthropic
    route (base URL without /v1, as api.anthropic.com is configured)."""
    model = CatalogModelFactory(name=CLAUDE, owned_by="anthropic", context_window=200_000, max_output_tokens=64_000)
    make_visible_model(
        model, prices=CLAUDE_PRICES, base_url=gateway.upstream.url, provider="anthropic", upstream_model="claude-up"
    )
    gateway.refresh()
    return gateway
