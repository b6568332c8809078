"""Who may see what in the console: the dashboard API's one membership gate (openbili.api.tenancy),
answered as pages. A signed-out visitor goes to the login page; an account the caller is not a
member of is a 404 — the same as one that does not exist — and objects below an account are looked
up within it only. Owners manage keys; members read and open tickets."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import translation
from rest_framework import exceptions

from billing.models import Membership
from openbili.api.tenancy import membership

LANGUAGES = ("en", "zh-hans")


def page_language(request: HttpRequest) -> str:
    """The console's language: the visitor's choice (the language cookie set by /console/i18n/),
    else their browser's Accept-Language. Only console pages switch language (for the length of
    the view, so no pooled thread keeps it): the API and the gateway keep their English bodies."""
    language = translation.get_language_from_request(request)
    return language if language in LANGUAGES else "en"


def console_page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A page of a signed-in user (no account in the URL)."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), "console-login")
        language = page_language(request)
        with translation.override(language):
            response = view(request, *args, **kwargs)
        # Pages carry balances and, once, a new key's secret: never kept by a cache.
        response.headers.setdefault("Cache-Control", "private, no-store")
        response.headers["Content-Language"] = language
        return response

    return wrapper


def account_page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A page under /console/<account_id>/: the caller's membership is `request.member`."""

    @console_page
    @wraps(view)
    def wrapper(request: HttpRequest, account_id: int, *args, **kwargs) -> HttpResponse:
        try:
            request.member = membership(request, account_id)  # type: ignore[attr-defined]
        except exceptions.NotFound:
            raise Http404("No such account.") from None
        request.session["console_account"] = int(account_id)  # the account /console/ goes back to
        return view(request, request.member, *args, **kwargs)  # type: ignore[attr-defined]

    return wrapper


def require_owner(member: Membership) -> None:
    if member.role != Membership.Role.OWNER:
        raise PermissionDenied("Only an owner of this account may do this.")


def is_owner(member: Membership) -> bool:
    return member.role == Membership.Role.OWNER


def memberships_of(request) -> QuerySet[Membership]:
    """The signed-in caller's memberships (the account switcher; the front door's choice)."""
    return Membership.objects.filter(user=request.user, user__is_active=True).select_related("account")
