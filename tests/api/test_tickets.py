"""Diagnostic tickets through the dashboard API (issue 12; CONTRACT §5): a ticket opened from a
usage row of every error class and billing result carries the exact no-secret bundle, frozen;
opening twice returns the same ticket; another account's requests and tickets are 404s; internal
notes never reach the customer; refunds move the balance once, through the ledger, linked to the
ticket; creation is rate limited per account; bad input is a 4xx that writes nothing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.core import mail
from django.core.cache import cache
from django.db import connection
from django.db.models import Sum
from rest_framework.test import APIClient

from billing import services as billing_services
from billing.models import Account, LedgerEntry, Membership
from billing.selectors import price_snapshot_current
from tests.api.conftest import Caller, make_user, token_for
from tests.api.test_auth import assert_error
from tests.api.test_usage import make_row
from tests.factories import CatalogModelFactory, make_visible_model
from tickets import services
from tickets.api.views import TicketCreateThrottle
from tickets.models import Ticket, TicketMessage
from usage.models import UsageRecord

AT = datetime(2026, 11, 20, 12, 30, 15, 250000, tzinfo=UTC)
TICKETS = "/api/v1/tickets"


@pytest.fixture(autouse=True)
def fresh_throttle():
    """Throttle counters live in the shared cache (Redis): every test starts from none."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def snapshot(db):
    return price_snapshot_current(make_visible_model(CatalogModelFactory(name="gpt-5")))


@pytest.fixture
def key(alice):
    key, _ = billing_services.key_create(account=alice.account, name="prod")
    return key


def open_ticket(caller: Caller, request_id: str, **fields):
    body = {"request_id": request_id, "subject": "It failed"} | fields
    return caller.client.post(TICKETS, body, format="json")


def snapshot_json(snapshot) -> dict:
    return {
        "id": snapshot.pk,
        "model": "gpt-5",
        "currency": "USD",
        "input_per_mtok": "1.2500000000",
        "output_per_mtok": "10.0000000000",
        "cached_input_per_mtok": "0.1250000000",
        "cache_write_per_mtok": "0.0000000000",
        "per_image": "0.0000000000",
        "per_request": "0.0000000000",
    }


ADVICE = {
    "": "The request succeeded: nothing to retry. Support checks its charge against the price snapshot.",
    "invalid_request": "Fix the request; do not retry it as is.",
    "auth_or_key_scope": "Check the key with GET /v1/models; rotate it if it was exposed.",
    "quota_or_rate_limit": "Top up or wait for the budget period; on 429 wait at least Retry-After "
    "seconds, then retry once. If it repeats, open a ticket.",
    "model_unavailable": "Choose a model returned by /v1/models; open a ticket if the business needs it.",
    "upstream_or_platform_error": "Wait briefly and retry once; if the same model keeps failing, open a ticket.",
    "stream_interrupted": "If output was already received, do not blindly replay non-idempotent work; "
    "open a ticket with the request_id and trace_id.",
}

