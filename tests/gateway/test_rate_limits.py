"""RPM and TPM limits per key and per account (CONTRACT §2.1, §2.2): 429 rate_limit_exceeded with
Retry-After and the x-ratelimit-* headers, a usage row, and no upstream call."""

import time

import openai
import pytest
import redis
from django.conf import settings

from billing import services
from billing.models import Account, ApiKey
from tests.gateway.limiter_support import fresh_window
from tests.gateway.support import MSG, assert_sdk_error
from usage.models import UsageRecord

CHAT = {"model": "gpt-5", "messages": MSG, "max_tokens": 10}


def limit_key(gateway, **limits) -> None:
    """Limit the test key, well inside a one-minute window (so the test's requests share one)."""
    fresh_window()
    ApiKey.objects.filter(account=gateway.account).update(**limits)
    gateway.refresh()


def assert_rate_limited(response, *, limit_header: str, limit: int) -> UsageRecord:
    assert response.status_code == 429
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers[limit_header] == str(limit)
    for what in ("requests", "tokens"):
        for part in ("limit", "remaining", "reset"):
            assert f"x-ratelimit-{part}-{what}" in response.headers
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "rate_limit_error")
    row = UsageRecord.objects.get(request_id=response.headers["x-request-id"])
    assert (row.status, row.billing_result, row.cost_usd) == (429, "not_billed", 0)
    assert (row.error_class, row.error_code) == ("quota_or_rate_limit", "rate_limit_exceeded")
    return row


def test_key_rpm_limit(gateway):
    limit_key(gateway, rpm_limit=2)
    assert [gateway.post("/v1/chat/completions", json=CHAT).status_code for _ in range(2)] == [200, 200]
    refused = gateway.post("/v1/chat/completions", json=CHAT)
    assert_rate_limited(refused, limit_header="x-ratelimit-limit-requests", limit=2)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(gateway.upstream.requests) == 2  # the refused request never reached the upstream
    with pytest.raises(openai.RateLimitError) as caught:
        gateway.openai().chat.completions.create(**CHAT)
    assert_sdk_error(caught.value, status=429, code="rate_limit_exceeded")


def test_key_tpm_limit_counts_settled_tokens(gateway):
    limit_key(gateway, tpm_limit=60)
    gateway.upstream.script(tokens={"prompt": 20, "completion": 15})
    assert (
        gateway.post("/v1/chat/completions", json=CHAT).status_code == 200
    )  # 35 tokens: the next reservation (~34) no longer fits
    # Tokens are counted in the background once the request settled: allow it a moment to land.
    for _ in range(20):
        response = gateway.post("/v1/chat/completions", json=CHAT)
        if response.status_code != 200:
            break
        time.sleep(0.05)
    assert_rate_limited(response, limit_header="x-ratelimit-limit-tokens", limit=60)


def test_account_rpm_limit_is_shared_by_its_keys(gateway):
    fresh_window()
    Account.objects.filter(pk=gateway.account.pk).update(rpm_limit=1)
    _, other = services.key_create(account=gateway.account, name="second")
    gateway.refresh()
    assert gateway.post("/v1/chat/completions", json=CHAT).status_code == 200
    refused = gateway.post("/v1/chat/completions", key=other, json=CHAT)
    assert_rate_limited(refused, limit_header="x-ratelimit-limit-requests", limit=1)
    assert "account" in refused.json()["error"]["message"]


def test_keys_without_limits_are_not_counted(gateway):
    assert all(gateway.post("/v1/chat/completions", json=CHAT).status_code == 200 for _ in range(3))


@pytest.mark.skipif(not settings.REDIS_URL, reason="counters are in Redis only when REDIS_URL is set")
def test_counters_live_in_redis_for_every_gateway_process(gateway):
    limit_key(gateway, rpm_limit=5)
    assert gateway.post("/v1/chat/completions", json=CHAT).status_code == 200
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        assert list(client.scan_iter("openbili-limits*"))
    finally:
        client.close()
