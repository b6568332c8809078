"""Every console page through Django's test client: what it shows, who may see it, and what it
never shows (another account's objects, a key's secret after creation, its hash, an upstream
secret, prompt text)."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from billing import services
from billing.models import ApiKey, KeyAudit, Route
from tickets.models import Ticket
from usage.models import UsageExport, UsageRecord

pytestmark = pytest.mark.django_db


def pages_of(site) -> list[str]:
    account = site.owner.account.pk
    row = site.rows[-1]
    failed = next(r for r in site.rows if r.error_class)
    return [
        f"/console/{account}/",
        f"/console/{account}/keys",
        f"/console/{account}/keys/{site.key.pk}",
        f"/console/{account}/models",
        f"/console/{account}/usage",
        f"/console/{account}/usage?model=gpt-5&stream=true",
        f"/console/{account}/usage/{row.request_id}",
        f"/console/{account}/usage/{failed.request_id}/ticket",
        f"/console/{account}/tickets",
        f"/console/{account}/billing",
    ]


def never_shown(site) -> list[str]:
    """What no page may contain: full secrets, hashes, upstream secrets."""
    keys = ApiKey.objects.all()
    secrets = [site.secret, site.other_secret]
    hashes = [key.key_hash for key in keys]
    upstream = [services.route_secret(route) for route in Route.objects.all()]
    assert "sk-upstream-console-test-secret" in upstream
    return [value for value in secrets + hashes + upstream if value]


def test_signed_out_visitors_go_to_the_login_page(site):
    answer = Client().get(f"/console/{site.owner.account.pk}/usage")
    assert answer.status_code == 302 and answer["Location"].startswith("/console/login?next=")


def test_login_and_the_front_door(site):
    client = Client()
    page = client.get("/console/login")
    assert page.status_code == 200 and b'name="password"' in page.content
    wrong = client.post("/console/login", {"username": "olivia", "password": "nope"})
    assert wrong.status_code == 401 and b"Wrong username or password" in wrong.content
    right = client.post("/console/login", {"username": "olivia", "password": "correct horse battery staple"})
    assert right.status_code == 302 and right["Location"] == "/console/"
    home = client.get("/console/")
    assert home.status_code == 302 and home["Location"] == f"/console/{site.owner.account.pk}/"


def test_wrong_passwords_lock_the_login_out_as_the_apis_do(site, settings):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/console/login", {"username": "olivia", "password": "guess"})
    locked = client.post("/console/login", {"username": "olivia", "password": "correct horse battery staple"})
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session


def test_a_login_without_an_account_sees_why(db):
    from tests.api.conftest import PASSWORD, make_user

    make_user("newcomer")
    client = Client()
    client.post("/console/login", {"username": "newcomer", "password": PASSWORD})
    page = client.get("/console/")
    assert page.status_code == 200 and b"No account yet" in page.content


def test_every_page_renders_for_the_owner_and_the_member(site):
    for caller in (site.owner, site.member):
        client = site.browser(caller)
        for url in pages_of(site):
            answer = client.get(url)
            assert answer.status_code == 200, (caller.user.username, url, answer.status_code)
            assert answer["Cache-Control"] == "private, no-store"


def test_no_page_shows_a_secret_a_hash_or_prompt_text(site):
    forbidden = never_shown(site)
    client = site.browser(site.owner)
    for url in pages_of(site):
        html = client.get(url).content.decode()
        for value in forbidden:
            assert value not in html, (url, value[:12])
        assert "messages" not in re.findall(r'"(messages)"\s*:', html)  # no request body echoed


@pytest.mark.parametrize(
    "tail",
    [
        "",
        "keys",
        "models",
        "usage",
        "tickets",
        "billing",
    ],
)
def test_another_accounts_pages_are_404(site, tail):
    client = site.browser(site.owner)
    assert client.get(f"/console/{site.other.account.pk}/{tail}").status_code == 404
    assert client.get(f"/console/999999/{tail}").status_code == 404


def test_another_accounts_objects_are_404_whatever_the_id(site):
    client = site.browser(site.owner)
    mine = site.owner.account.pk
    theirs_row = site.other_rows[0].request_id
    for url in [
        f"/console/{mine}/keys/{site.other_key.pk}",
        f"/console/{mine}/keys/{site.other_key.pk}/disable",
        f"/console/{mine}/usage/{theirs_row}",
        f"/console/{mine}/usage/{theirs_row}/ticket",
        f"/console/{mine}/tickets/{site.other_ticket.pk}",
    ]:
        assert client.get(url).status_code == 404, url
        assert client.post(url, {"body": "x", "subject": "x"}).status_code == 404, url
    assert ApiKey.objects.get(pk=site.other_key.pk).status == ApiKey.Status.ACTIVE


def test_creating_a_key_shows_its_secret_once(site):
    client = site.browser(site.owner)
    made = client.post(f"/console/{site.owner.account.pk}/keys", {"name": "ci", "all_models": "on", "rpm_limit": "60"})
    assert made.status_code == 201
    key = ApiKey.objects.get(account=site.owner.account, name="ci")
    secret = re.search(r'data-testid="secret">([^<]+)<', made.content.decode()).group(1)
    assert secret.startswith(key.prefix) and key.rpm_limit == 60
    assert "never put it in front-end code" in made.content.decode()
    assert made["Cache-Control"] == "private, no-store"
    for url in pages_of(site):
        assert secret not in client.get(url).content.decode()
    assert KeyAudit.objects.filter(key=key, action=KeyAudit.Action.CREATED, actor=site.owner.user).exists()


def test_a_key_form_with_bad_values_says_why_and_writes_nothing(site):
    client = site.browser(site.owner)
    before = ApiKey.objects.count()
    answer = client.post(
        f"/console/{site.owner.account.pk}/keys", {"name": "", "rpm_limit": "-3", "expires_at": "yesterday"}
    )
    assert answer.status_code == 400 and ApiKey.objects.count() == before
    html = answer.content.decode()
    assert "This field is required" in html and "greater than or equal to 1" in html


def test_editing_a_key(site):
    client = site.browser(site.owner)
    url = f"/console/{site.owner.account.pk}/keys/{site.key.pk}"
    saved = client.post(url, {"name": "renamed", "allowed_models": ["gpt-5"], "tpm_limit": "1000"})
    assert saved.status_code == 302
    key = ApiKey.objects.get(pk=site.key.pk)
    assert (key.name, key.all_models, key.allowed_models, key.tpm_limit) == ("renamed", False, ["gpt-5"], 1000)


def test_disable_rotate_and_delete_ask_first(site):
    client = site.browser(site.owner)
    base = f"/console/{site.owner.account.pk}/keys/{site.key.pk}"
    confirm = client.get(f"{base}/disable")
    assert confirm.status_code == 200 and b"is refused from the next request on" in confirm.content
    assert ApiKey.objects.get(pk=site.key.pk).status == ApiKey.Status.ACTIVE  # asking changes nothing
    assert client.post(f"{base}/disable").status_code == 302
    assert ApiKey.objects.get(pk=site.key.pk).status == ApiKey.Status.DISABLED
    client.post(f"{base}/enable")
    rotated = client.post(f"{base}/rotate")
    assert rotated.status_code == 201 and b"stopped working at once" in rotated.content
    new_key = (
        ApiKey.objects.get(replaces=site.key)
        if hasattr(ApiKey, "replaces")
        else ApiKey.objects.get(account=site.owner.account, name=site.key.name, status=ApiKey.Status.ACTIVE)
    )
    assert ApiKey.objects.get(pk=site.key.pk).status == ApiKey.Status.DISABLED
    assert client.post(f"/console/{site.owner.account.pk}/keys/{new_key.pk}/delete").status_code == 302
    assert ApiKey.objects.get(pk=new_key.pk).deleted_at is not None


def test_members_read_keys_but_cannot_change_them(site):
    client = site.browser(site.member)
    keys = client.get(f"/console/{site.owner.account.pk}/keys")
    assert keys.status_code == 200 and b"Create a key" not in keys.content
    assert client.post(f"/console/{site.owner.account.pk}/keys", {"name": "x", "all_models": "on"}).status_code == 403
    assert client.post(f"/console/{site.owner.account.pk}/keys/{site.key.pk}/disable").status_code == 403
    assert ApiKey.objects.get(pk=site.key.pk).status == ApiKey.Status.ACTIVE


def test_the_usage_page_filters_like_the_api(site):
    client = site.browser(site.owner)
    url = f"/console/{site.owner.account.pk}/usage"
    every = client.get(url).content.decode()
    shown = re.findall(r'data-request="(req_[^"]+)"', every)
    assert shown == [row.request_id for row in sorted(site.rows, key=lambda r: r.started_at, reverse=True)]
    failing = client.get(url, {"error_class": "quota_or_rate_limit"}).content.decode()
    expected = {r.request_id for r in site.rows if r.error_class == "quota_or_rate_limit"}
    assert set(re.findall(r'data-request="(req_[^"]+)"', failing)) == expected
    bad = client.get(url, {"started_after": "not a date", "status": "abc"})
    assert bad.status_code == 400 and b"started_after" in bad.content and b"status" in bad.content
    assert client.get(url, {"cursor": "bogus"}).status_code == 400
    assert "<svg" in every and "Requests" in every


def test_failed_rows_offer_a_ticket_and_a_second_click_shows_the_same_one(site):
    client = site.browser(site.member)
    account = site.owner.account.pk
    failed = next(r for r in site.rows if r.error_class)
    usage = client.get(f"/console/{account}/usage").content.decode()
    assert f"/console/{account}/usage/{failed.request_id}/ticket" in usage
    form = client.get(f"/console/{account}/usage/{failed.request_id}/ticket").content.decode()
    assert failed.error_code in form and failed.trace_id in form and "Retry advice" in form
    made = client.post(
        f"/console/{account}/usage/{failed.request_id}/ticket",
        {"subject": "it failed", "description": "twice", "tried": "a retry"},
    )
    ticket = Ticket.objects.get(request_id=failed.request_id)
    assert made.status_code == 302 and made["Location"] == f"/console/{account}/tickets/{ticket.pk}"
    again = client.get(f"/console/{account}/usage/{failed.request_id}/ticket")
    assert again.status_code == 302 and again["Location"] == made["Location"]
    assert Ticket.objects.filter(request_id=failed.request_id).count() == 1
    usage = client.get(f"/console/{account}/usage").content.decode()
    assert f"/console/{account}/tickets/{ticket.pk}" in usage
    detail = client.get(made["Location"]).content.decode()
    assert "it failed" in detail and "twice" in detail and failed.request_id in detail
    replied = client.post(made["Location"], {"body": "any news?"})
    assert replied.status_code == 302 and "any news?" in client.get(made["Location"]).content.decode()


def test_a_billed_success_can_be_questioned_from_its_detail_page(site):
    client = site.browser(site.member)
    account = site.owner.account.pk
    billed = next(r for r in site.rows if not r.error_class and r.billing_result == UsageRecord.BillingResult.BILLED)
    listed = client.get(f"/console/{account}/usage").content.decode()
    assert f"/usage/{billed.request_id}/ticket" not in listed  # the list offers tickets on failures only
    detail = client.get(f"/console/{account}/usage/{billed.request_id}").content.decode()
    assert f"/console/{account}/usage/{billed.request_id}/ticket" in detail and "Question this charge" in detail
    made = client.post(
        f"/console/{account}/usage/{billed.request_id}/ticket", {"subject": "charge?", "description": "why"}
    )
    ticket = Ticket.objects.get(request_id=billed.request_id)
    assert made.status_code == 302 and ticket.bundle["cost_usd"] == f"{billed.cost_usd:f}"


def test_support_internal_notes_never_reach_the_customer(site):
    from tickets import services as ticket_services
    from tickets.models import TicketMessage

    failed = next(r for r in site.rows if r.error_class)
    ticket, _ = ticket_services.ticket_open(account=site.owner.account, row=failed, user=site.owner.user, subject="s")
    ticket_services.ticket_reply(ticket=ticket, author=None, body="INTERNAL-NOTE-42", kind=TicketMessage.Kind.INTERNAL)
    ticket_services.ticket_reply(ticket=ticket, author=None, body="Looking into it", kind=TicketMessage.Kind.SUPPORT)
    html = site.browser(site.owner).get(f"/console/{site.owner.account.pk}/tickets/{ticket.pk}").content.decode()
    assert "Looking into it" in html and "INTERNAL-NOTE-42" not in html


def test_billing_shows_the_balance_and_starts_an_export(site, settings, tmp_path):
    client = site.browser(site.member)
    account = site.owner.account.pk
    page = client.get(f"/console/{account}/billing").content.decode()
    from openbili.console.templatetags.console import usd

    assert f"${usd(site.owner.account.balance)}" in page
    started = client.post(f"/console/{account}/exports", {"format": "csv", "model": "gpt-5", "ignored": "x"})
    assert started.status_code == 302
    export = UsageExport.objects.get(account=site.owner.account)
    assert export.format == "csv" and export.filters.get("model") == "gpt-5"
    assert "ignored" not in export.filters


def test_the_console_speaks_chinese(site):
    client = site.browser(site.owner)
    page = client.get(f"/console/{site.owner.account.pk}/usage", HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9")
    assert page["Content-Language"] == "zh-hans" and "用量" in page.content.decode()
    switched = client.post("/console/i18n/setlang/", {"language": "zh-hans", "next": "/console/"})
    assert switched.status_code == 302
    keys = client.get(f"/console/{site.owner.account.pk}/keys").content.decode()
    assert "创建" in keys
    api = site.owner.client.get("/api/v1/accounts/999999/balance", HTTP_ACCEPT_LANGUAGE="zh-CN")
    assert api.status_code == 404 and api.json()["error"]["message"].isascii()  # the API stays English


def test_pending_rows_offer_no_ticket_yet(site):
    client = site.browser(site.owner)
    row = site.rows[0]
    UsageRecord.objects.filter(pk=row.pk).update(billing_result=UsageRecord.BillingResult.PENDING)
    html = client.get(f"/console/{site.owner.account.pk}/usage/{row.request_id}").content.decode()
    assert "Create diagnostic ticket" not in html


def test_amounts_are_shown_exactly_without_trailing_zeros():
    from openbili.console.templatetags.console import usd

    assert [usd(v) for v in ("99.999918750000", "100.000000000000", "-0.000081250000", "0E-12", None)] == [
        "99.99991875",
        "100.00",
        "-0.00008125",
        "0.00",
        "—",
    ]


def test_a_new_account_sees_what_to_do_first(db):
    from tests.api.conftest import Caller

    newcomer = Caller("nadia")
    client = Client()
    client.force_login(newcomer.user)
    base = f"/console/{newcomer.account.pk}"
    overview = client.get(f"{base}/").content.decode()
    assert 'data-testid="empty-state"' in overview and "Create an API key" in overview
    for tail in ("keys", "models", "usage", "tickets"):
        page = client.get(f"{base}/{tail}")
        assert page.status_code == 200 and 'data-testid="empty-state"' in page.content.decode(), tail