# (status, error_class, error_code, billing_result, cost, stream, output reached the client, disconnected)
CASES = {
    "billing dispute on a success": (200, "", "", "billed", "0.012345678901", False, True, None),
    "invalid request": (400, "invalid_request", "invalid_json", "not_billed", "0", False, False, None),
    "key scope": (403, "auth_or_key_scope", "model_not_allowed", "not_billed", "0", False, False, None),
    "rate limit": (429, "quota_or_rate_limit", "rate_limit_exceeded", "not_billed", "0", True, False, None),
    "balance": (402, "quota_or_rate_limit", "insufficient_balance", "not_billed", "0", False, False, None),
    "model not ready": (404, "model_unavailable", "model_not_ready", "not_billed", "0", False, False, None),
    "upstream error with usage": (
        502, "upstream_or_platform_error", "upstream_error", "failed_but_billable", "0.000031250000",
        False, False, None,
    ),
    "cut stream": (
        200, "stream_interrupted", "upstream_stream_interrupted", "failed_but_billable", "0.000412500000",
        True, True, None,
    ),
    "client went away": (
        200, "stream_interrupted", "client_disconnected", "failed_but_billable", "0.000100000001",
        True, True, AT + timedelta(seconds=3, microseconds=500),
    ),
}  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize("case", list(CASES))
def test_a_ticket_from_a_usage_row_carries_its_exact_bundle(alice, key, snapshot, case):
    status, error_class, error_code, billing_result, cost, stream, reached, disconnected = CASES[case]
    row = make_row(
        alice.account,
        key=key,
        at=AT,
        status=status,
        error_class=error_class,
        error_code=error_code,
        error_message="Upstream said: quoting your prompt 'the secret plan'",
        billing_result=billing_result,
        cost_usd=Decimal(cost),
        price_snapshot=snapshot,
        stream=stream,
        output_reached_client=reached,
        client_disconnected_at=disconnected,
        input_tokens=25,
        output_tokens=3,
    )
    response = open_ticket(alice, row.request_id, description="Failed twice.", tried="Retried once.")
    assert response.status_code == 201, response.content
    ticket = response.json()
    expected = {
        "source": "usage",
        "request_id": row.request_id,
        "trace_id": row.trace_id,
        "model": "gpt-5",
        "endpoint": "/v1/chat/completions",
        "status": status,
        "error_class": error_class or None,
        "error_code": error_code or None,
        "key_prefix": key.prefix,
        "occurred_at": "2026-11-20T12:30:15.250000Z",
        "retry_advice": ADVICE[error_class],
        "cost_usd": f"{Decimal(cost):.12f}",
        "billing_result": billing_result,
        "price_snapshot": snapshot_json(snapshot),
        "stream": stream,
        "tokens_received": reached,
        "client_disconnected_at": "2026-11-20T12:30:18.250500Z" if disconnected else None,
    }
    assert ticket["bundle"] == expected
    assert Ticket.objects.get(pk=ticket["id"]).bundle == expected  # stored as shown
    assert {k: ticket[k] for k in ("request_id", "subject", "description", "tried", "status", "model")} == {
        "request_id": row.request_id,
        "subject": "It failed",
        "description": "Failed twice.",
        "tried": "Retried once.",
        "status": "open",
        "model": "gpt-5",
    }
    assert (ticket["error_class"], ticket["billing_result"]) == (error_class, billing_result)
    assert ticket["messages"] == [] and ticket["refunds"] == []
    # the bundle alone, to paste anywhere: the same JSON
    alone = alice.client.get(f"/api/v1/usage/{row.request_id}/bundle")
    assert alone.status_code == 200 and alone.json() == expected
    # never the upstream's message (it may quote the request), the key's hash or any secret
    text = response.content.decode() + alone.content.decode()
    assert "secret plan" not in text and key.key_hash not in text


@pytest.mark.django_db
def test_the_bundle_is_a_snapshot_later_changes_to_the_row_do_not_rewrite_it(alice, key, snapshot):
    row = make_row(alice.account, key=key, status=502, error_class="upstream_or_platform_error",
                   error_code="upstream_error", billing_result="not_billed", price_snapshot=snapshot)  # fmt: skip
    ticket = open_ticket(alice, row.request_id).json()
    UsageRecord.objects.filter(pk=row.pk).update(cost_usd=Decimal("9"), billing_result="failed_but_billable")
    again = alice.client.get(f"{TICKETS}/{ticket['id']}").json()
    assert again["bundle"] == ticket["bundle"] and again["bundle"]["cost_usd"] == "0.000000000000"
    assert alice.client.get(f"/api/v1/usage/{row.request_id}/bundle").json()["cost_usd"] == "9.000000000000"


@pytest.mark.django_db
def test_opening_twice_returns_the_existing_ticket_200(alice, key):
    member = Caller("mallory", role=Membership.Role.MEMBER, account=alice.account)
    row = make_row(alice.account, key=key, status=429, error_class="quota_or_rate_limit",
                   error_code="rate_limit_exceeded", billing_result="not_billed")  # fmt: skip
    first = open_ticket(alice, row.request_id)
    second = open_ticket(member, row.request_id, subject="Another subject")
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"] and second.json()["subject"] == "It failed"
    assert Ticket.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_opens_of_one_request_make_one_ticket(alice, key):
    row = make_row(alice.account, key=key, status=502, error_class="upstream_or_platform_error",
                   error_code="upstream_error", billing_result="not_billed")  # fmt: skip
    barrier = threading.Barrier(6)
    answers: list[tuple[int, int]] = []

    def open_one() -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {alice.secret}")
        barrier.wait()
        response = client.post(TICKETS, {"request_id": row.request_id, "subject": "x"}, format="json")
        answers.append((response.status_code, response.json()["id"]))
        connection.close()

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Ticket.objects.count() == 1
    assert sorted(status for status, _ in answers) == [200] * 5 + [201], answers
    assert {ticket_id for _, ticket_id in answers} == {Ticket.objects.get().pk}


