"""Ledger and hold rules (CONTRACT §2.2, §3): balance == sum of entries, holds resolved at most once."""

import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from billing import selectors, services
from billing.models import Account, Hold, LedgerEntry
from billing.money import MoneyError, quantize_cost
from openbili.core.errors import IdempotencyConflict, InsufficientBalance, InvalidRequest
from tests.factories import AccountFactory
from usage.services import requests_sweep

pytestmark = pytest.mark.django_db


def open_holds_sum(account_id: int) -> Decimal:
    total = Hold.objects.filter(account_id=account_id, state=Hold.State.OPEN).aggregate(t=Sum("amount"))["t"]
    return total or Decimal(0)


def assert_ledger_consistent(account_id: int) -> Account:
    """The invariants of CONTRACT §3, checked from the database."""
    account = Account.objects.get(pk=account_id)
    assert account.balance == selectors.ledger_sum(account_id=account_id)
    assert account.reserved == open_holds_sum(account_id)
    # Every entry records the balance right after it: the entries replay to the balance.
    running = Decimal(0)
    for entry in LedgerEntry.objects.filter(account_id=account_id).order_by("id"):
        running += entry.amount
        assert entry.balance_after == running, entry
    assert running == account.balance
    return account


def reserve(account, amount, request_id, **kwargs) -> int:
    return services.hold_reserve(account_id=account.pk, request_id=request_id, amount=Decimal(amount), **kwargs)


# --- opening credit and ledger_post -------------------------------------------------------------


def test_account_create_posts_the_opening_credit_as_one_topup():
    account = AccountFactory(credit=Decimal("100"))

    entry = LedgerEntry.objects.get(account=account)
    assert (entry.kind, entry.amount, entry.balance_after) == ("topup", Decimal("100"), Decimal("100"))
    assert entry.idempotency_key == f"opening:{account.pk}"
    assert account.balance == Decimal("100")
    assert_ledger_consistent(account.pk)


def test_account_without_credit_has_no_entry():
    account = AccountFactory()

    assert account.balance == Decimal(0)
    assert not LedgerEntry.objects.filter(account=account).exists()


def test_topup_moves_the_balance_and_records_balance_after(account):
    entry = services.ledger_post(
        account_id=account.pk, kind="topup", amount=Decimal("25.000000000001"), idempotency_key="pay:1"
    )

    assert entry.amount == Decimal("25.000000000001")
    assert entry.balance_after == Decimal("125.000000000001")
    assert assert_ledger_consistent(account.pk).balance == Decimal("125.000000000001")


def test_negative_adjustment_and_refund(account):
    services.ledger_post(account_id=account.pk, kind="adjustment", amount="-30", idempotency_key="adj:1")
    services.ledger_post(account_id=account.pk, kind="refund", amount="0.5", idempotency_key="ref:1")

    assert assert_ledger_consistent(account.pk).balance == Decimal("70.5")


def test_same_idempotency_key_twice_returns_the_first_entry(account):
    first = services.ledger_post(account_id=account.pk, kind="topup", amount="10", idempotency_key="pay:42")
    second = services.ledger_post(
        account_id=account.pk, kind="topup", amount=Decimal("10.00"), idempotency_key="pay:42"
    )

    assert second.pk == first.pk
    assert LedgerEntry.objects.filter(idempotency_key="pay:42").count() == 1
    assert assert_ledger_consistent(account.pk).balance == Decimal("110")


@pytest.mark.parametrize(
    ("kind", "amount", "other_account"),
    [
        ("topup", "11", False),  # different amount
        ("adjustment", "10", False),  # different kind
        ("topup", "10", True),  # different account
    ],
)
def test_same_key_for_a_different_operation_is_a_conflict(account, kind, amount, other_account):
    services.ledger_post(account_id=account.pk, kind="topup", amount="10", idempotency_key="pay:7")
    target = AccountFactory(credit=Decimal("3")) if other_account else account
    entries_before = LedgerEntry.objects.count()

    with pytest.raises(IdempotencyConflict):
        services.ledger_post(account_id=target.pk, kind=kind, amount=amount, idempotency_key="pay:7")

    assert LedgerEntry.objects.count() == entries_before
    assert assert_ledger_consistent(account.pk).balance == Decimal("110")
    if other_account:
        assert assert_ledger_consistent(target.pk).balance == Decimal("3")


