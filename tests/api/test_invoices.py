"""Invoices in the dashboard API (issue 13, item 2): listed, read with their lines and downloaded
as XLSX and CSV by the account's members; another account's invoices are 404s."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import openpyxl
import pytest

from billing import invoices
from billing.models import Membership
from billing.selectors import price_snapshot_current
from tests.api.conftest import Caller
from tests.api.test_auth import assert_error
from tests.billing.test_invoices import NEXT_MONTH, THIS_MONTH, charge
from tests.factories import CatalogModelFactory, make_visible_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def invoice(alice):
    snapshot = price_snapshot_current(make_visible_model(CatalogModelFactory(name="gpt-5")))
    charge(alice.account, cost="0.012345678901", snapshot=snapshot, input_tokens=7)
    charge(alice.account, cost="0.000000000001", snapshot=snapshot, result="failed_but_billable")
    return invoices.invoice_build(account=alice.account, month=THIS_MONTH, now=NEXT_MONTH).invoice


def test_members_list_read_and_download_the_accounts_invoices(alice, invoice):
    member = Caller("mallory", role=Membership.Role.MEMBER, account=alice.account)
    listed = member.client.get(alice.url("/invoices"))
    assert listed.status_code == 200
    assert [i["number"] for i in listed.json()["results"]] == [invoice.number]
    detail = member.client.get(alice.url(f"/invoices/{invoice.pk}")).json()
    assert (detail["usage_exact"], detail["total"]) == ("0.012345678902", "0.010000000000")
    assert [(line["billing_result"], line["cost"], line["amount"]) for line in detail["lines"]] == [
        ("billed", "0.012345678901", "0.010000000000"),
        ("failed_but_billable", "0.000000000001", "0.000000000000"),
    ]
    assert detail["closing_balance"] == f"{invoice.closing_balance:f}"
    xlsx = member.client.get(detail["downloads"]["xlsx"])
    assert xlsx.status_code == 200 and xlsx["Content-Disposition"] == f'attachment; filename="{invoice.number}.xlsx"'
    book = openpyxl.load_workbook(io.BytesIO(xlsx.content))
    assert Decimal(dict(book["Summary"].iter_rows(values_only=True))["usage_exact"]) == invoice.usage_exact
    plain = member.client.get(detail["downloads"]["csv"])
    assert plain.status_code == 200 and plain["Content-Type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(plain.content.decode())))
    assert Decimal(table[-1][10]) == invoice.usage_exact and Decimal(table[-1][11]) == invoice.total


def test_another_accounts_invoices_are_404_and_bad_parameters_400(alice, bob, invoice):
    for url in (f"/invoices/{invoice.pk}", f"/invoices/{invoice.pk}/xlsx", f"/invoices/{invoice.pk}/csv"):
        assert_error(bob.client.get(f"/api/v1/accounts/{alice.account.pk}{url}"), 404, "not_found")
        assert_error(bob.client.get(bob.url(url)), 404, "not_found")
    assert bob.client.get(bob.url("/invoices")).json()["results"] == []
    assert_error(alice.client.get(alice.url(f"/invoices/{invoice.pk}/pdf")), 404, "not_found")
    assert_error(alice.client.get(alice.url(f"/invoices/{invoice.pk}/csv?x=1")), 400, "invalid_request", {"x"})
    assert_error(alice.client.get(alice.url("/invoices?month=2026-11")), 400, "invalid_request", {"month"})