@pytest.mark.django_db
def test_a_request_still_in_flight_cannot_have_a_ticket_yet(alice, key):
    row = make_row(alice.account, key=key, billing_result="pending", status=None)
    assert_error(open_ticket(alice, row.request_id), 409, "conflict")
    assert not Ticket.objects.exists()


@pytest.mark.django_db
def test_another_accounts_requests_and_tickets_are_404(alice, bob, key):
    row = make_row(alice.account, key=key, status=502, error_class="upstream_or_platform_error",
                   error_code="upstream_error", billing_result="not_billed")  # fmt: skip
    ticket = open_ticket(alice, row.request_id).json()
    theirs = make_row(bob.account, status=400, error_class="invalid_request", error_code="invalid_json",
                      billing_result="not_billed")  # fmt: skip
    bob_ticket = open_ticket(bob, theirs.request_id).json()
    for response in (
        open_ticket(bob, row.request_id),
        bob.client.get(f"{TICKETS}/{ticket['id']}"),
        bob.client.post(f"{TICKETS}/{ticket['id']}/replies", {"body": "hi"}, format="json"),
        bob.client.get(f"/api/v1/usage/{row.request_id}/bundle"),
        open_ticket(alice, "req_does_not_exist"),
        alice.client.get(f"{TICKETS}/999999"),
    ):
        assert_error(response, 404, "not_found")
    assert [t["id"] for t in alice.client.get(TICKETS).json()["results"]] == [ticket["id"]]
    assert [t["id"] for t in bob.client.get(TICKETS).json()["results"]] == [bob_ticket["id"]]
    assert not TicketMessage.objects.exists()
    # a former member loses them at once
    Membership.objects.filter(user=bob.user).delete()
    assert_error(bob.client.get(f"{TICKETS}/{bob_ticket['id']}"), 404, "not_found")
    assert bob.client.get(TICKETS).json()["results"] == []


@pytest.mark.django_db
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(alice, key):
    row = make_row(alice.account, key=key, status=502, error_class="upstream_or_platform_error",
                   error_code="upstream_error", billing_result="not_billed")  # fmt: skip
    assert_error(alice.client.post(TICKETS, {"request_id": row.request_id}, format="json"), 400, "invalid_request",
                 {"subject"})  # fmt: skip
    assert_error(open_ticket(alice, row.request_id, subject="s" * 201), 400, "invalid_request", {"subject"})
    assert_error(open_ticket(alice, row.request_id, description="d" * 10_001), 400, "invalid_request", {"description"})
    assert_error(open_ticket(alice, row.request_id, tried=["not", "text"]), 400, "invalid_request", {"tried"})
    broken = alice.client.post(TICKETS, b'{"request_id": ', content_type="application/json")
    assert_error(broken, 400, "invalid_json")
    assert_error(alice.client.get(TICKETS, {"stauts": "open"}), 400, "invalid_request", {"stauts"})
    assert_error(alice.client.get(TICKETS, {"created_after": "yesterday"}), 400, "invalid_request", {"created_after"})
    assert_error(alice.client.get(TICKETS, {"status": "lost"}), 400, "invalid_request", {"status"})
    assert not Ticket.objects.exists()
    ticket = open_ticket(alice, row.request_id).json()
    reply = f"{TICKETS}/{ticket['id']}/replies"
    assert_error(alice.client.post(reply, {"body": ""}, format="json"), 400, "invalid_request", {"body"})
    assert_error(alice.client.post(reply, {"body": "b" * 10_001}, format="json"), 400, "invalid_request", {"body"})
    assert not TicketMessage.objects.exists()


@pytest.mark.django_db
def test_the_list_filters_by_status_model_error_class_and_time(alice, key):
    made = {}
    for name, (model, error_class, code) in {
        "a": ("gpt-5", "upstream_or_platform_error", "upstream_error"),
        "b": ("gpt-4.1", "invalid_request", "invalid_json"),
        "c": ("gpt-5", "stream_interrupted", "client_disconnected"),
    }.items():
        row = make_row(alice.account, key=key, model_requested=model, status=400, error_class=error_class,
                       error_code=code, billing_result="not_billed")  # fmt: skip
        made[name] = open_ticket(alice, row.request_id).json()["id"]
    services.ticket_resolve(ticket=Ticket.objects.get(pk=made["c"]), resolution="Fixed.")

    def listed(**params) -> set[int]:
        response = alice.client.get(TICKETS, params)
        assert response.status_code == 200, response.content
        return {t["id"] for t in response.json()["results"]}

    assert listed() == set(made.values())
    assert listed(model="gpt-5") == {made["a"], made["c"]}
    assert listed(error_class="invalid_request") == {made["b"]}
    assert listed(status="resolved") == {made["c"]}
    assert listed(status="open", model="gpt-5") == {made["a"]}
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert listed(created_after=later) == set() and listed(created_before=later) == set(made.values())
    assert listed(account=alice.account.pk) == set(made.values())
    assert alice.client.get(f"{TICKETS}/").status_code == 200  # the spelling works too


