"""API keys: list, create (the secret shown once), edit name / scope / limits / expiry, and the
moves that break running clients — disable, rotate, delete — each behind a confirmation page.
Every change is one billing.services call, which writes the key's audit entry, exactly as the
API's (billing/api/keys.py); members see the list, owners change it."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods

from billing import services
from billing.api.keys import keys_of
from billing.api.keys_serializers import KeySerializer
from billing.models import ApiKey
from openbili.console.access import account_page, require_owner
from openbili.console.forms import KeyForm
from openbili.console.pages import page
from openbili.core.errors import OpenbiliError

ACTIONS = {
    # action: (what it does, whether running clients break)
    "disable": (gettext_lazy("Disable"), True),
    "enable": (gettext_lazy("Enable"), False),
    "rotate": (gettext_lazy("Rotate"), True),
    "delete": (gettext_lazy("Delete"), True),
}


def _key(member, key_id: int) -> ApiKey:
    key = keys_of(member.account).filter(pk=key_id).first()
    if key is None:
        raise Http404("No such key.")
    return key


def _shown(keys, now) -> list[dict]:
    return list(KeySerializer(keys, many=True, context={"now": now}).data)


def _created(request: HttpRequest, member, key: ApiKey, secret: str, *, rotated_from: ApiKey | None = None):
    """The one page that shows a secret: rendered from the POST that made it, never stored."""
    fresh = keys_of(member.account).get(pk=key.pk)
    return page(
        request,
        member,
        "console/key_created.html",
        {"key": _shown([fresh], timezone.now())[0], "secret": secret, "rotated_from": rotated_from, "section": "keys"},
        status=201,
    )


@account_page
@require_http_methods(["GET", "POST"])
def key_list(request: HttpRequest, member) -> HttpResponse:
    form = KeyForm()
    status = 200
    if request.method == "POST":
        require_owner(member)
        form = KeyForm(request.POST)
        if form.is_valid():
            try:
                values = form.settings()
                models = values.pop("allowed_models")
                key, secret = services.key_create(account=member.account, models=models, actor=request.user, **values)
            except OpenbiliError as exc:
                form.add_error(None, exc.message)
            else:
                return _created(request, member, key, secret)
        status = 400
    keys = keys_of(member.account).order_by("-created_at", "-id")
    return page(
        request,
        member,
        "console/keys.html",
        {"keys": _shown(keys, timezone.now()), "form": form, "section": "keys"},
        status=status,
    )


@account_page
@require_http_methods(["GET", "POST"])
def key_edit(request: HttpRequest, member, key_id: int) -> HttpResponse:
    key = _key(member, key_id)
    form = KeyForm.of_key(key)
    status = 200
    if request.method == "POST":
        require_owner(member)
        form = KeyForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                services.key_update(key=key, actor=request.user, **form.settings())
            except OpenbiliError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, _("Key “%(name)s” saved.") % {"name": data["name"]})
                return redirect("console-keys", account_id=member.account_id)
        status = 400
    return page(
        request,
        member,
        "console/key_edit.html",
        {"key": _shown([key], timezone.now())[0], "form": form, "section": "keys"},
        status=status,
    )


@account_page
@require_http_methods(["GET", "POST"])
def key_action(request: HttpRequest, member, key_id: int, action: str) -> HttpResponse:
    """GET: what the action will do, and a button; POST: do it (owner)."""
    if action not in ACTIONS:
        raise Http404("No such action.")
    require_owner(member)
    key = _key(member, key_id)
    if request.method == "GET":
        label, breaks = ACTIONS[action]
        return page(
            request,
            member,
            "console/key_confirm.html",
            {
                "key": _shown([key], timezone.now())[0],
                "action": action,
                "label": label,
                "breaks": breaks,
                "section": "keys",
            },
        )
    try:
        if action == "rotate":
            new_key, secret = services.key_rotate(key=key, actor=request.user)
            return _created(request, member, new_key, secret, rotated_from=key)
        if action == "delete":
            services.key_delete(key=key, actor=request.user)
            messages.success(request, _("Key %(prefix)s deleted.") % {"prefix": key.prefix})
        else:
            services.key_update(key=key, actor=request.user, active=action == "enable")
            done = _("Key %(prefix)s disabled.") if action == "disable" else _("Key %(prefix)s enabled.")
            messages.success(request, done % {"prefix": key.prefix})
    except OpenbiliError as exc:
        messages.error(request, exc.message)
    return redirect("console-keys", account_id=member.account_id)