@pytest.mark.parametrize(
    ("kind", "amount"),
    [
        ("topup", "0"),
        ("topup", "-5"),
        ("refund", "0"),
        ("refund", "-1"),
        ("adjustment", "0"),
        ("usage", "-1"),  # usage charges only come from settling a hold
        ("usage", "1"),
        ("bonus", "1"),
    ],
)
def test_sign_and_kind_rules_refuse_and_post_nothing(account, kind, amount):
    with pytest.raises(InvalidRequest):
        services.ledger_post(account_id=account.pk, kind=kind, amount=amount, idempotency_key="k:1")

    assert not LedgerEntry.objects.filter(idempotency_key="k:1").exists()
    assert assert_ledger_consistent(account.pk).balance == Decimal("100")


def test_ledger_post_refuses_a_missing_key_and_float_amounts(account):
    with pytest.raises(InvalidRequest):
        services.ledger_post(account_id=account.pk, kind="topup", amount="1", idempotency_key="")
    with pytest.raises(MoneyError):
        services.ledger_post(account_id=account.pk, kind="topup", amount=0.1, idempotency_key="k:f")

    assert LedgerEntry.objects.filter(account=account).count() == 1  # the opening credit only
    assert assert_ledger_consistent(account.pk).balance == Decimal("100")


# --- reserve -------------------------------------------------------------------------------------


def test_reserve_creates_an_open_hold_and_raises_reserved(account):
    hold_id = reserve(account, "2.5", "req_1")

    hold = Hold.objects.get(pk=hold_id)
    assert (hold.state, hold.amount, hold.request_id) == ("open", Decimal("2.5"), "req_1")
    assert hold.expires_at > hold.created_at
    account = assert_ledger_consistent(account.pk)
    assert account.reserved == Decimal("2.5")
    assert account.balance == Decimal("100")  # a hold moves no money
    assert account.available == Decimal("97.5")


def test_reserve_exactly_the_available_credit_succeeds(account):
    reserve(account, "60", "req_1")

    reserve(account, "40", "req_2")

    assert assert_ledger_consistent(account.pk).available == Decimal(0)


def test_reserve_beyond_available_is_refused_without_a_hold(account):
    reserve(account, "60", "req_1")

    with pytest.raises(InsufficientBalance):
        reserve(account, "40.000000000001", "req_2")

    assert not Hold.objects.filter(request_id="req_2").exists()
    assert assert_ledger_consistent(account.pk).reserved == Decimal("60")


def test_reserve_refuses_negative_amounts(account):
    with pytest.raises(InvalidRequest):
        reserve(account, "-1", "req_neg")

    assert not Hold.objects.exists()


def test_reserve_with_a_used_request_id_does_not_reserve_twice(account):
    reserve(account, "5", "req_dup")

    with pytest.raises(IntegrityError), transaction.atomic():
        reserve(account, "5", "req_dup")

    assert Hold.objects.filter(request_id="req_dup").count() == 1
    assert assert_ledger_consistent(account.pk).reserved == Decimal("5")


def test_suspended_account_cannot_reserve(account):
    Account.objects.filter(pk=account.pk).update(status=Account.Status.SUSPENDED)

    with pytest.raises(InsufficientBalance):
        reserve(account, "1", "req_1")

    assert not Hold.objects.exists()
    assert assert_ledger_consistent(account.pk).reserved == Decimal(0)


def test_credit_limit_lets_the_balance_go_down_to_minus_the_limit_and_no_further():
    account = AccountFactory(credit=Decimal("5"), credit_limit=Decimal("5"))
    hold_id = reserve(account, "10", "req_1")

    result = services.hold_settle(hold_id=hold_id, cost=Decimal("10"))

    assert result.charged == Decimal("10")
    account = assert_ledger_consistent(account.pk)
    assert account.balance == Decimal("-5")
    with pytest.raises(InsufficientBalance):
        reserve(account, "0.000000000001", "req_2")
    assert not Hold.objects.filter(request_id="req_2").exists()
    assert assert_ledger_consistent(account.pk).balance == Decimal("-5")


def test_credit_limit_counts_towards_available():
    account = AccountFactory(credit=Decimal("5"), credit_limit=Decimal("5"))

    with pytest.raises(InsufficientBalance):
        reserve(account, "10.000000000001", "req_1")
    reserve(account, "10", "req_2")

    assert assert_ledger_consistent(account.pk).reserved == Decimal("10")


# --- settle and release ----------------------------------------------------------------------------


