"""The reserve commits without waiting for its WAL flush (sql.RESERVE_MANY). If a database
crash loses it while the request is in flight, the request still ends with exactly one usage row,
not billed, and nothing is charged without a hold."""

import threading
import time

from django.db.models import F

from billing.models import Account, Hold
from tests.gateway.support import MSG, assert_ledger
from usage.models import UsageRecord


def lose_the_reserve() -> None:
    """What a crash before the reserve's WAL flush leaves behind: no hold, no row, nothing reserved."""
    deadline = time.monotonic() + 10
    while not UsageRecord.objects.filter(billing_result="pending").exists():
        assert time.monotonic() < deadline, "the request never reserved"
        time.sleep(0.01)
    row = UsageRecord.objects.get(billing_result="pending")
    hold = Hold.objects.get(pk=row.hold_id)
    row.delete()
    hold.delete()
    Account.objects.filter(pk=hold.account_id).update(reserved=F("reserved") - hold.amount)


def test_a_lost_reserve_ends_with_one_row_not_billed(gateway):
    gateway.upstream.script(delay_first_byte_ms=800)
    result = {}

    def call():
        result["response"] = gateway.post(
            "/v1/chat/completions", json={"model": "gpt-5", "messages": MSG, "max_tokens": 50}
        )

    worker = threading.Thread(target=call)
    worker.start()
    lose_the_reserve()
    worker.join(timeout=20)

    response = result["response"]
    assert response.status_code == 200
    row = gateway.row(response.headers["x-request-id"])
    assert UsageRecord.objects.filter(request_id=row.request_id).count() == 1
    assert (row.billing_result, row.cost_usd, row.status) == ("not_billed", 0, 200)
    assert "reservation was lost" in row.error_message
    assert row.output_tokens > 0  # what the upstream did is still on record
    assert_ledger(gateway.account.pk, spent=0)
