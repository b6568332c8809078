"""Sign-in, sign-out and the console's front door.

The login shares its limits with the API's (openbili.api.views.LoginView): django-axes counts wrong
passwords per username and address and locks that pair out past OPENBILI_LOGIN_FAILURE_LIMIT, and
the `login` throttle caps attempts per address — one bucket for both doors, so the console is not a
way around the API's limit."""

from __future__ import annotations

from django.contrib.auth import authenticate, login, logout
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import translation
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from rest_framework.throttling import ScopedRateThrottle

from openbili.console.access import console_page, memberships_of, page_language


class _LoginScope:
    throttle_scope = "login"  # the API login's bucket (REST_FRAMEWORK DEFAULT_THROTTLE_RATES)


def _next_page(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return "/console/"


def login_page(request: HttpRequest) -> HttpResponse:
    language = page_language(request)
    with translation.override(language):
        if request.user.is_authenticated and request.method == "GET":
            return redirect(_next_page(request))
        error, status = "", 200
        username = request.POST.get("username", "")[:150]
        if request.method == "POST":
            throttle = ScopedRateThrottle()
            if not throttle.allow_request(request, _LoginScope()):  # type: ignore[arg-type]
                error, status = _("Too many sign-in attempts: try again in a minute."), 429
            else:
                password = request.POST.get("password", "")[:4096]
                user = authenticate(request, username=username, password=password)
                if getattr(request, "axes_locked_out", False):
                    error, status = _("Too many failed sign-ins: try again later."), 429
                elif user is None or not user.is_active:
                    error, status = _("Wrong username or password."), 401
                else:
                    login(request, user)
                    return redirect(_next_page(request))
        context = {"error": error, "username": username, "next": _next_page(request)}
        response = render(request, "console/login.html", context, status=status)
        response.headers["Cache-Control"] = "no-store"
        return response


@require_POST
def logout_page(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("console-login")


@console_page
def home(request: HttpRequest) -> HttpResponse:
    """The last account used in this session, else the first; a login without one sees why."""
    memberships = list(memberships_of(request).order_by("account_id"))
    if not memberships:
        return render(request, "console/no_account.html", {})
    wanted = request.session.get("console_account")
    chosen = next((m for m in memberships if m.account_id == wanted), memberships[0])
    return redirect("console-overview", account_id=chosen.account_id)