@pytest.mark.django_db
def test_the_conversation_hides_internal_notes_and_replies_move_the_status(
    alice, key, django_capture_on_commit_callbacks
):
    row = make_row(alice.account, key=key, status=502, error_class="upstream_or_platform_error",
                   error_code="upstream_error", billing_result="not_billed")  # fmt: skip
    ticket_id = open_ticket(alice, row.request_id).json()["id"]
    ticket = Ticket.objects.get(pk=ticket_id)
    agent = make_user("agent")
    agent.is_staff = True
    agent.save()
    services.ticket_reply(ticket=ticket, author=agent, body="Customer seems to retry in a loop", kind="internal")
    services.ticket_reply(ticket=ticket, author=agent, body="Could you retry now?", kind="support")
    detail = alice.client.get(f"{TICKETS}/{ticket_id}").json()
    assert detail["status"] == "waiting_on_customer"
    assert [(m["kind"], m["author"], m["body"]) for m in detail["messages"]] == [
        ("support", "Openbili support", "Could you retry now?")
    ]
    assert "retry in a loop" not in alice.client.get(f"{TICKETS}/{ticket_id}").content.decode()
    reply = alice.client.post(f"{TICKETS}/{ticket_id}/replies", {"body": "Works now, thanks"}, format="json")
    assert reply.status_code == 201 and reply.json()["author"] == "alice"
    assert Ticket.objects.get(pk=ticket_id).status == "open"
    services.ticket_resolve(ticket=ticket, resolution="Upstream incident.")
    resolved = alice.client.get(f"{TICKETS}/{ticket_id}").json()
    assert (resolved["status"], resolved["resolution"]) == ("resolved", "Upstream incident.")
    assert resolved["resolved_at"]
    alice.client.post(f"{TICKETS}/{ticket_id}/replies", {"body": "It failed again"}, format="json")
    assert Ticket.objects.get(pk=ticket_id).status == "open"  # a reply reopens a resolved ticket
    services.ticket_resolve(ticket=ticket, resolution="Spam.", close=True)
    closed = alice.client.post(f"{TICKETS}/{ticket_id}/replies", {"body": "?"}, format="json")
    assert_error(closed, 409, "conflict")
    assert TicketMessage.objects.filter(ticket=ticket).count() == 4
    # support reopens it by hand; the customer sees it open again, and may reply
    services.ticket_reopen(ticket=ticket)
    assert alice.client.get(f"{TICKETS}/{ticket_id}").json()["status"] == "open"
    assert alice.client.post(f"{TICKETS}/{ticket_id}/replies", {"body": "thanks"}, format="json").status_code == 201
    with pytest.raises(services.InvalidRequest):
        services.ticket_reopen(ticket=ticket, status="closed")


@pytest.mark.django_db
def test_the_usage_list_marks_and_links_rows_that_have_a_ticket(alice, key):
    with_ticket = make_row(alice.account, key=key, status=502, error_class="upstream_or_platform_error",
                           error_code="upstream_error", billing_result="not_billed")  # fmt: skip
    without = make_row(alice.account, key=key)
    ticket_id = open_ticket(alice, with_ticket.request_id).json()["id"]
    rows = {r["request_id"]: r for r in alice.client.get(alice.url("/usage")).json()["results"]}
    assert rows[with_ticket.request_id]["ticket"] == {
        "id": ticket_id,
        "status": "open",
        "url": f"/api/v1/tickets/{ticket_id}",
    }
    assert rows[without.request_id]["ticket"] is None
    one = alice.client.get(alice.url(f"/usage/{with_ticket.request_id}")).json()
    assert one["ticket"]["id"] == ticket_id


