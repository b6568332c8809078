"""Concurrent requests can never spend the same credit twice (CONTRACT §2.2 Balance)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
from django.db import connection

from billing import money, selectors, services
from billing.models import Account, Hold
from tests.factories import AccountFactory
from tests.gateway.support import MSG, PRICES, assert_ledger, cost_of, wait_until
from usage.gateway.endpoints.base import TEMPLATE_TOKENS
from usage.models import UsageRecord

REQUESTS = 100
AFFORDABLE = 10


def test_an_account_that_can_afford_ten_requests_gets_ten_out_of_a_hundred(gateway):
    # given a request whose maximum cost (the hold) is known exactly
    body = json.dumps({"model": "gpt-5", "messages": MSG, "max_tokens": 100}).encode()
    hold = money.max_cost(PRICES, max_input_tokens=len(body) + TEMPLATE_TOKENS, max_output_tokens=100)
    # and an account with credit for exactly ten of them
    credit = hold * AFFORDABLE
    account = AccountFactory(credit=credit)
    key, secret = services.key_create(account=account, name="burst")
    # an upstream that holds every answer until all requests have been reserved or refused
    gateway.upstream.script(gate="burst", tokens={"prompt": 10, "completion": 8}, times=AFFORDABLE)

    lowest = {"balance": credit, "available": credit}
    done = threading.Event()

    def watch():  # samples the account while the burst runs
        try:
            while not done.is_set():
                acc = Account.objects.get(pk=account.pk)
                lowest["balance"] = min(lowest["balance"], acc.balance)
                lowest["available"] = min(lowest["available"], acc.available)
                done.wait(0.01)
        finally:
            connection.close()

    barrier = threading.Barrier(REQUESTS)

    def call(_):
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            return client.post(
                gateway.url + "/v1/chat/completions",
                content=body,
                headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
            )

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
            futures = [pool.submit(call, i) for i in range(REQUESTS)]
            wait_until(
                lambda: UsageRecord.objects.filter(api_key=key).count() == REQUESTS,
                what="every request reserved or refused",
            )
            gateway.upstream.open_gate("burst")
            responses = [future.result() for future in futures]
    finally:
        done.set()
        watcher.join()

    # then ten succeed and the rest are refused with 402, never calling upstream
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * AFFORDABLE + [402] * (REQUESTS - AFFORDABLE)
    for response in responses:
        if response.status_code == 402:
            assert response.json()["error"]["code"] == "insufficient_balance"
    assert len(gateway.upstream.requests) == AFFORDABLE
    assert lowest["balance"] >= 0
    assert lowest["available"] >= 0
    assert lowest["available"] < hold  # the watcher did see the credit fully reserved
    # one row per request, each billed or not billed as answered
    rows = UsageRecord.objects.filter(api_key=key)
    assert rows.count() == REQUESTS
    assert {r.headers["x-request-id"] for r in responses} == set(rows.values_list("request_id", flat=True))
    cost = cost_of(input_tokens=10, output_tokens=8)
    assert rows.filter(billing_result="billed", status=200, cost_usd=cost).count() == AFFORDABLE
    assert (
        rows.filter(billing_result="not_billed", status=402, error_code="insufficient_balance", cost_usd=0).count()
        == REQUESTS - AFFORDABLE
    )
    # and the ledger holds: balance = credit - 10 actual costs = ledger sum, nothing reserved or open
    assert_ledger(account.pk, spent=cost * AFFORDABLE, credit=credit)
    assert Account.objects.get(pk=account.pk).balance > 0
    assert Hold.objects.filter(account=account).count() == AFFORDABLE
    assert selectors.ledger_sum(account_id=account.pk) == credit - cost * AFFORDABLE
    # the first account was not touched
    assert_ledger(gateway.account.pk, spent=Decimal(0))