def test_settle_charges_the_cost_and_frees_the_rest(account):
    hold_id = reserve(account, "2", "req_1")

    result = services.hold_settle(hold_id=hold_id, cost=Decimal("0.00000002"))

    assert result.resolved is True
    assert result.charged == Decimal("0.00000002")
    entry = LedgerEntry.objects.get(pk=result.entry_id)
    assert (entry.kind, entry.amount) == ("usage", Decimal("-0.00000002"))
    assert entry.balance_after == Decimal("99.99999998")
    assert (entry.hold_id, entry.request_id, entry.idempotency_key) == (hold_id, "req_1", "usage:req_1")
    hold = Hold.objects.get(pk=hold_id)
    assert (hold.state, hold.settled_amount) == ("settled", Decimal("0.00000002"))
    assert hold.resolved_at is not None
    account = assert_ledger_consistent(account.pk)
    assert (account.balance, account.reserved) == (Decimal("99.99999998"), Decimal(0))


def test_settle_charges_at_most_the_hold_amount(account):
    hold_id = reserve(account, "1.5", "req_1")

    result = services.hold_settle(hold_id=hold_id, cost=Decimal("7"))

    assert result.charged == Decimal("1.5")
    assert LedgerEntry.objects.get(pk=result.entry_id).amount == Decimal("-1.5")
    assert Hold.objects.get(pk=hold_id).settled_amount == Decimal("1.5")
    assert assert_ledger_consistent(account.pk).balance == Decimal("98.5")


def test_settle_twice_charges_once(account):
    hold_id = reserve(account, "3", "req_1")
    services.hold_settle(hold_id=hold_id, cost=Decimal("1"))

    replay = services.hold_settle(hold_id=hold_id, cost=Decimal("2"))

    assert (replay.resolved, replay.charged, replay.entry_id) == (False, Decimal(0), None)
    assert LedgerEntry.objects.filter(kind="usage").count() == 1
    assert Hold.objects.get(pk=hold_id).settled_amount == Decimal("1")
    assert assert_ledger_consistent(account.pk).balance == Decimal("99")


def test_release_after_settle_does_nothing(account):
    hold_id = reserve(account, "3", "req_1")
    services.hold_settle(hold_id=hold_id, cost=Decimal("1"))

    result = services.hold_release(hold_id=hold_id)

    assert result.resolved is False
    assert Hold.objects.get(pk=hold_id).state == "settled"
    account = assert_ledger_consistent(account.pk)
    assert (account.balance, account.reserved) == (Decimal("99"), Decimal(0))


def test_settle_with_zero_cost_releases_without_an_entry(account):
    hold_id = reserve(account, "3", "req_1")

    result = services.hold_settle(hold_id=hold_id, cost=Decimal(0))

    assert (result.resolved, result.charged, result.entry_id) == (True, Decimal(0), None)
    assert Hold.objects.get(pk=hold_id).state == "released"
    assert not LedgerEntry.objects.filter(kind="usage").exists()
    account = assert_ledger_consistent(account.pk)
    assert (account.balance, account.reserved) == (Decimal("100"), Decimal(0))


def test_settle_after_release_charges_nothing(account):
    hold_id = reserve(account, "3", "req_1")
    assert services.hold_release(hold_id=hold_id).resolved is True

    result = services.hold_settle(hold_id=hold_id, cost=Decimal("1"))

    assert result.resolved is False
    assert Hold.objects.get(pk=hold_id).state == "released"
    assert not LedgerEntry.objects.filter(kind="usage").exists()
    assert assert_ledger_consistent(account.pk).balance == Decimal("100")


def test_settle_refuses_negative_or_over_precise_costs(account):
    hold_id = reserve(account, "3", "req_1")

    with pytest.raises(InvalidRequest):
        services.hold_settle(hold_id=hold_id, cost=Decimal("-1"))
    with pytest.raises(MoneyError):
        services.hold_settle(hold_id=hold_id, cost=Decimal("0.0000000000001"))

    assert Hold.objects.get(pk=hold_id).state == "open"
    assert assert_ledger_consistent(account.pk).reserved == Decimal("3")


def test_settle_of_an_unknown_hold_does_nothing(account):
    result = services.hold_settle(hold_id=987654321, cost=Decimal("1"))

    assert result.resolved is False
    assert assert_ledger_consistent(account.pk).balance == Decimal("100")


# --- sweeper -------------------------------------------------------------------------------------


def expire(*hold_ids: int) -> None:
    Hold.objects.filter(pk__in=hold_ids).update(expires_at=timezone.now() - timedelta(minutes=1))


def test_sweep_releases_expired_open_holds_only(account):
    expired_open = reserve(account, "1", "req_expired")
    fresh_open = reserve(account, "2", "req_fresh")
    expired_settled = reserve(account, "4", "req_settled")
    services.hold_settle(hold_id=expired_settled, cost=Decimal("3"))
    expire(expired_open, expired_settled)

    released = requests_sweep()

    assert released == 1
    states = dict(Hold.objects.values_list("request_id", "state"))
    assert states == {"req_expired": "released", "req_fresh": "open", "req_settled": "settled"}
    assert Hold.objects.get(pk=expired_settled).settled_amount == Decimal("3")
    account = assert_ledger_consistent(account.pk)
    assert (account.balance, account.reserved) == (Decimal("97"), Decimal("2"))
    assert fresh_open  # still open, still reserved

    assert requests_sweep() == 0