@pytest.mark.django_db
def test_creation_is_rate_limited_per_account_and_a_repeat_is_not_counted(alice, bob, key, monkeypatch):
    monkeypatch.setattr(TicketCreateThrottle, "THROTTLE_RATES", {"ticket_create": "2/hour"})
    rows = [make_row(alice.account, key=key, status=400, error_class="invalid_request", error_code="invalid_json",
                     billing_result="not_billed") for _ in range(3)]  # fmt: skip
    member = Caller("mallory", role=Membership.Role.MEMBER, account=alice.account)
    assert open_ticket(alice, rows[0].request_id).status_code == 201
    assert open_ticket(member, rows[1].request_id).status_code == 201  # the account's, not the caller's
    limited = open_ticket(alice, rows[2].request_id)
    assert_error(limited, 429, "rate_limited")
    assert int(limited["Retry-After"]) > 0
    assert open_ticket(alice, rows[0].request_id).status_code == 200  # an existing ticket is still answered
    theirs = make_row(bob.account, status=400, error_class="invalid_request", error_code="invalid_json",
                      billing_result="not_billed")  # fmt: skip
    assert open_ticket(bob, theirs.request_id).status_code == 201  # another account has its own budget
    assert Ticket.objects.count() == 3


def assert_ledger_exact(account: Account) -> None:
    account.refresh_from_db()
    total = LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"]
    assert account.balance == total


@pytest.mark.django_db
def test_a_refund_is_one_ledger_entry_linked_to_the_ticket_and_the_customer_sees_it(alice, key):
    row = make_row(alice.account, key=key, status=502, error_class="upstream_or_platform_error",
                   error_code="upstream_error", billing_result="failed_but_billable",
                   cost_usd=Decimal("0.004200000001"))  # fmt: skip
    ticket = Ticket.objects.get(pk=open_ticket(alice, row.request_id).json()["id"])
    agent = make_user("agent")
    agent.is_staff = True
    agent.save()
    before = Account.objects.get(pk=alice.account.pk).balance
    entry = services.ticket_refund(ticket=ticket, actor=agent, amount="0.004200000001", reason="Upstream outage")
    again = services.ticket_refund(ticket=ticket, actor=agent, amount="0.004200000001", reason="Upstream outage")
    assert again.pk == entry.pk  # a double click changes nothing
    assert LedgerEntry.objects.filter(ticket=ticket).count() == 1
    assert Account.objects.get(pk=alice.account.pk).balance == before + Decimal("0.004200000001")
    assert_ledger_exact(alice.account)
    # the customer sees it in their ledger, linked to the ticket, and on the ticket
    ledger = alice.client.get(alice.url("/ledger"), {"kind": "refund"}).json()["results"]
    assert [(e["id"], e["amount"], e["ticket"], e["request_id"]) for e in ledger] == [
        (entry.pk, "0.004200000001", ticket.pk, row.request_id)
    ]
    assert ledger[0]["reason"] == f"Ticket #{ticket.pk}: Upstream outage"
    refunds = alice.client.get(f"{TICKETS}/{ticket.pk}").json()["refunds"]
    assert [(r["ledger_entry"], r["amount"]) for r in refunds] == [(entry.pk, "0.004200000001")]
    # a second refund must say so, with its own reason; never past the request's cost without the permission
    with pytest.raises(services.RefundRefused, match=r"already refunded 0\.004200000001"):
        services.ticket_refund(ticket=ticket, actor=agent, amount="0.001", reason="More")
    with pytest.raises(services.RefundRefused, match="more than the request cost"):
        services.ticket_refund(ticket=ticket, actor=agent, amount="0.001", reason="Goodwill", again=True)
    agent.user_permissions.add(Permission.objects.get(codename="refund_over_cost"))
    agent = type(agent).objects.get(pk=agent.pk)  # permissions are cached on the instance
    with pytest.raises(services.RefundRefused, match="reason of its own"):
        services.ticket_refund(ticket=ticket, actor=agent, amount="0.001", reason="Upstream outage", again=True)
    goodwill = services.ticket_refund(ticket=ticket, actor=agent, amount="1", reason="Goodwill", again=True)
    assert goodwill.pk != entry.pk and goodwill.ticket_id == ticket.pk
    assert services.refunded(ticket) == Decimal("1.004200000001")
    assert Account.objects.get(pk=alice.account.pk).balance == before + Decimal("1.004200000001")
    assert_ledger_exact(alice.account)
    for amount in ("0", "-1"):
        with pytest.raises(services.RefundRefused):
            services.ticket_refund(ticket=ticket, actor=agent, amount=amount, reason="x", again=True)
    with pytest.raises(services.RefundRefused):
        services.ticket_refund(ticket=ticket, actor=agent, amount="0.1", reason="  ", again=True)
    assert LedgerEntry.objects.filter(ticket=ticket).count() == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_refunds_of_one_ticket_credit_once(alice, key):
    row = make_row(alice.account, key=key, status=502, error_class="upstream_or_platform_error",
                   error_code="upstream_error", billing_result="failed_but_billable",
                   cost_usd=Decimal("0.5"))  # fmt: skip
    ticket = Ticket.objects.get(pk=open_ticket(alice, row.request_id).json()["id"])
    agent = make_user("agent")
    agent.is_staff = True
    agent.save()
    barrier = threading.Barrier(5)
    entries: list[int] = []

    def refund() -> None:
        barrier.wait()
        entries.append(services.ticket_refund(ticket=ticket, actor=agent, amount="0.5", reason="Outage").pk)
        connection.close()

    threads = [threading.Thread(target=refund) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(entries)) == 1 and len(entries) == 5
    assert LedgerEntry.objects.filter(ticket=ticket).count() == 1
    assert_ledger_exact(alice.account)


