"""Balance and ledger (issue 11, Deliver 4): exact decimal strings, open holds as reserved, the
ledger newest first with its request and hold, and the balance equal to the ledger's sum."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import selectors, services
from billing.models import Account, LedgerEntry, Membership
from tests.api.conftest import Caller
from tests.api.test_auth import assert_error

pytestmark = pytest.mark.django_db

TINY = Decimal("0.000000000001")  # one unit of the last place a balance keeps


def post(caller: Caller, amount: str, kind: str = LedgerEntry.Kind.TOPUP, key: str | None = None, **kwargs):
    return services.ledger_post(
        account_id=caller.account.pk,
        kind=kind,
        amount=Decimal(amount),
        idempotency_key=key or f"test:{caller.account.pk}:{LedgerEntry.objects.count()}",
        **kwargs,
    )


def charge(caller: Caller, request_id: str, held: str, cost: str) -> int:
    hold_id = services.hold_reserve(account_id=caller.account.pk, request_id=request_id, amount=Decimal(held))
    services.hold_settle(hold_id=hold_id, cost=Decimal(cost))
    return hold_id


def ledger(caller: Caller, query: str = "") -> list[dict]:
    response = caller.client.get(caller.url("/ledger") + query)
    assert response.status_code == 200, response.content
    return response.json()["results"]


def every_entry(caller: Caller, query: str = "?page_size=2") -> list[dict]:
    entries, url = [], caller.url("/ledger") + query
    while url:
        page = caller.client.get(url)
        assert page.status_code == 200, page.content
        entries += page.json()["results"]
        url = page.json()["next"]
    return entries


# --- balance ---------------------------------------------------------------------------------------


def test_balance_reserved_credit_limit_and_available_are_exact_strings(alice):
    Account.objects.filter(pk=alice.account.pk).update(credit_limit=Decimal("25.5"))
    post(alice, str(TINY))
    charge(alice, "req_settled", held="2", cost="0.000000123456")
    services.hold_reserve(account_id=alice.account.pk, request_id="req_open", amount=Decimal("1.5"))
    response = alice.client.get(alice.url("/balance"))
    assert response.status_code == 200
    assert response.json() == {
        "account_id": alice.account.pk,
        "currency": "USD",
        "balance": "99.999999876545",  # 100 + 0.000000000001 - 0.000000123456
        "reserved": "1.500000000000",  # the open hold; the settled one is no longer reserved
        "credit_limit": "25.500000000000",
        "available": "123.999999876545",  # balance + credit limit - reserved
    }
    assert Decimal(response.json()["available"]) == Account.objects.get(pk=alice.account.pk).available


def test_the_ledgers_sum_is_the_balance(alice):
    post(alice, "12.345678901234")
    post(alice, "-0.000000000007", kind=LedgerEntry.Kind.ADJUSTMENT)
    for n in range(3):
        charge(alice, f"req_{n}", held="1", cost=f"0.00000000{n + 1}")
    post(alice, "0.5", kind=LedgerEntry.Kind.REFUND, reason="ticket 7")
    balance = Decimal(alice.client.get(alice.url("/balance")).json()["balance"])
    entries = every_entry(alice)
    assert len(entries) == 7
    assert (
        sum(Decimal(entry["amount"]) for entry in entries)
        == balance
        == selectors.ledger_sum(account_id=alice.account.pk)
    )
    assert str(balance) == "112.845678895227"  # 100 + 12.345678901234 - 7e-12 - 6e-9 + 0.5


def test_a_negative_balance_within_the_credit_limit_is_shown_signed(alice):
    Account.objects.filter(pk=alice.account.pk).update(credit_limit=Decimal("10"))
    post(alice, "-105", kind=LedgerEntry.Kind.ADJUSTMENT)
    body = alice.client.get(alice.url("/balance")).json()
    assert (body["balance"], body["available"]) == ("-5.000000000000", "5.000000000000")


# --- ledger ----------------------------------------------------------------------------------------


def test_entries_newest_first_with_their_request_and_hold(alice):
    hold_id = charge(alice, "req_abc", held="0.5", cost="0.000000020000")
    post(alice, "20", reason="wire transfer 42")
    entries = ledger(alice)
    # (the settle's SQL stamps now(), the test transaction's start: order is asserted elsewhere)
    topup = entries[0]
    usage = next(entry for entry in entries if entry["kind"] == "usage")
    opening = next(entry for entry in entries if entry["reason"] == "opening credit")
    assert topup | {"id": 0, "created_at": ""} == {
        "id": 0,
        "kind": "topup",
        "amount": "20.000000000000",
        "balance_after": "119.999999980000",
        "reason": "wire transfer 42",
        "created_at": "",
        "request_id": None,
        "hold": None,
        "ticket": None,
    }
    assert (usage["amount"], usage["balance_after"], usage["request_id"]) == (
        "-0.000000020000",
        "99.999999980000",
        "req_abc",
    )
    assert usage["hold"] == {"id": hold_id, "amount": "0.500000000000", "state": "settled"}
    assert (opening["reason"], opening["balance_after"]) == ("opening credit", "100.000000000000")
    assert set(topup) == {
        "id",
        "kind",
        "amount",
        "balance_after",
        "reason",
        "created_at",
        "request_id",
        "hold",
        "ticket",
    }


def test_one_entry(alice):
    charge(alice, "req_one", held="1", cost="0.25")
    entry = LedgerEntry.objects.get(request_id="req_one")
    response = alice.client.get(alice.url(f"/ledger/{entry.pk}"))
    assert response.status_code == 200
    assert response.json() == next(item for item in ledger(alice) if item["id"] == entry.pk)
    assert_error(alice.client.get(alice.url("/ledger/999999999")), 404, "not_found")
    assert_error(alice.client.get(alice.url(f"/ledger/{entry.pk}?kind=usage")), 400, "invalid_request", {"kind"})


def test_pages_follow_the_cursor_newest_first(alice):
    for n in range(5):
        post(alice, f"{n + 1}")
    amounts = [entry["amount"] for entry in every_entry(alice)]
    assert amounts == [f"{n}.000000000000" for n in (5, 4, 3, 2, 1, 100)]
    assert_error(alice.client.get(alice.url("/ledger?page_size=201")), 400, "invalid_request", {"page_size"})
    assert_error(alice.client.get(alice.url("/ledger?cursor=nope")), 400, "invalid_request", {"cursor"})


def test_filters_by_kind_request_and_time(alice):
    charge(alice, "req_x", held="1", cost="0.1")
    charge(alice, "req_y", held="1", cost="0.2")
    post(alice, "-1", kind=LedgerEntry.Kind.ADJUSTMENT)
    assert [entry["kind"] for entry in ledger(alice, "?kind=usage")] == ["usage", "usage"]
    assert [entry["amount"] for entry in ledger(alice, "?request_id=req_y")] == ["-0.200000000000"]
    assert ledger(alice, "?request_id=req_none") == []
    assert [entry["kind"] for entry in ledger(alice, "?kind=usage&request_id=req_x")] == ["usage"]
    adjustment = LedgerEntry.objects.get(kind="adjustment")
    at = adjustment.created_at.isoformat().replace("+00:00", "Z")
    assert [entry["id"] for entry in ledger(alice, f"?created_after={at}")] == [adjustment.pk]
    assert adjustment.pk not in [entry["id"] for entry in ledger(alice, f"?created_before={at}")]
    later = (timezone.now() + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert len(ledger(alice, f"?created_before={later}")) == 4
    assert ledger(alice, f"?created_after={later}") == []
    assert len(ledger(alice, "?created_after=2020-01-01")) == 4  # a date alone is its midnight
    # any offset Python reads, though PostgreSQL's own stop at ±15:59
    assert len(ledger(alice, "?created_after=0074-03-28T22:45:09-22:59")) == 4
    assert len(ledger(alice, "?created_before=9999-12-31T23:59:59%2B23:59")) == 4


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("created_after=yesterday", "created_after"),
        ("created_before=2026-13-01T00:00:00Z", "created_before"),
        ("created_before=0001-01-01T00:00:00%2B05:00", "created_before"),  # before year 1 in UTC
        ("kind=payment", "kind"),
        ("request_id=" + "x" * 65, "request_id"),
        ("amount=1", "amount"),
        ("ordering=amount", "ordering"),
    ],
)
def test_bad_and_unknown_parameters_are_400s_naming_them(alice, query, field):
    assert_error(alice.client.get(alice.url(f"/ledger?{query}")), 400, "invalid_request", {field})


def test_balance_takes_no_parameters(alice):
    assert_error(alice.client.get(alice.url("/balance?currency=EUR")), 400, "invalid_request", {"currency"})


def test_query_count_does_not_grow_with_entries(alice, django_assert_max_num_queries):
    charge(alice, "req_0", held="1", cost="0.1")
    alice.client.get(alice.url("/balance"))  # the token's last_used_at is written once
    with django_assert_max_num_queries(2):
        assert alice.client.get(alice.url("/balance")).status_code == 200
    with django_assert_max_num_queries(3):
        assert len(ledger(alice)) == 2
    for n in range(1, 40):
        charge(alice, f"req_{n}", held="1", cost="0.1")
        post(alice, "1")
    with django_assert_max_num_queries(3):
        assert len(ledger(alice)) == 50
    with django_assert_max_num_queries(3):
        assert len(ledger(alice, "?kind=usage&created_after=2020-01-01T00:00:00Z")) == 40
    entry = LedgerEntry.objects.filter(kind="usage").first()
    with django_assert_max_num_queries(3):
        assert alice.client.get(alice.url(f"/ledger/{entry.pk}")).status_code == 200


# --- roles, isolation, secrets --------------------------------------------------------------------


def test_a_member_reads_balance_and_ledger(alice):
    member = Caller("mia", role=Membership.Role.MEMBER, account=alice.account)
    charge(alice, "req_m", held="1", cost="0.5")
    entry = LedgerEntry.objects.get(request_id="req_m")
    assert member.client.get(member.url("/balance")).json() == alice.client.get(alice.url("/balance")).json()
    assert ledger(member) == ledger(alice)
    assert member.client.get(member.url(f"/ledger/{entry.pk}")).status_code == 200


def test_another_accounts_balance_ledger_and_entries_are_404(alice, bob):
    charge(bob, "req_bob", held="1", cost="0.5")
    theirs = list(LedgerEntry.objects.filter(account=bob.account))
    for tail in ("/balance", "/ledger", f"/ledger/{theirs[0].pk}"):
        assert_error(alice.client.get(bob.url(tail)), 404, "not_found")
    for entry in theirs:  # bob's ids under alice's own account
        assert_error(alice.client.get(alice.url(f"/ledger/{entry.pk}")), 404, "not_found")
    assert ledger(alice, "?request_id=req_bob") == []
    assert all(entry["id"] not in {e.pk for e in theirs} for entry in every_entry(alice))
    assert_error(alice.client.get("/api/v1/accounts/999999/balance"), 404, "not_found")


def test_no_response_carries_a_secret_or_a_hash(alice):
    key, secret = services.key_create(account=alice.account, name="k")
    hold_id = services.hold_reserve(
        account_id=alice.account.pk, request_id="req_s", amount=Decimal("1"), api_key_id=key.pk
    )
    services.hold_settle(hold_id=hold_id, cost=Decimal("0.1"))
    entry = LedgerEntry.objects.get(request_id="req_s")
    for tail in ("/balance", "/ledger", f"/ledger/{entry.pk}"):
        body = alice.client.get(alice.url(tail)).content.decode()
        assert secret not in body and key.key_hash not in body and key.prefix not in body
        assert alice.secret not in body
        assert "idempotency_key" not in body and "usage:req_s" not in body
