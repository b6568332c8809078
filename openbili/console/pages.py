"""What every account page renders with: the account switcher, the caller's role, the base URL
customers point their SDKs at."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from billing.models import Membership
from openbili.console.access import memberships_of


def base_url(request: HttpRequest) -> str:
    """Where clients send requests: OPENBILI_PUBLIC_BASE_URL behind a proxy, else this host."""
    return settings.OPENBILI_PUBLIC_BASE_URL or request.build_absolute_uri("/").rstrip("/")


def page(request: HttpRequest, member: Membership, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    accounts = memberships_of(request).order_by("account__name", "account_id")
    common = {
        "member": member,
        "account": member.account,
        "is_owner": member.role == Membership.Role.OWNER,
        "memberships": accounts,
        "base_url": base_url(request),
    }
    return render(request, template, common | context, status=status)
