"""The operators' admin (CONTRACT §7): every page renders, money moves only through the ledger,
secrets are shown once or never, and read-only data stays read-only."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from axes.models import AccessAttempt, AccessFailureLog
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from billing import invoices, keys, selectors, services
from billing.models import (
    Account,
    ApiKey,
    CatalogModel,
    Hold,
    Invoice,
    KeyAudit,
    LedgerEntry,
    PriceSnapshot,
    PriceVersion,
    Probe,
    Route,
)
from tests.factories import (
    DEFAULT_PRICES,
    AccountFactory,
    CatalogModelFactory,
    RouteFactory,
    UserFactory,
    make_visible_model,
)
from tickets.models import Ticket
from tickets.services import ticket_open
from usage import exports
from usage.models import StoredImage, UsageArchive, UsageExport, UsageRecord

SECRET_RE = re.compile(r"sk-ob-[A-Za-z0-9_-]{43}")
_seq = itertools.count(1)


def url(model, action, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{action}", args=args)


def text(response) -> str:
    return response.content.decode()


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- one instance of every registered model --------------------------------------------------------


def make_usage(*, account=None, key=None, request_id=None, trace_id=None, model="gpt-test", **fields):
    n = next(_seq)
    return UsageRecord.objects.create(
        request_id=request_id or f"req_{n:032x}",
        trace_id=trace_id or f"trace_{n:032x}",
        account=account,
        api_key=key,
        key_prefix=key.prefix if key else "",
        endpoint="/v1/chat/completions",
        model_requested=model,
        status=200,
        started_at=timezone.now(),
        **fields,
    )


def build_hold():
    account = AccountFactory(credit=Decimal("10"))
    hold_id = services.hold_reserve(account_id=account.pk, request_id=f"req_hold{next(_seq)}", amount=Decimal("1"))
    return Hold.objects.get(pk=hold_id)


def build_route():
    route = RouteFactory()
    services.route_secret_set(route=route, secret=f"upstream-secret-{next(_seq)}")
    services.probe_record(route=route, ok=True, status_code=200, latency_ms=5)
    return route


def build_price_version():
    version, _ = services.price_version_publish(model=CatalogModelFactory(), prices=DEFAULT_PRICES)
    return version


def build_usage():
    key, _ = services.key_create(account=AccountFactory(credit=Decimal("1")), name="usage key")
    snapshot = build_price_version().snapshots.get()
    return make_usage(
        account=key.account,
        key=key,
        price_snapshot=snapshot,
        billing_result=UsageRecord.BillingResult.BILLED,
        cost_usd=Decimal("0.000012500000"),
        input_tokens=10,
        attempts=[{"route": "r", "status": 200}],
    )


def build_key_audit() -> KeyAudit:
    key, _ = services.key_create(account=AccountFactory(), name="audited")
    return KeyAudit.objects.filter(key=key).first()


def build_stored_image() -> StoredImage:
    now, n = timezone.now(), next(_seq)
    return StoredImage.objects.create(
        account=AccountFactory(),
        request_id=f"req_{n:032x}",
        token_sha256=n.to_bytes(32, "big"),
        storage_name="2026/01/01/0123456789abcdef0123456789abcdef.png",
        content_type="image/png",
        size_bytes=1234,
        created_at=now,
        expires_at=now + timedelta(days=1),
    )


def build_invoice() -> Invoice:
    usage = build_usage()
    month = invoices.month_start(timezone.now())
    return invoices.invoice_build(account=usage.account, month=month, now=invoices.next_month(month)).invoice


def build_ticket() -> Ticket:
    usage = build_usage()
    return ticket_open(account=usage.account, row=usage, user=None, subject="billing question")[0]


BUILDERS = {
    Account: lambda: AccountFactory(credit=Decimal("10")),
    LedgerEntry: lambda: AccountFactory(credit=Decimal("5")).ledger_entries.get(),
    Hold: build_hold,
    ApiKey: lambda: services.key_create(account=AccountFactory(), name=f"key {next(_seq)}")[0],
    CatalogModel: lambda: make_visible_model(CatalogModelFactory()),
    Route: build_route,
    PriceVersion: build_price_version,
    PriceSnapshot: lambda: build_price_version().snapshots.get(),
    Probe: lambda: services.probe_record(route=RouteFactory(), ok=False, status_code=503, error="upstream down"),
    UsageRecord: build_usage,
    StoredImage: build_stored_image,
    KeyAudit: build_key_audit,
    Group: lambda: Group.objects.create(name=f"group {next(_seq)}"),
    Ticket: build_ticket,
    Invoice: build_invoice,
    UsageExport: lambda: exports.export_create(
        account=AccountFactory(), user=None, format="xlsx", filters={"model": "gpt-5"}
    ),
}
BUILDERS[UserFactory._meta.model] = UserFactory
BUILDERS[UsageArchive] = lambda: UsageArchive.objects.create(
    month=datetime(2020, 1 + next(_seq) % 12, 1, tzinfo=UTC), partition="usage_usagerecord_p2020_01",
    status="dropped", rows=3, file_name="usage-archive/2020-01.csv.gz", size_bytes=120, sha256="0" * 64,
    cost_usd=Decimal("0.000000020001"), accounts={"1": {"rows": 3, "cost_usd": "0.000000020001"}},
)  # fmt: skip
# django-axes' records of failed logins (its own admin pages: operators unlock from there)
BUILDERS[AccessAttempt] = lambda: AccessAttempt.objects.create(
    username=f"user{next(_seq)}", ip_address="198.51.100.7", user_agent="test", failures_since_start=3
)
BUILDERS[AccessFailureLog] = lambda: AccessFailureLog.objects.create(
    username=f"user{next(_seq)}", ip_address="198.51.100.7", user_agent="test", locked_out=False
)

# django-celery-beat's schedule (the monthly invoices' among them), edited by operators in the admin
BUILDERS[IntervalSchedule] = lambda: IntervalSchedule.objects.create(every=60 + next(_seq), period="seconds")
BUILDERS[CrontabSchedule] = lambda: CrontabSchedule.objects.create(minute="15", hour="0", day_of_month="1")
BUILDERS[ClockedSchedule] = lambda: ClockedSchedule.objects.create(clocked_time=timezone.now())
BUILDERS[SolarSchedule] = lambda: SolarSchedule.objects.create(
    event="sunrise", latitude=Decimal(next(_seq) % 90), longitude=Decimal("2.35")
)
BUILDERS[PeriodicTask] = lambda: PeriodicTask.objects.create(
    name=f"job {next(_seq)}", task="usage.tasks.usage_rollup", interval=BUILDERS[IntervalSchedule]()
)

VIEW_ONLY = [LedgerEntry, Hold, PriceSnapshot, Probe, UsageRecord, StoredImage, KeyAudit, Invoice]
REGISTERED = sorted(admin.site._registry, key=lambda model: model._meta.label)


def build(model):
    if model in BUILDERS:
        return BUILDERS[model]()
    obj = model._default_manager.first()
    if obj is None:
        pytest.fail(f"{model._meta.label} is registered in the admin: add a builder to tests/admin/test_admin.py")
    return obj


def test_every_openbili_model_is_registered():
    expected = {
        Account,
        LedgerEntry,
        Hold,
        ApiKey,
        CatalogModel,
        Route,
        PriceVersion,
        PriceSnapshot,
        Probe,
        UsageRecord,
    }
    assert expected <= set(admin.site._registry)
    # Memberships and routes are also edited inline on their parent.
    assert "MembershipInline" in [i.__name__ for i in admin.site._registry[Account].inlines]
    assert "RouteInline" in [i.__name__ for i in admin.site._registry[CatalogModel].inlines]


@pytest.mark.parametrize("model", REGISTERED, ids=lambda model: model._meta.label)
def test_every_admin_page_renders(admin_client, rf, admin_user, model):
    obj = build(model)
    model_admin = admin.site._registry[model]
    request = rf.get("/")
    request.user = admin_user

    assert admin_client.get(url(model, "changelist")).status_code == 200
    assert admin_client.get(url(model, "changelist"), {"q": "x y"}).status_code == 200
    add = admin_client.get(url(model, "add"))
    assert add.status_code == (200 if model_admin.has_add_permission(request) else 403)
    assert admin_client.get(url(model, "change", obj.pk)).status_code == 200
    if model_admin.has_delete_permission(request, obj):
        assert admin_client.get(url(model, "delete", obj.pk)).status_code == 200


@pytest.mark.parametrize("model", [m for m in REGISTERED if m in BUILDERS], ids=lambda model: model._meta.label)
def test_changelist_queries_do_not_grow_with_rows(admin_client, model):
    build(model)
    admin_client.get(url(model, "changelist"))  # warm up: session, content types
    with CaptureQueriesContext(connection) as one_row:
        assert admin_client.get(url(model, "changelist")).status_code == 200
    for _ in range(3):
        build(model)
    with CaptureQueriesContext(connection) as more_rows:
        assert admin_client.get(url(model, "changelist")).status_code == 200
    assert len(more_rows) == len(one_row), [q["sql"] for q in more_rows.captured_queries]


@pytest.mark.parametrize("model", VIEW_ONLY, ids=lambda model: model._meta.label)
def test_view_only_models_cannot_be_added_changed_or_deleted(admin_client, admin_user, rf, model):
    obj = build(model)
    model_admin = admin.site._registry[model]
    request = rf.get("/")
    request.user = admin_user
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, obj)
    assert not model_admin.has_delete_permission(request, obj)
    assert model_admin.has_view_permission(request, obj)
    assert admin_client.get(url(model, "add")).status_code == 403
    assert admin_client.get(url(model, "delete", obj.pk)).status_code == 403
    assert admin_client.post(url(model, "change", obj.pk), {}).status_code == 403
    assert "delete_selected" not in text(admin_client.get(url(model, "changelist")))


def test_price_versions_are_add_only_and_keys_and_routes_are_never_deleted(admin_client, admin_user, rf):
    request = rf.get("/")
    request.user = admin_user
    version = build_price_version()
    price_admin = admin.site._registry[PriceVersion]
    assert price_admin.has_add_permission(request)
    assert not price_admin.has_change_permission(request, version)
    assert not price_admin.has_delete_permission(request, version)
    assert admin_client.post(url(PriceVersion, "change", version.pk), {}).status_code == 403
    assert admin_client.get(url(PriceVersion, "delete", version.pk)).status_code == 403
    key = BUILDERS[ApiKey]()
    assert not admin.site._registry[ApiKey].has_delete_permission(request, key)
    assert admin_client.get(url(ApiKey, "delete", key.pk)).status_code == 403
    route = build_route()  # deactivated, never deleted: usage rows point at it
    assert not admin.site._registry[Route].has_delete_permission(request, route)
    assert admin_client.get(url(Route, "delete", route.pk)).status_code == 403


# --- accounts: Credit / adjust -------------------------------------------------------------------


def open_credit_form(admin_client, account):
    response = admin_client.post(
        url(Account, "changelist"), {"action": "credit_adjust", ACTION_CHECKBOX_NAME: [account.pk]}
    )
    assert response.status_code == 200
    key = response.context["form"].initial["idempotency_key"]
    assert f'value="{key}"' in text(response)  # rendered into the hidden field
    return reverse("admin:billing_account_credit", args=[account.pk]), key


def test_credit_action_posts_one_entry_and_a_resubmit_posts_nothing(admin_client, admin_user, account):
    credit_url, key = open_credit_form(admin_client, account)
    data = {"kind": "topup", "amount": "25.50", "reason": "wire transfer #42", "idempotency_key": key}

    response = admin_client.post(credit_url, data, follow=True)

    assert response.redirect_chain[-1][0] == url(Account, "change", account.pk)
    assert any("New balance: 125.50 USD" in m for m in messages_of(response))
    account.refresh_from_db()
    assert account.balance == Decimal("125.50")
    entry = LedgerEntry.objects.get(idempotency_key=key)
    assert (entry.account_id, entry.kind, entry.amount) == (account.pk, "topup", Decimal("25.50"))
    assert entry.reason == "wire transfer #42"
    assert entry.created_by == admin_user
    assert entry.balance_after == Decimal("125.50")

    # Double submit / browser resubmit: same key, same form.
    response = admin_client.post(credit_url, data, follow=True)

    assert any("already submitted" in m for m in messages_of(response))
    account.refresh_from_db()
    assert account.balance == Decimal("125.50")
    assert LedgerEntry.objects.filter(account=account).count() == 2  # opening credit + this one
    assert selectors.ledger_sum(account_id=account.pk) == account.balance


def test_negative_adjustment_and_refund(admin_client, account):
    for kind, amount, expected in [
        ("adjustment", "-0.000000000001", "99.999999999999"),
        ("refund", "3", "102.999999999999"),
    ]:
        credit_url, key = open_credit_form(admin_client, account)
        response = admin_client.post(
            credit_url, {"kind": kind, "amount": amount, "reason": "correction", "idempotency_key": key}
        )
        assert response.status_code == 302
        account.refresh_from_db()
        assert account.balance == Decimal(expected)
    assert selectors.ledger_sum(account_id=account.pk) == account.balance


@pytest.mark.parametrize(
    ("kind", "amount", "reason", "field"),
    [
        ("topup", "0", "r", "amount"),
        ("topup", "-5", "r", "amount"),
        ("refund", "-1", "r", "amount"),
        ("adjustment", "0", "r", "amount"),
        ("topup", "abc", "r", "amount"),
        ("topup", "0.0000000000001", "r", "amount"),  # finer than the ledger's 12 places
        ("topup", "NaN", "r", "amount"),
        ("topup", "5", "   ", "reason"),
        ("usage", "5", "r", "kind"),  # usage charges come only from settling holds
    ],
)
def test_invalid_credit_is_a_form_error_and_moves_nothing(admin_client, account, kind, amount, reason, field):
    credit_url, key = open_credit_form(admin_client, account)
    response = admin_client.post(credit_url, {"kind": kind, "amount": amount, "reason": reason, "idempotency_key": key})
    assert response.status_code == 200
    assert field in response.context["form"].errors
    account.refresh_from_db()
    assert account.balance == Decimal("100")
    assert not LedgerEntry.objects.filter(idempotency_key=key).exists()


def test_reusing_a_key_for_a_different_amount_is_a_form_error(admin_client, account):
    credit_url, key = open_credit_form(admin_client, account)
    data = {"kind": "topup", "amount": "10", "reason": "r", "idempotency_key": key}
    assert admin_client.post(credit_url, data).status_code == 302

    response = admin_client.post(credit_url, data | {"amount": "11"})

    assert response.status_code == 200
    assert "already used" in str(response.context["form"].non_field_errors())
    account.refresh_from_db()
    assert account.balance == Decimal("110")


@pytest.mark.parametrize("forged", ["", "usage:req_abc", "admin-credit:not-hex", "opening:1"])
def test_only_a_form_generated_idempotency_key_is_accepted(admin_client, account, forged):
    credit_url = reverse("admin:billing_account_credit", args=[account.pk])
    response = admin_client.post(credit_url, {"kind": "topup", "amount": "1", "reason": "r", "idempotency_key": forged})
    assert response.status_code == 200
    assert "idempotency_key" in response.context["form"].errors
    assert LedgerEntry.objects.filter(account=account).count() == 1


def test_credit_page_from_the_account_page(admin_client, account):
    change = admin_client.get(url(Account, "change", account.pk))
    credit_url = reverse("admin:billing_account_credit", args=[account.pk])
    assert f'href="{credit_url}"' in text(change)
    response = admin_client.get(credit_url)
    assert response.status_code == 200
    first_key = response.context["form"].initial["idempotency_key"]
    assert admin_client.get(credit_url).context["form"].initial["idempotency_key"] != first_key
    response = admin_client.post(
        credit_url, {"kind": "adjustment", "amount": "-10", "reason": "goodwill reversal", "idempotency_key": first_key}
    )
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.balance == Decimal("90")
    assert LogEntry.objects.filter(object_id=str(account.pk), change_message__contains="Adjustment").exists()


def test_credit_action_needs_exactly_one_account(admin_client, account):
    other = AccountFactory()
    response = admin_client.post(
        url(Account, "changelist"),
        {"action": "credit_adjust", ACTION_CHECKBOX_NAME: [account.pk, other.pk]},
        follow=True,
    )
    assert any("exactly one account" in m for m in messages_of(response))
    assert LedgerEntry.objects.filter(account__in=[account, other]).count() == 1


def test_account_page_shows_balances_and_flags_a_ledger_mismatch(admin_client, account):
    page = text(admin_client.get(url(Account, "change", account.pk)))
    assert "100.00" in page
    assert "equals the balance" in page
    assert "MISMATCH" not in page
    assert 'name="balance"' not in page  # read-only: no input for it

    Account.objects.filter(pk=account.pk).update(balance=F("balance") + 1)  # a bug elsewhere
    page = text(admin_client.get(url(Account, "change", account.pk)))
    assert "MISMATCH" in page


def test_account_form_cannot_change_the_balance(admin_client, account):
    response = admin_client.post(
        url(Account, "change", account.pk),
        {
            "name": account.name,
            "status": "active",
            "credit_limit": "0",
            "balance": "1000000",
            "reserved": "0",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.balance == Decimal("100")


# --- API keys ------------------------------------------------------------------------------------


def test_key_add_shows_the_secret_once_and_stores_only_its_hash(admin_client, admin_user, account):
    response = admin_client.post(
        url(ApiKey, "add"),
        {"account": account.pk, "name": "ci", "all_models": "on", "allowed_models": "", "rpm_limit": "60"},
    )

    assert response.status_code == 200
    assert "no-store" in response.headers.get("Cache-Control", "")
    secrets = set(SECRET_RE.findall(text(response)))
    assert len(secrets) == 1
    secret = secrets.pop()
    key = ApiKey.objects.get(account=account)
    assert key.key_hash == keys.key_hash(secret)
    assert key.prefix == secret[:12]
    assert (key.name, key.rpm_limit, key.all_models, key.created_by) == ("ci", 60, True, admin_user)
    assert selectors.key_lookup(secret) == key
    for field in ApiKey._meta.concrete_fields:
        assert secret not in str(getattr(key, field.attname))
    assert not LogEntry.objects.filter(change_message__contains=secret).exists()
    assert secret not in str(dict(admin_client.session.items()))

    # Never again: not on the list, not on the key's page; the hash is not shown either.
    for page in (admin_client.get(url(ApiKey, "changelist")), admin_client.get(url(ApiKey, "change", key.pk))):
        assert secret not in text(page)
        assert key.key_hash not in text(page)
        assert not SECRET_RE.search(text(page))


def test_key_add_with_a_model_scope(admin_client, account):
    response = admin_client.post(url(ApiKey, "add"), {"account": account.pk, "name": "scoped", "allowed_models": ""})
    assert response.status_code == 200
    assert "allowed_models" in response.context["adminform"].form.errors
    assert not ApiKey.objects.exists()

    response = admin_client.post(
        url(ApiKey, "add"), {"account": account.pk, "name": "scoped", "allowed_models": "gpt-5,gpt-4.1"}
    )
    assert response.status_code == 200
    key = ApiKey.objects.get()
    assert (key.all_models, key.allowed_models) == (False, ["gpt-4.1", "gpt-5"])


def test_key_change_form_edits_limits_but_not_status_or_hash(admin_client):
    key = BUILDERS[ApiKey]()
    page = text(admin_client.get(url(ApiKey, "change", key.pk)))
    assert key.key_hash not in page
    assert 'name="status"' not in page
    assert 'name="key_hash"' not in page
    response = admin_client.post(
        url(ApiKey, "change", key.pk),
        {"name": "renamed", "all_models": "on", "allowed_models": "", "rpm_limit": "5", "status": "disabled"},
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.name, key.rpm_limit, key.status) == ("renamed", 5, "active")
    # audited like the dashboard API's changes: who, and what changed
    entry = KeyAudit.objects.filter(key=key, action=KeyAudit.Action.UPDATED).get()
    assert entry.actor is not None and entry.actor.is_superuser
    assert entry.changes["name"][1] == "renamed" and entry.changes["rpm_limit"][1] == 5


def test_disable_keys_action(admin_client):
    first, second, untouched = (BUILDERS[ApiKey]() for _ in range(3))
    selection = {"action": "disable_keys", ACTION_CHECKBOX_NAME: [first.pk, second.pk]}

    confirm = admin_client.post(url(ApiKey, "changelist"), selection)
    assert confirm.status_code == 200
    assert first.prefix in text(confirm)
    first.refresh_from_db()
    assert first.status == "active"  # nothing happens before the confirmation

    response = admin_client.post(url(ApiKey, "changelist"), selection | {"confirm": "yes"}, follow=True)

    assert any("Disabled 2 key(s)" in m for m in messages_of(response))
    for key in (first, second, untouched):
        key.refresh_from_db()
    assert [first.status, second.status, untouched.status] == ["disabled", "disabled", "active"]
    assert first.disabled_at is not None
    assert KeyAudit.objects.get(key=first, action=KeyAudit.Action.DISABLED).actor is not None


def test_rotate_key_action_shows_the_new_secret_once(admin_client, admin_user):
    old = BUILDERS[ApiKey]()
    selection = {"action": "rotate_keys", ACTION_CHECKBOX_NAME: [old.pk]}
    assert admin_client.post(url(ApiKey, "changelist"), selection).status_code == 200
    assert ApiKey.objects.count() == 1

    response = admin_client.post(url(ApiKey, "changelist"), selection | {"confirm": "yes"})

    assert response.status_code == 200
    secrets = set(SECRET_RE.findall(text(response)))
    assert len(secrets) == 1
    secret = secrets.pop()
    old.refresh_from_db()
    new = old.replaced_by
    assert old.status == "disabled"
    assert new.key_hash == keys.key_hash(secret)
    assert (new.account_id, new.name, new.status, new.created_by) == (old.account_id, old.name, "active", admin_user)
    assert secret not in text(admin_client.get(url(ApiKey, "change", new.pk)))

    # A key can be rotated once: rotating it again is an error message, no new key, no secret page.
    again = admin_client.post(url(ApiKey, "changelist"), selection | {"confirm": "yes"}, follow=True)
    assert any("already rotated" in m for m in messages_of(again))
    assert not SECRET_RE.search(text(again))
    assert ApiKey.objects.count() == 2


def test_key_search_by_prefix_name_account_and_pasted_key(admin_client):
    key, secret = services.key_create(account=AccountFactory(name="Acme Search"), name="batch-job")
    BUILDERS[ApiKey]()
    for term in (key.prefix, secret, "batch-job", "Acme Search"):
        result = admin_client.get(url(ApiKey, "changelist"), {"q": term})
        assert list(result.context["cl"].result_list) == [key], term


# --- routes: write-only secret -------------------------------------------------------------------


def route_post_data(model, **overrides):
    data = {
        "model": model.pk,
        "name": "primary",
        "provider": "openai",
        "base_url": "https://api.openai.com/v1",
        "upstream_model": model.name,
        "secret": "",
        "secret_env": "",
        "priority": "100",
        "active": "on",
        "timeout_seconds": "600",
    }
    return data | overrides


def test_route_secret_is_write_only(admin_client):
    model = CatalogModelFactory()
    upstream_secret = "sk-upstream-TOP-SECRET-value-123"

    response = admin_client.post(url(Route, "add"), route_post_data(model, secret=upstream_secret))

    assert response.status_code == 302
    route = Route.objects.get(model=model)
    ciphertext = route.secret_encrypted
    assert ciphertext and upstream_secret not in ciphertext
    assert services.route_secret(route) == upstream_secret
    for page in (
        admin_client.get(url(Route, "change", route.pk)),
        admin_client.get(url(Route, "changelist")),
        admin_client.get(url(CatalogModel, "change", model.pk)),
    ):
        assert upstream_secret not in text(page)
        assert ciphertext not in text(page)
    assert "encrypted" in text(admin_client.get(url(Route, "changelist")))

    # Saving with the secret left empty keeps it.
    assert admin_client.post(url(Route, "change", route.pk), route_post_data(model, priority="5")).status_code == 302
    route.refresh_from_db()
    assert (route.priority, route.secret_encrypted) == (5, ciphertext)

    # A new secret replaces it.
    assert (
        admin_client.post(url(Route, "change", route.pk), route_post_data(model, secret="new-one")).status_code == 302
    )
    route.refresh_from_db()
    assert services.route_secret(route) == "new-one"

    # Both at once is refused.
    response = admin_client.post(url(Route, "change", route.pk), route_post_data(model, secret="x", clear_secret="on"))
    assert response.status_code == 200
    assert "clear_secret" in response.context["adminform"].form.errors

    # "Clear secret" removes it.
    assert (
        admin_client.post(url(Route, "change", route.pk), route_post_data(model, clear_secret="on")).status_code == 302
    )
    route.refresh_from_db()
    assert route.secret_encrypted == ""
    assert "none" in text(admin_client.get(url(Route, "changelist")))


def test_route_secret_from_env_is_shown_by_name(admin_client):
    model = CatalogModelFactory()
    admin_client.post(url(Route, "add"), route_post_data(model, secret_env="OPENAI_API_KEY"))
    assert "env: OPENAI_API_KEY" in text(admin_client.get(url(Route, "changelist")))


def inline_post_data(response) -> dict:
    """The POST body that re-submits a change page unchanged (main form and inline formsets)."""
    data = {}

    def add(form):
        for bound in form:
            value = bound.value()
            if value is None or value is False:
                continue
            data[bound.html_name] = "on" if value is True else value

    add(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        add(inline.formset.management_form)
        for form in inline.formset.forms:
            add(form)
    return data


def test_route_secret_set_from_the_model_page_inline(admin_client):
    route = build_route()
    old_ciphertext = route.secret_encrypted
    page = admin_client.get(url(CatalogModel, "change", route.model.pk))
    assert old_ciphertext not in text(page)
    data = inline_post_data(page)
    assert data["routes-0-id"] == route.pk

    response = admin_client.post(url(CatalogModel, "change", route.model.pk), data | {"routes-0-secret": "inline-new"})

    assert response.status_code == 302, response.context["adminform"].form.errors
    route.refresh_from_db()
    assert services.route_secret(route) == "inline-new"

    # Re-saving the page without typing a secret keeps it.
    data = inline_post_data(admin_client.get(url(CatalogModel, "change", route.model.pk)))
    assert admin_client.post(url(CatalogModel, "change", route.model.pk), data).status_code == 302
    route.refresh_from_db()
    assert services.route_secret(route) == "inline-new"


# --- catalog and prices --------------------------------------------------------------------------


def test_catalog_list_shows_visibility_and_reason(admin_client, visible_model):
    hidden = CatalogModelFactory(name="no-price-yet")
    RouteFactory(model=hidden)
    response = admin_client.get(url(CatalogModel, "changelist"))
    rows = {m.name: m._visibility for m in response.context["cl"].result_list}
    assert rows == {"gpt-test": (True, "visible"), "no-price-yet": (False, "no active price")}
    assert "no active price" in text(response)
    page = text(admin_client.get(url(CatalogModel, "change", hidden.pk)))
    assert "hidden: no active price" in page
    assert reverse("admin:billing_priceversion_add") + f"?model={hidden.pk}" in page


def price_post_data(model, **prices):
    data = {"model": model.pk, "note": "", "effective_from_0": "", "effective_from_1": ""}
    data |= {field: "0" for field in PriceVersion.PRICE_FIELDS}
    data |= {field: str(value) for field, value in DEFAULT_PRICES.items()}
    return data | {field: str(value) for field, value in prices.items()}


def test_publishing_identical_prices_creates_nothing(admin_client, visible_model):
    existing = PriceVersion.objects.get(model=visible_model)
    snapshots = PriceSnapshot.objects.count()

    response = admin_client.post(url(PriceVersion, "add"), price_post_data(visible_model), follow=True)

    assert response.redirect_chain[-1][0] == url(PriceVersion, "change", existing.pk)
    assert any("nothing was published" in m for m in messages_of(response))
    assert list(PriceVersion.objects.filter(model=visible_model)) == [existing]
    assert PriceSnapshot.objects.count() == snapshots
    assert not LogEntry.objects.filter(content_type__model="priceversion").exists()


def test_publishing_changed_prices_creates_a_version_and_a_snapshot(admin_client, admin_user, visible_model):
    snapshots = PriceSnapshot.objects.count()

    response = admin_client.post(
        url(PriceVersion, "add"), price_post_data(visible_model, input_per_mtok="2.5") | {"note": "vendor price cut"}
    )

    assert response.status_code == 302
    newest = PriceVersion.objects.filter(model=visible_model).order_by("-effective_from").first()
    assert newest.input_per_mtok == Decimal("2.5")
    assert (newest.note, newest.created_by) == ("vendor price cut", admin_user)
    assert PriceSnapshot.objects.count() == snapshots + 1
    assert newest.snapshots.get().input_per_mtok == Decimal("2.5")
    assert selectors.price_current(visible_model) == newest


def test_price_form_validation(admin_client, visible_model):
    response = admin_client.post(url(PriceVersion, "add"), price_post_data(visible_model, output_per_mtok="-1"))
    assert response.status_code == 200
    assert "output_per_mtok" in response.context["adminform"].form.errors

    existing = PriceVersion.objects.get(model=visible_model)
    when = timezone.localtime(existing.effective_from)
    response = admin_client.post(
        url(PriceVersion, "add"),
        price_post_data(visible_model, input_per_mtok="9")
        | {"effective_from_0": when.strftime("%Y-%m-%d"), "effective_from_1": when.strftime("%H:%M:%S.%f")},
    )
    assert response.status_code == 200
    assert PriceVersion.objects.filter(model=visible_model).count() == 1


def test_price_version_with_a_future_start(admin_client, visible_model):
    start = timezone.localtime(timezone.now() + timedelta(days=7)).replace(microsecond=0)
    response = admin_client.post(
        url(PriceVersion, "add"),
        price_post_data(visible_model, input_per_mtok="3")
        | {"effective_from_0": start.strftime("%Y-%m-%d"), "effective_from_1": start.strftime("%H:%M:%S")},
    )
    assert response.status_code == 302
    assert PriceVersion.objects.get(model=visible_model, effective_from=start).input_per_mtok == Decimal("3")
    assert selectors.price_current(visible_model).input_per_mtok == Decimal("1.25")


# --- usage ---------------------------------------------------------------------------------------


def test_usage_search(admin_client):
    key, secret = services.key_create(account=AccountFactory(name="Searchable Org"), name="k")
    row = make_usage(account=key.account, key=key, model="claude-sonnet-4-6")
    make_usage()  # noise

    def search(term):
        response = admin_client.get(url(UsageRecord, "changelist"), {"q": term})
        assert response.status_code == 200
        return list(response.context["cl"].result_list)

    assert search(row.request_id) == [row]
    assert search(row.trace_id) == [row]
    assert search(key.prefix) == [row]
    assert search(secret) == [row]  # a pasted whole key matches on its prefix
    assert search("Searchable") == [row]
    assert search("claude-sonnet") == [row]
    assert search("req_does_not_exist") == []


def test_usage_search_by_the_bare_w3c_trace_id_a_client_sent(gateway, admin_client):
    # given a real request that carried a W3C traceparent (stored as trace_<hex>)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]},
        headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )
    assert response.headers["x-trace-id"] == f"trace_{trace}"
    row = gateway.row(response.headers["x-request-id"])

    def search(term):
        page = admin_client.get(url(UsageRecord, "changelist"), {"q": term})
        assert page.status_code == 200
        return list(page.context["cl"].result_list)

    # then the operator finds it by what the client knows: the bare id, upper case, the whole header
    assert search(trace) == [row]
    assert search(trace.upper()) == [row]
    assert search(f"00-{trace}-00f067aa0ba902b7-01") == [row]
    assert search(f"trace_{trace}") == [row]
    assert search(row.request_id.removeprefix("req_")) == [row]
    assert search("0" * 31 + "1") == []


def test_usage_page_is_read_only_and_complete(admin_client):
    row = build_usage()
    page = text(admin_client.get(url(UsageRecord, "change", row.pk)))
    assert row.request_id in page
    assert row.trace_id in page
    assert "0.0000125" in page
    assert 'name="cost_usd"' not in page
    assert "&quot;route&quot;: &quot;r&quot;" in page  # attempts, pretty-printed


# --- login throttling ----------------------------------------------------------------------------


def test_admin_login_locks_a_username_out_after_repeated_wrong_passwords(client, django_user_model, settings):
    # given an operator account
    django_user_model.objects.create_superuser("ops", "ops@example.com", "the-right-password")
    login = reverse("admin:login")

    def attempt(password, address="198.51.100.7"):
        return client.post(login, {"username": "ops", "password": password}, REMOTE_ADDR=address)

    # when someone guesses passwords from one address
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert attempt("guess").status_code == 200  # the form again, with its error
    locked = attempt("guess")
    # then that username is locked out from that address, even with the right password
    assert locked.status_code == 429
    assert attempt("the-right-password").status_code == 429
    assert "_auth_user_id" not in client.session
    # and the real operator, from their own address, still gets in (no lock-out by a stranger)
    welcome = attempt("the-right-password", address="203.0.113.9")
    assert welcome.status_code == 302
    assert client.session["_auth_user_id"]