def test_sweep_respects_its_limit(account):
    hold_ids = [reserve(account, "1", f"req_{n}") for n in range(3)]
    expire(*hold_ids)

    assert requests_sweep(limit=2) == 2
    assert requests_sweep(limit=2) == 1
    assert requests_sweep(limit=2) == 0
    assert assert_ledger_consistent(account.pk).reserved == Decimal(0)


def test_expired_hold_settled_after_the_sweep_is_not_charged(account):
    hold_id = reserve(account, "1", "req_1")
    expire(hold_id)
    requests_sweep()

    result = services.hold_settle(hold_id=hold_id, cost=Decimal("0.5"))

    assert result.resolved is False
    assert not LedgerEntry.objects.filter(kind="usage").exists()
    assert assert_ledger_consistent(account.pk).balance == Decimal("100")


def test_short_ttl_sets_the_expiry(account):
    hold_id = reserve(account, "1", "req_1", ttl_seconds=5)

    hold = Hold.objects.get(pk=hold_id)
    assert hold.expires_at - hold.created_at == timedelta(seconds=5)


# --- any sequence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_invariants_hold_after_any_sequence_of_operations(seed):
    """Random top-ups, adjustments, refunds, reserves, settles, releases and sweeps."""
    rng = random.Random(seed)
    account = AccountFactory(credit=Decimal("20"), credit_limit=Decimal(rng.choice(["0", "3"])))
    open_holds: list[int] = []
    resolved_holds: list[int] = []
    floor = -account.credit_limit

    def money() -> Decimal:
        return Decimal(rng.randint(1, 5_000_000_000_000)) / Decimal(10**12)

    for step in range(120):
        op = rng.choice(["topup", "adjust", "refund", "replay", "reserve", "reserve", "settle", "release", "sweep"])
        if op == "topup":
            services.ledger_post(account_id=account.pk, kind="topup", amount=money(), idempotency_key=f"t:{step}")
        elif op == "adjust":
            amount = money() * rng.choice([1, -1])
            services.ledger_post(account_id=account.pk, kind="adjustment", amount=amount, idempotency_key=f"a:{step}")
        elif op == "refund":
            services.ledger_post(account_id=account.pk, kind="refund", amount=money(), idempotency_key=f"r:{step}")
        elif op == "replay":
            entry = LedgerEntry.objects.filter(account=account).exclude(kind="usage").order_by("?").first()
            again = services.ledger_post(
                account_id=account.pk, kind=entry.kind, amount=entry.amount, idempotency_key=entry.idempotency_key
            )
            assert again.pk == entry.pk
        elif op == "reserve":
            before = Account.objects.get(pk=account.pk)
            amount = money()
            try:
                open_holds.append(reserve(account, amount, f"req_{step}"))
            except InsufficientBalance:
                assert before.available < amount or before.status != "active"
            else:
                assert before.available >= amount
        elif op in ("settle", "release") and (open_holds or resolved_holds):
            pick_resolved = resolved_holds and (not open_holds or rng.random() < 0.2)
            hold_id = rng.choice(resolved_holds if pick_resolved else open_holds)
            hold = Hold.objects.get(pk=hold_id)
            cost = quantize_cost(hold.amount * Decimal(rng.choice(["0", "0.3", "1", "1.7"])))
            result = (
                services.hold_settle(hold_id=hold_id, cost=cost)
                if op == "settle"
                else services.hold_release(hold_id=hold_id)
            )
            assert result.resolved is (hold_id in open_holds)
            if result.resolved:
                open_holds.remove(hold_id)
                resolved_holds.append(hold_id)
                assert result.charged == (min(cost, hold.amount) if op == "settle" else 0)
        elif op == "sweep" and open_holds:
            victim = rng.choice(open_holds)
            expire(victim)
            assert requests_sweep() == 1
            open_holds.remove(victim)
            resolved_holds.append(victim)

        current = assert_ledger_consistent(account.pk)
        assert current.reserved == sum((Hold.objects.get(pk=h).amount for h in open_holds), Decimal(0))
        usage_entries = LedgerEntry.objects.filter(account=account, kind="usage")
        assert all(e.balance_after >= floor for e in usage_entries)  # holds never overdraw the floor
