"""Two accounts with keys, usage rows of every kind and a ticket, for the console's page tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.test import Client

from billing import services
from billing.models import ApiKey, Membership, Route
from billing.selectors import price_snapshot_current
from tests.api.conftest import Caller
from tests.exports.conftest import varied_rows
from tests.factories import CatalogModelFactory, make_visible_model
from tickets import services as ticket_services
from tickets.models import Ticket
from usage.models import UsageRecord


@dataclass
class Site:
    owner: Caller
    member: Caller
    other: Caller
    key: ApiKey
    secret: str
    other_key: ApiKey
    other_secret: str
    rows: list[UsageRecord]
    other_rows: list[UsageRecord]
    other_ticket: Ticket

    def browser(self, caller: Caller) -> Client:
        client = Client()
        client.force_login(caller.user)  # the login page itself is tested through its form
        return client


@pytest.fixture
def site(db) -> Site:
    owner = Caller("olivia")
    member = Caller("mark", role=Membership.Role.MEMBER, account=owner.account)
    other = Caller("oscar")
    model = make_visible_model(CatalogModelFactory(name="gpt-5"))
    route = services.route_secret_set(route=Route.objects.get(model=model), secret="sk-upstream-console-test-secret")
    snapshot = price_snapshot_current(model)
    key, secret = services.key_create(account=owner.account, name="production")
    other_key, other_secret = services.key_create(account=other.account, name="theirs")
    rows = varied_rows(owner.account, key=key, route=route, snapshot=snapshot, count=12)
    other_rows = varied_rows(other.account, key=other_key, route=route, snapshot=snapshot, count=6)
    failed = next(row for row in other_rows if row.error_class)
    other_ticket, _ = ticket_services.ticket_open(account=other.account, row=failed, user=other.user, subject="theirs")
    return Site(owner, member, other, key, secret, other_key, other_secret, rows, other_rows, other_ticket)
