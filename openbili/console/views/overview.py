"""An account's front page: its balance, keys and last requests — or, for a new account, what to do
first."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from billing.api.balance_serializers import BalanceSerializer
from billing.api.keys import keys_of
from openbili.console.access import account_page
from openbili.console.pages import page
from usage import selectors


@account_page
def overview(request: HttpRequest, member) -> HttpResponse:
    account = member.account
    keys = keys_of(account)
    recent = list(selectors.usage_rows(account_id=account.pk).order_by("-started_at", "-request_id")[:5])
    return page(
        request,
        member,
        "console/overview.html",
        {
            "balance": BalanceSerializer(account).data,
            "key_count": keys.count(),
            "recent": recent,
            "section": "overview",
        },
    )
