"""Concurrent requests can never spend the same credit twice (CONTRACT §2.2) — on real PostgreSQL.

Each test commits for real (transaction=True) and races threads, each with its own connection,
released from a Barrier so that they hit the database together.
"""

import random
import threading
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from billing import selectors, services
from billing.models import Account, Hold, LedgerEntry
from tests.factories import AccountFactory
from usage.services import requests_sweep

pytestmark = pytest.mark.django_db(transaction=True)


def race(fn, args: list) -> list[tuple[str, object]]:
    """Call fn(arg) for every arg in its own thread, all starting together.

    Returns ("ok", result) or ("error", exception) per arg, in order.
    """
    barrier = threading.Barrier(len(args))
    results: list = [None] * len(args)

    def worker(index: int, arg) -> None:
        try:
            connection.ensure_connection()  # connect before the barrier: the race is on the queries
            barrier.wait(timeout=20)
            results[index] = ("ok", fn(arg))
        except Exception as exc:
            results[index] = ("error", exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, arg)) for i, arg in enumerate(args)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    return results


def assert_ledger_consistent(account_id: int) -> Account:
    account = Account.objects.get(pk=account_id)
    open_total = Hold.objects.filter(account_id=account_id, state="open").aggregate(t=Sum("amount"))["t"]
    assert account.balance == selectors.ledger_sum(account_id=account_id)
    assert account.reserved == (open_total or Decimal(0))
    # Entries replay, in id order, to the balance: every change was serialised on the account row.
    running = Decimal(0)
    for entry in LedgerEntry.objects.filter(account_id=account_id).order_by("id"):
        running += entry.amount
        assert entry.balance_after == running
        assert entry.balance_after >= -account.credit_limit  # never below the floor, at any point
    return account


@pytest.mark.parametrize(("credit", "credit_limit"), [("10", "0"), ("5", "5")], ids=["prepaid", "credit-limit"])
def test_fifty_concurrent_reserves_spend_ten_dollars_once_then_settle(credit, credit_limit):
    account = AccountFactory(credit=Decimal(credit), credit_limit=Decimal(credit_limit))

    # When: 50 requests race to reserve $1 each against exactly $10 available.
    reserves = race(
        lambda n: services.hold_reserve(account_id=account.pk, request_id=f"req_{n}", amount=Decimal(1)),
        list(range(50)),
    )

    # Then: exactly 10 win; the other 40 get InsufficientBalance and leave no hold.
    outcomes = Counter(type(value).__name__ if kind == "error" else kind for kind, value in reserves)
    assert outcomes == {"ok": 10, "InsufficientBalance": 40}
    hold_ids = [value for kind, value in reserves if kind == "ok"]
    assert Hold.objects.filter(account=account).count() == 10
    account = assert_ledger_consistent(account.pk)
    assert (account.balance, account.reserved, account.available) == (Decimal(credit), Decimal(10), Decimal(0))

    # When: every hold is settled concurrently with a random cost of at most $1.
    rng = random.Random(2024)
    costs = [Decimal(rng.randint(0, 10**12)) / Decimal(10**12) for _ in hold_ids]
    costs[0] = Decimal(1)  # the whole hold
    costs[1] = Decimal(0)  # nothing consumed: released, no entry
    settles = race(
        lambda pair: services.hold_settle(hold_id=pair[0], cost=pair[1]), list(zip(hold_ids, costs, strict=True))
    )

    # Then: each resolved once, and the balance moved by exactly the sum of the costs.
    assert all(kind == "ok" and value.resolved for kind, value in settles)
    assert [value.charged for _, value in settles] == costs
    account = assert_ledger_consistent(account.pk)
    assert account.balance == Decimal(credit) - sum(costs)
    assert account.reserved == Decimal(0)
    assert LedgerEntry.objects.filter(account=account, kind="usage").count() == 9
    assert not Hold.objects.filter(account=account, state="open").exists()


