"""The operators' ticket admin (issue 12, items 3 and 4): support's queues, the ticket page (bundle,
conversation, attempt chain), replies and internal notes, and refunds that move the balance once,
through the ledger. Everything the customer wrote is escaped; no key, hash or upstream secret shows."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.urls import reverse

from billing import selectors as billing_selectors
from billing import services as billing_services
from billing.models import Account, LedgerEntry, Route
from tests.api.test_usage import T0, make_row
from tests.factories import AccountFactory, CatalogModelFactory, RouteFactory, UserFactory
from tickets import services
from tickets.admin import INTERNAL_LABEL, age
from tickets.forms import REFUND_REASON_MAX, TicketRefundForm, TicketReplyForm
from tickets.models import TEXT_MAX, Ticket, TicketMessage
from usage.models import UsageRecord

UPSTREAM_URL = "https://upstream-private.example.net/v1"
UPSTREAM_SECRET = "sk-upstream-DO-NOT-SHOW-4f9a"
SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def url(action: str, *args) -> str:
    return reverse(f"admin:tickets_ticket_{action}", args=args)


def html(response) -> str:
    assert response.status_code == 200, response.content[:2000]
    return response.content.decode()


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def results(response) -> list[int]:
    assert response.status_code == 200, response.content[:2000]
    return [ticket.pk for ticket in response.context["cl"].result_list]


def ledger_ok(account: Account) -> Decimal:
    account.refresh_from_db()
    assert account.balance == billing_selectors.ledger_sum(account_id=account.pk)
    return account.balance


def staff(*perms: str):
    user = UserFactory(is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


@pytest.fixture
def routes(db):
    model = CatalogModelFactory(name="gpt-5")
    primary = RouteFactory(model=model, name="openai-primary", base_url=UPSTREAM_URL)
    backup = RouteFactory(model=model, name="azure-backup", base_url=UPSTREAM_URL + "/backup")
    for route in (primary, backup):
        billing_services.route_secret_set(route=route, secret=UPSTREAM_SECRET)
    return Route.objects.get(pk=primary.pk), Route.objects.get(pk=backup.pk)


@pytest.fixture
def customer(db):
    return UserFactory()


@pytest.fixture
def account(db):
    return AccountFactory(name="Acme Research", credit=Decimal("10"))


@pytest.fixture
def key(account):
    return billing_services.key_create(account=account, name="prod")  # (key, secret)


@pytest.fixture
def row(account, key, routes):
    primary, backup = routes
    return make_row(
        account,
        key=key[0],
        route=backup,
        status=200,
        cost_usd=Decimal("0.500000000000"),
        billing_result=UsageRecord.BillingResult.BILLED,
        attempts=[
            {"attempt": 1, "route_id": primary.pk, "provider": "openai", "upstream_model": "gpt-5-2026",
             "status": 502, "error": "upstream_error", "ms": 812.5},
            {"attempt": 2, "route_id": backup.pk, "provider": "openai", "upstream_model": "gpt-5-azure",
             "status": 200, "error": "", "ms": 1401.0},
        ],
    )  # fmt: skip


@pytest.fixture
def ticket(account, row, customer):
    ticket, created = services.ticket_open(
        account=account,
        row=row,
        user=customer,
        subject="Charged twice?",
        description="The first attempt failed but I was charged.",
        tried="Retried once.",
    )
    assert created
    return ticket


def open_ticket(account, customer, subject="Help", **row_fields) -> Ticket:
    row = make_row(account, **row_fields)
    return services.ticket_open(account=account, row=row, user=customer, subject=subject)[0]


# --- the queues ------------------------------------------------------------------------------------


def test_age_reads_in_minutes_hours_and_days():
    now = T0
    assert age(now - timedelta(minutes=7), now) == "7 min"
    assert age(now - timedelta(hours=3, minutes=5), now) == "3 h"
    assert age(now - timedelta(hours=47), now) == "47 h"
    assert age(now - timedelta(days=2, hours=1), now) == "2 d"


def test_the_queues_filter_by_status_assignee_error_class_and_billing_result(
    admin_client, admin_user, account, customer
):
    other = staff()
    mine = open_ticket(account, customer, "mine")
    theirs = open_ticket(
        account,
        customer,
        "theirs",
        status=502,
        error_class="upstream_or_platform_error",
        error_code="upstream_error",
        billing_result=UsageRecord.BillingResult.NOT_BILLED,
    )
    nobody = open_ticket(
        account,
        customer,
        "nobody's",
        status=200,
        error_class="stream_interrupted",
        billing_result=UsageRecord.BillingResult.FAILED_BUT_BILLABLE,
        cost_usd=Decimal("0.1"),
    )
    services.ticket_assign(ticket=mine, assignee=admin_user)
    services.ticket_assign(ticket=theirs, assignee=other)
    services.ticket_resolve(ticket=theirs, resolution="Transient upstream failure.")
    changelist = url("changelist")

    assert results(admin_client.get(changelist)) == [mine.pk, theirs.pk, nobody.pk]  # oldest first
    assert results(admin_client.get(changelist, {"status__exact": "open"})) == [mine.pk, nobody.pk]
    assert results(admin_client.get(changelist, {"status__exact": "resolved"})) == [theirs.pk]
    assert results(admin_client.get(changelist, {"assignee": "me"})) == [mine.pk]
    assert results(admin_client.get(changelist, {"assignee": "none"})) == [nobody.pk]
    assert results(admin_client.get(changelist, {"assignee": str(other.pk)})) == [theirs.pk]
    assert results(admin_client.get(changelist, {"error_class": "stream_interrupted"})) == [nobody.pk]
    assert results(admin_client.get(changelist, {"error_class": "-"})) == [mine.pk]
    assert results(admin_client.get(changelist, {"billing_result": "not_billed"})) == [theirs.pk]
    assert results(admin_client.get(changelist, {"billing_result": "billed"})) == [mine.pk]
    both = {"status__exact": "open", "assignee": "none", "billing_result": "failed_but_billable"}
    assert results(admin_client.get(changelist, both)) == [nobody.pk]

    page = html(admin_client.get(changelist))
    assert "unassigned" in page and "stream_interrupted" in page
    assert f"#{mine.pk}" in page and "Acme Research" in page and other.username in page
    assert "0 min" in page or "1 min" in page  # age of a ticket opened just now


def test_the_queues_search_by_request_id_subject_account_and_number(admin_client, account, customer):
    first = open_ticket(account, customer, "Stream cut at token 40")
    second = open_ticket(AccountFactory(name="Globex"), customer, "Wrong price")
    second_row = UsageRecord.objects.get(request_id=second.request_id)
    assert second_row.account_id == second.account_id
    changelist = url("changelist")

    assert results(admin_client.get(changelist, {"q": first.request_id})) == [first.pk]
    assert results(admin_client.get(changelist, {"q": first.request_id[:-1]})) == []  # exact, not contains
    assert results(admin_client.get(changelist, {"q": "stream cut"})) == [first.pk]
    assert results(admin_client.get(changelist, {"q": "Globex"})) == [second.pk]
    assert results(admin_client.get(changelist, {"q": f"#{second.pk}"})) == [second.pk]
    assert results(admin_client.get(changelist, {"q": "x y"})) == []


def test_assign_to_me_assigns_the_selected_tickets(admin_client, admin_user, account, customer):
    one, two, untouched = (open_ticket(account, customer, f"t{i}") for i in range(3))
    response = admin_client.post(
        url("changelist"), {"action": "assign_to_me", ACTION_CHECKBOX_NAME: [one.pk, two.pk]}, follow=True
    )
    assert "Assigned 2 ticket(s) to you." in messages_of(response)
    assert [t.assigned_to_id for t in Ticket.objects.order_by("id")] == [admin_user.pk, admin_user.pk, None]
    assert untouched.pk == Ticket.objects.order_by("id").last().pk


def test_the_list_shows_what_was_refunded(admin_client, admin_user, ticket):
    services.ticket_refund(ticket=ticket, actor=admin_user, amount=Decimal("0.25"), reason="first attempt failed")
    assert '<td class="field-refunded_usd">0.25</td>' in html(admin_client.get(url("changelist")))


def test_tickets_are_neither_added_nor_deleted_in_the_admin(admin_client, ticket):
    assert admin_client.get(reverse("admin:tickets_ticket_add")).status_code == 403
    assert admin_client.post(url("delete", ticket.pk), {"post": "yes"}).status_code == 403
    assert Ticket.objects.filter(pk=ticket.pk).exists()


# --- the ticket page -------------------------------------------------------------------------------


def test_the_page_shows_the_bundle_conversation_and_attempt_chain(admin_client, admin_user, ticket, customer, routes):
    services.ticket_reply(ticket=ticket, author=customer, body="Any news?", kind=TicketMessage.Kind.CUSTOMER)
    services.ticket_reply(ticket=ticket, author=admin_user, body="Looks like a retry.", kind="internal")
    services.ticket_reply(ticket=ticket, author=admin_user, body="We are on it.", kind="support")

    page = html(admin_client.get(url("change", ticket.pk)))

    # the bundle, frozen, as pretty JSON
    assert "<pre>{" in page and f"&quot;request_id&quot;: &quot;{ticket.request_id}&quot;" in page
    # the conversation in order, the internal note labelled
    assert page.index("Any news?") < page.index("Looks like a retry.") < page.index("We are on it.")
    assert page.count(INTERNAL_LABEL) == 1
    assert page.index(INTERNAL_LABEL) < page.index("Looks like a retry.") < page.index("We are on it.")
    assert "Support reply (the customer sees it)" in page
    # the attempt chain: routes by name, upstream model, status, latency, error
    assert page.index("openai-primary") < page.index("azure-backup")
    for shown in ("gpt-5-2026", "502", "812.5", "upstream_error", "gpt-5-azure", "1401.0"):
        assert shown in page
    # the customer's own words, read-only: no input for them, inputs for what support edits
    assert "Charged twice?" in page and "The first attempt failed but I was charged." in page
    assert 'name="subject"' not in page and 'name="description"' not in page and 'name="bundle"' not in page
    assert 'name="status"' in page and 'name="assigned_to"' in page and 'name="resolution"' in page
    # the reply form and the refund button
    assert url("reply", ticket.pk) in page and url("refund", ticket.pk) in page
    # never the route's URL or secret
    for route in routes:
        assert route.base_url not in page
        assert route.secret_encrypted and route.secret_encrypted not in page
    assert UPSTREAM_SECRET not in page and "upstream-private" not in page


def test_the_page_shows_the_row_now_beside_the_bundle(admin_client, ticket, row):
    UsageRecord.objects.filter(pk=row.pk).update(cost_usd=Decimal("0.75"))
    page = html(admin_client.get(url("change", ticket.pk)))
    assert "usage row now" in page
    assert "0.75" in page and "0.50" in page  # live cost, frozen cost


def test_the_page_says_when_the_usage_row_is_gone(admin_client, ticket, row):
    UsageRecord.objects.filter(pk=row.pk).delete()
    page = html(admin_client.get(url("change", ticket.pk)))
    assert "The usage row is gone (archived): its attempt chain is no longer available." in page
    assert "only the bundle remains" in page
    assert "openai-primary" not in page


def test_saving_resolves_and_assigns_through_the_services(admin_client, ticket):
    agent = staff()
    form = {"status": "resolved", "assigned_to": agent.pk, "resolution": "Refunded the failed attempt.", "_save": "1"}
    response = admin_client.post(url("change", ticket.pk), form)
    assert response.status_code == 302, response.content[:3000]
    ticket.refresh_from_db()
    assert (ticket.status, ticket.assigned_to_id, ticket.resolution) == (
        "resolved",
        agent.pk,
        "Refunded the failed attempt.",
    )
    assert ticket.resolved_at is not None

    # support reopens a ticket resolved too soon (the resolution stays, for the record), closes it,
    # and reopens a closed one as waiting on the customer
    reopen = admin_client.post(url("change", ticket.pk), form | {"status": "open"})
    assert reopen.status_code == 302, reopen.content[:3000]
    ticket.refresh_from_db()
    assert (ticket.status, ticket.resolved_at, ticket.resolution) == ("open", None, "Refunded the failed attempt.")
    close = admin_client.post(url("change", ticket.pk), form | {"status": "closed", "assigned_to": ""})
    assert close.status_code == 302
    ticket.refresh_from_db()
    assert (ticket.status, ticket.assigned_to_id) == ("closed", None)
    waiting = admin_client.post(url("change", ticket.pk), form | {"status": "waiting_on_customer", "assigned_to": ""})
    assert waiting.status_code == 302
    ticket.refresh_from_db()
    assert (ticket.status, ticket.resolved_at) == ("waiting_on_customer", None)


def test_a_resolution_needs_the_status_and_customer_fields_stay_read_only(admin_client, ticket):
    form = {"status": "open", "assigned_to": "", "resolution": "Draft", "subject": "Hacked", "_save": "1"}
    response = admin_client.post(url("change", ticket.pk), form)
    assert response.status_code == 200
    assert "set the status too" in response.content.decode()
    too_long = admin_client.post(
        url("change", ticket.pk), form | {"status": "resolved", "resolution": "x" * (TEXT_MAX + 1)}
    )
    assert too_long.status_code == 200 and f"at most {TEXT_MAX} characters" in too_long.content.decode()

    ok = admin_client.post(url("change", ticket.pk), form | {"status": "resolved", "resolution": "Done"})
    assert ok.status_code == 302
    ticket.refresh_from_db()
    assert (ticket.subject, ticket.resolution) == ("Charged twice?", "Done")


# --- replies and internal notes --------------------------------------------------------------------


def test_a_support_reply_and_an_internal_note_land_with_their_kind(admin_client, admin_user, ticket):
    assert "Add message" in html(admin_client.get(url("reply", ticket.pk)))

    response = admin_client.post(url("reply", ticket.pk), {"kind": "internal", "body": "Check route 1."}, follow=True)
    assert response.redirect_chain[-1][0] == url("change", ticket.pk)
    ticket.refresh_from_db()
    assert ticket.status == "open"  # a note changes nothing the customer sees

    response = admin_client.post(url("reply", ticket.pk), {"kind": "support", "body": "We refunded it."}, follow=True)
    assert any("Support reply" in m and "Waiting on the customer" in m for m in messages_of(response))
    ticket.refresh_from_db()
    assert ticket.status == "waiting_on_customer"
    assert [(m.kind, m.body, m.author_id) for m in ticket.messages.all()] == [
        ("internal", "Check route 1.", admin_user.pk),
        ("support", "We refunded it.", admin_user.pk),
    ]


def test_a_reply_is_refused_empty_too_long_or_as_the_customer(admin_client, ticket):
    for data in (
        {"kind": "support", "body": "   "},
        {"kind": "support", "body": "x" * (TEXT_MAX + 1)},
        {"kind": "customer", "body": "posing as the customer"},
    ):
        response = admin_client.post(url("reply", ticket.pk), data)
        assert response.status_code == 200
        assert "errorlist" in response.content.decode()
    assert not TicketMessage.objects.exists()


def test_forms_enforce_the_model_lengths():
    assert not TicketReplyForm({"kind": "internal", "body": "x" * (TEXT_MAX + 1)}).is_valid()
    assert TicketReplyForm({"kind": "internal", "body": "x" * TEXT_MAX}).is_valid()
    long_reason = {"amount": "1", "reason": "x" * (REFUND_REASON_MAX + 1)}
    assert not TicketRefundForm(long_reason).is_valid()


# --- refunds ---------------------------------------------------------------------------------------


def refund(client, ticket, amount="0.25", reason="The first attempt failed.", again=False, **kwargs):
    data = {"amount": amount, "reason": reason} | ({"again": "on"} if again else {})
    return client.post(url("refund", ticket.pk), data, **kwargs)


def refunds(ticket) -> list[LedgerEntry]:
    return list(LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REFUND).order_by("id"))


def test_a_refund_moves_the_balance_once_through_the_ledger(admin_client, admin_user, ticket, account):
    page = html(admin_client.get(url("refund", ticket.pk)))
    assert "0.50 USD" in page and "None." in page  # the request's cost; no refund yet
    assert ledger_ok(account) == Decimal("10")

    response = refund(admin_client, ticket, follow=True)
    [entry] = refunds(ticket)
    assert response.redirect_chain[-1][0] == url("change", ticket.pk)
    assert f"Refunded 0.25 USD to Acme Research: ledger entry #{entry.pk}." in messages_of(response)
    assert (entry.ticket_id, entry.account_id, entry.amount, entry.created_by_id) == (
        ticket.pk,
        account.pk,
        Decimal("0.25"),
        admin_user.pk,
    )
    assert entry.reason == f"Ticket #{ticket.pk}: The first attempt failed."
    assert ledger_ok(account) == Decimal("10.25")

    # the same form again (a double click, a resubmit): the same entry, no money moves
    again = refund(admin_client, ticket, follow=True)
    assert refunds(ticket) == [entry]
    assert any(f"already posted as ledger entry #{entry.pk}" in m for m in messages_of(again))
    assert ledger_ok(account) == Decimal("10.25")

    # the refund page lists it
    page = html(admin_client.get(url("refund", ticket.pk)))
    assert f"#{entry.pk}" in page and "The first attempt failed." in page and admin_user.username in page


def test_a_further_refund_must_say_so_with_its_own_reason(admin_client, ticket, account):
    refund(admin_client, ticket)
    [first] = refunds(ticket)

    refused = refund(admin_client, ticket, amount="0.10", reason="Goodwill.")
    page = html(refused)
    assert "already refunded 0.25" in page and "The first attempt failed." in page
    assert refunds(ticket) == [first]

    same_reason = refund(admin_client, ticket, amount="0.10", again=True)
    assert "a reason of its own" in html(same_reason)
    assert refunds(ticket) == [first]

    done = refund(admin_client, ticket, amount="0.10", reason="Goodwill.", again=True)
    assert done.status_code == 302
    assert [e.amount for e in refunds(ticket)] == [Decimal("0.25"), Decimal("0.10")]
    assert ledger_ok(account) == Decimal("10.35")


def test_a_refund_over_the_cost_needs_its_permission(client, ticket, account):
    agent = staff("tickets.view_ticket", "tickets.change_ticket", "billing.add_ledgerentry")
    client.force_login(agent)

    refused = refund(client, ticket, amount="0.500000000001")
    assert "more than the request cost (0.500000000000 USD)" in html(refused)
    assert refunds(ticket) == []
    assert ledger_ok(account) == Decimal("10")

    assert refund(client, ticket, amount="0.5").status_code == 302  # exactly the cost is fine
    assert ledger_ok(account) == Decimal("10.5")

    agent.user_permissions.add(Permission.objects.get(codename="refund_over_cost"))
    over = refund(client, ticket, amount="1", reason="Compensation.", again=True)
    assert over.status_code == 302
    assert [e.amount for e in refunds(ticket)] == [Decimal("0.5"), Decimal("1")]
    assert ledger_ok(account) == Decimal("11.5")


def test_a_refund_needs_the_ledger_permission(client, ticket):
    agent = staff("tickets.view_ticket", "tickets.change_ticket")
    client.force_login(agent)
    page = html(client.get(url("change", ticket.pk)))
    assert url("refund", ticket.pk) not in page  # no button
    assert client.get(url("refund", ticket.pk)).status_code == 403
    assert refund(client, ticket).status_code == 403
    assert refunds(ticket) == []
    # replying needs only the ticket's change permission
    assert client.post(url("reply", ticket.pk), {"kind": "internal", "body": "Seen."}).status_code == 302

    viewer = staff("tickets.view_ticket")
    client.force_login(viewer)
    assert client.get(url("change", ticket.pk)).status_code == 200
    assert client.post(url("reply", ticket.pk), {"kind": "internal", "body": "x"}).status_code == 403


@pytest.mark.parametrize(
    ("amount", "error"),
    [("0", "greater than zero"), ("-1", "greater than zero"), ("0.0000000000001", "decimal places"), ("abc", "number")],
)
def test_a_bad_amount_is_a_form_error(admin_client, ticket, amount, error):
    response = refund(admin_client, ticket, amount=amount)
    assert error in html(response)
    assert refunds(ticket) == []


def test_a_refund_on_an_archived_row_is_bounded_by_the_bundles_cost(client, ticket, row):
    UsageRecord.objects.filter(pk=row.pk).delete()
    client.force_login(staff("tickets.view_ticket", "tickets.change_ticket", "billing.add_ledgerentry"))
    assert "0.50 USD" in html(client.get(url("refund", ticket.pk)))
    assert "more than the request cost" in html(refund(client, ticket, amount="0.6"))
    assert refund(client, ticket, amount="0.5").status_code == 302
    assert [e.amount for e in refunds(ticket)] == [Decimal("0.5")]


# --- escaping and secrets --------------------------------------------------------------------------


def test_everything_the_customer_wrote_is_escaped(admin_client, admin_user, account, customer):
    hostile = services.ticket_open(
        account=account,
        row=make_row(account, error_code="x"),
        user=customer,
        subject=SCRIPT,
        description=SCRIPT,
        tried=SCRIPT,
    )[0]
    services.ticket_reply(ticket=hostile, author=customer, body=SCRIPT, kind="customer")
    services.ticket_reply(ticket=hostile, author=admin_user, body=SCRIPT, kind="internal")
    services.ticket_refund(ticket=hostile, actor=admin_user, amount=Decimal("0.01"), reason=SCRIPT)

    pages = {
        "list": admin_client.get(url("changelist")),
        "search": admin_client.get(url("changelist"), {"q": "script"}),
        "change": admin_client.get(url("change", hostile.pk)),
        "reply": admin_client.get(url("reply", hostile.pk)),
        "refund": admin_client.get(url("refund", hostile.pk)),
    }
    for name, response in pages.items():
        page = html(response)
        assert SCRIPT not in page, name
        assert ESCAPED in page, name
    assert html(pages["change"]).count(ESCAPED) >= 6  # subject x2 (title, field), description, tried, 2 messages


def test_no_key_hash_or_secret_on_any_ticket_page(admin_client, ticket, key):
    api_key, secret = key
    assert api_key.key_hash and secret.startswith("sk-")
    refunded = refund(admin_client, ticket, follow=True)
    pages = [
        admin_client.get(url("changelist")),
        admin_client.get(url("changelist"), {"q": ticket.request_id}),
        admin_client.get(url("change", ticket.pk)),
        admin_client.get(url("reply", ticket.pk)),
        admin_client.get(url("refund", ticket.pk)),
        refunded,
    ]
    for response in pages:
        page = html(response)
        assert secret not in page
        assert api_key.key_hash not in page
        assert UPSTREAM_SECRET not in page and UPSTREAM_URL not in page
    assert api_key.prefix in html(pages[2])  # the key by its prefix, in the bundle


def test_the_ticket_pages_need_a_staff_login(client, ticket):
    for target in (url("changelist"), url("change", ticket.pk), url("reply", ticket.pk), url("refund", ticket.pk)):
        response = client.get(target)
        assert response.status_code == 302 and "/login/" in response["Location"]
    customer = UserFactory()
    client.force_login(customer)
    assert client.post(url("refund", ticket.pk), {"amount": "1", "reason": "x"}).status_code == 302
    assert not LedgerEntry.objects.filter(ticket=ticket).exists()