@pytest.mark.django_db
def test_notifications_name_the_ticket_and_carry_no_secret(alice, key, settings, django_capture_on_commit_callbacks):
    settings.OPENBILI_SUPPORT_EMAIL = "support@openbili.example"
    row = make_row(alice.account, key=key, status=502, error_class="upstream_or_platform_error",
                   error_code="upstream_error", billing_result="not_billed",
                   error_message="the upstream quoted: my confidential prompt")  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        ticket_id = open_ticket(alice, row.request_id, description="desc").json()["id"]
    ticket = Ticket.objects.get(pk=ticket_id)
    agent = make_user("agent")
    with django_capture_on_commit_callbacks(execute=True):
        services.ticket_reply(ticket=ticket, author=agent, body="internal: looks like abuse", kind="internal")
    assert [m.to for m in mail.outbox] == [["support@openbili.example"]]  # an internal note sends nothing
    with django_capture_on_commit_callbacks(execute=True):
        services.ticket_reply(ticket=ticket, author=agent, body="Please retry", kind="support")
    with django_capture_on_commit_callbacks(execute=True):
        alice.client.post(f"{TICKETS}/{ticket_id}/replies", {"body": "ok"}, format="json")
    assert [m.to for m in mail.outbox] == [
        ["support@openbili.example"],
        [alice.user.email],
        ["support@openbili.example"],
    ]
    assert f"Ticket #{ticket_id}" in mail.outbox[0].body and row.request_id in mail.outbox[0].body
    for message in mail.outbox:
        text = message.subject + message.body
        for forbidden in (key.key_hash, "confidential prompt", "looks like abuse", alice.secret):
            assert forbidden not in text


@pytest.mark.django_db
def test_a_member_opens_and_replies_as_an_owner_does(alice, key):
    member = Caller("mallory", role=Membership.Role.MEMBER, account=alice.account)
    row = make_row(alice.account, key=key, status=404, error_class="model_unavailable", error_code="model_not_ready",
                   billing_result="not_billed")  # fmt: skip
    ticket = open_ticket(member, row.request_id)
    assert ticket.status_code == 201
    assert member.client.post(f"{TICKETS}/{ticket.json()['id']}/replies", {"body": "any news?"},
                              format="json").status_code == 201  # fmt: skip
    assert alice.client.get(f"{TICKETS}/{ticket.json()['id']}").json()["messages"][0]["author"] == "mallory"


@pytest.mark.django_db
def test_tickets_need_a_signed_in_caller(alice, key):
    row = make_row(alice.account, key=key)
    anonymous = APIClient()
    assert_error(anonymous.get(TICKETS), 401, "not_authenticated")
    assert_error(anonymous.post(TICKETS, {"request_id": row.request_id, "subject": "x"}, format="json"), 401,
                 "not_authenticated")  # fmt: skip
    assert_error(anonymous.get(f"/api/v1/usage/{row.request_id}/bundle"), 401, "not_authenticated")
    # a personal token of a user with no account at all sees nothing
    loner = APIClient()
    loner.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(make_user('loner'))}")
    assert loner.get(TICKETS).json()["results"] == []
    assert_error(loner.get(f"/api/v1/usage/{row.request_id}/bundle"), 404, "not_found")