def test_twenty_concurrent_posts_of_one_idempotency_key_move_the_balance_once():
    account = AccountFactory(credit=Decimal("1"))

    results = race(
        lambda _: services.ledger_post(
            account_id=account.pk, kind="topup", amount=Decimal("7.5"), idempotency_key="stripe:pi_123"
        ),
        list(range(20)),
    )

    assert all(kind == "ok" for kind, _ in results), results
    assert len({value.pk for _, value in results}) == 1  # every caller got the same entry
    assert LedgerEntry.objects.filter(idempotency_key="stripe:pi_123").count() == 1
    assert assert_ledger_consistent(account.pk).balance == Decimal("8.5")


OPS = ["settle", "release"] * 5  # the gateway finishing a request vs. the sweeper releasing it


def test_concurrent_settle_and_release_of_one_hold_resolve_it_once():
    account = AccountFactory(credit=Decimal("10"))
    for round_ in range(8):
        hold_id = services.hold_reserve(account_id=account.pk, request_id=f"req_{round_}", amount=Decimal("0.5"))
        balance_before = Account.objects.get(pk=account.pk).balance

        # 5 settles (cost 0.3) and 5 releases race on the same hold.
        def act(op: str, hold_id: int = hold_id):
            if op == "settle":
                return services.hold_settle(hold_id=hold_id, cost=Decimal("0.3"))
            return services.hold_release(hold_id=hold_id)

        results = race(act, OPS)

        assert all(kind == "ok" for kind, _ in results), results
        winners = [(op, value) for op, (_, value) in zip(OPS, results, strict=True) if value.resolved]
        assert len(winners) == 1
        op, winner = winners[0]
        hold = Hold.objects.get(pk=hold_id)
        usage = LedgerEntry.objects.filter(hold_id=hold_id)
        balance = assert_ledger_consistent(account.pk).balance
        if op == "settle":
            assert (hold.state, winner.charged, usage.count()) == ("settled", Decimal("0.3"), 1)
            assert balance == balance_before - Decimal("0.3")
        else:
            assert (hold.state, winner.charged, usage.count()) == ("released", Decimal(0), 0)
            assert balance == balance_before


def test_concurrent_reserves_and_posts_on_one_account_keep_the_ledger_exact():
    """Top-ups (ORM row lock) interleaved with reserves and settles (single SQL statements)."""
    account = AccountFactory(credit=Decimal("3"))
    hold_ids = [
        services.hold_reserve(account_id=account.pk, request_id=f"pre_{n}", amount=Decimal("0.2")) for n in range(10)
    ]

    def act(arg):
        op, n = arg
        if op == "topup":
            return services.ledger_post(account_id=account.pk, kind="topup", amount="0.25", idempotency_key=f"t:{n}")
        if op == "settle":
            return services.hold_settle(hold_id=hold_ids[n], cost=Decimal("0.15"))
        return services.hold_reserve(account_id=account.pk, request_id=f"req_{n}", amount=Decimal("0.1"))

    results = race(act, [(op, n) for n in range(10) for op in ("topup", "settle", "reserve")])

    assert all(kind == "ok" for kind, _ in results), results
    account = assert_ledger_consistent(account.pk)
    assert account.balance == Decimal("3") + 10 * Decimal("0.25") - 10 * Decimal("0.15")
    assert account.reserved == 10 * Decimal("0.1")


def test_sweepers_racing_settles_resolve_every_expired_hold_once():
    account = AccountFactory(credit=Decimal("10"))
    hold_ids = [
        services.hold_reserve(account_id=account.pk, request_id=f"req_{n}", amount=Decimal("0.4")) for n in range(20)
    ]
    Hold.objects.filter(pk__in=hold_ids).update(expires_at=timezone.now() - timedelta(minutes=1))

    results = race(
        lambda arg: requests_sweep() if arg == "sweep" else services.hold_settle(hold_id=arg, cost=Decimal("0.1")),
        ["sweep", "sweep", "sweep", *hold_ids],
    )

    assert all(kind == "ok" for kind, _ in results), results
    swept = sum(value for _, value in results[:3])
    settled = [value for _, value in results[3:] if value.resolved]
    assert swept + len(settled) == 20  # each hold resolved by exactly one of them
    assert Hold.objects.filter(state="released").count() == swept
    assert LedgerEntry.objects.filter(kind="usage").count() == len(settled)
    account = assert_ledger_consistent(account.pk)
    assert account.balance == Decimal("10") - len(settled) * Decimal("0.1")
    assert account.reserved == Decimal(0)
