"""The operators' admin for accounts, the ledger, keys and the catalog (CONTRACT §7).

Thin by design: every write that moves money, creates a key or publishes a price calls
billing/services.py. Ledger entries, holds, price snapshots and probes are view-only; price
versions are add-only. No page ever shows a full API key (except once, right after it was made),
a key hash, an upstream secret or its ciphertext.
"""

from __future__ import annotations

from decimal import Decimal

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Subquery
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html
from django.utils.http import urlencode

from billing import invoice_files, keys, money, selectors, services
from billing.forms import (
    ApiKeyAddForm,
    ApiKeyChangeForm,
    CreditAdjustForm,
    PriceVersionAddForm,
    RouteForm,
    credit_idempotency_key,
)
from billing.models import (
    Account,
    ApiKey,
    CatalogModel,
    Hold,
    Invoice,
    InvoiceLine,
    KeyAudit,
    LedgerEntry,
    Membership,
    PriceSnapshot,
    PriceVersion,
    Probe,
    Route,
)
from openbili.core.errors import OpenbiliError

# --- helpers -------------------------------------------------------------------------------------


def usd(value: Decimal | None) -> str:
    """Display an amount without losing precision: at least cents, more places only when non-zero."""
    if value is None:
        return "-"
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def admin_url(obj, action: str = "change") -> str:
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_{action}", args=[obj.pk])


def changelist_url(model, **params) -> str:
    opts = model._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def adopt(obj, saved) -> None:
    """Make the admin's unsaved form instance the row a service created, so the admin's own
    bookkeeping after `save_model` (log entry, redirect, message) refers to that row."""
    for field in type(saved)._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding = False
    obj._state.db = saved._state.db


class IdSearchMixin:
    """Search that sends identifier-shaped terms (req_…, trace_…) to one exact, indexed lookup
    instead of an OR over every search field, which would scan a large table."""

    exact_search_prefixes: tuple[tuple[str, str], ...] = ()

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        for prefix, field in self.exact_search_prefixes:
            if term.startswith(prefix) and " " not in term:
                return queryset.filter(**{field: term}), False
        return super().get_search_results(request, queryset, search_term)


class ViewOnlyAdmin(admin.ModelAdmin):
    """Rows written only by services (the ledger, the gateway, the prober): operators look, never touch."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- accounts ------------------------------------------------------------------------------------


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "balance_usd", "reserved_usd", "available_usd", "credit_limit_usd", "created_at"]
    list_filter = ["status"]
    search_fields = ["name"]
    date_hierarchy = "created_at"
    ordering = ["name"]
    inlines = [MembershipInline]
    actions = ["credit_adjust"]
    readonly_fields = ["balance_usd", "reserved_usd", "available_usd", "ledger_check", "related_links", "created_at"]
    fieldsets = [
        (None, {"fields": ["name", "status", "credit_limit", "created_at"]}),
        (
            "Rate limits",
            {
                "description": "Shared by all the account's keys, on top of each key's own limits; "
                "enforced by every gateway process through Redis (429 rate_limit_exceeded).",
                "fields": ["rpm_limit", "tpm_limit"],
            },
        ),
        (
            "Balance",
            {
                "description": "The balance changes only through ledger entries: use the "
                "<b>Credit / adjust</b> button above (or the action on the account list). "
                "Every change is an append-only entry with a reason and the operator who made it.",
                "fields": ["balance_usd", "reserved_usd", "available_usd", "ledger_check"],
            },
        ),
        ("Related", {"fields": ["related_links"]}),
    ]

    def get_fieldsets(self, request, obj=None):
        if obj is None:  # add: an account starts at zero; credit it afterwards
            return [
                (
                    None,
                    {
                        "description": "A new account starts with a zero balance. Credit it afterwards "
                        "with <b>Credit / adjust</b> on its page.",
                        "fields": ["name", "status", "credit_limit", "rpm_limit", "tpm_limit"],
                    },
                )
            ]
        return self.fieldsets

    @admin.display(description="balance (USD)", ordering="balance")
    def balance_usd(self, obj):
        return usd(obj.balance)

    @admin.display(description="reserved (USD)", ordering="reserved")
    def reserved_usd(self, obj):
        return usd(obj.reserved)

    @admin.display(description="available (USD)")
    def available_usd(self, obj):
        return usd(obj.available)

    @admin.display(description="credit limit (USD)", ordering="credit_limit")
    def credit_limit_usd(self, obj):
        return usd(obj.credit_limit)

    @admin.display(description="ledger sum (USD)")
    def ledger_check(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        total = selectors.ledger_sum(account_id=obj.pk)
        if total == obj.balance:
            return format_html("{} ✔ equals the balance", usd(total))
        return format_html(
            '<strong style="color:#ba2121">{} ✘ MISMATCH: differs from the balance {} by {}. '
            "The balance must equal the ledger sum; investigate before crediting.</strong>",
            usd(total),
            usd(obj.balance),
            usd(obj.balance - total),
        )

    @admin.display(description="see also")
    def related_links(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        from usage.models import UsageRecord

        return format_html(
            '<a href="{}">ledger entries</a> · <a href="{}">holds</a> · <a href="{}">API keys</a> · '
            '<a href="{}">usage</a>',
            changelist_url(LedgerEntry, account__id__exact=obj.pk),
            changelist_url(Hold, account__id__exact=obj.pk),
            changelist_url(ApiKey, account__id__exact=obj.pk),
            changelist_url(UsageRecord, account__id__exact=obj.pk),
        )

    # Credit / adjust: an action on the list and a button on the change page, one form for both.

    def get_urls(self):
        urls = [
            path(
                "<path:object_id>/credit/",
                self.admin_site.admin_view(self.credit_view),
                name="billing_account_credit",
            )
        ]
        return urls + super().get_urls()

    @admin.action(description="Credit / adjust the balance of the selected account", permissions=["change"])
    def credit_adjust(self, request, queryset):
        accounts = list(queryset[:2])
        if len(accounts) != 1:
            self.message_user(request, "Select exactly one account to credit or adjust.", messages.WARNING)
            return None
        form = CreditAdjustForm(initial={"idempotency_key": credit_idempotency_key()})
        return self._credit_render(request, accounts[0], form)

    def credit_view(self, request, object_id):
        account = self.get_object(request, unquote(object_id))
        if account is None:
            raise Http404("No such account.")
        if not self.has_change_permission(request, account):
            raise PermissionDenied
        if request.method != "POST":
            form = CreditAdjustForm(initial={"idempotency_key": credit_idempotency_key()})
            return self._credit_render(request, account, form)
        form = CreditAdjustForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            # Only for the message: the service itself makes the replay harmless.
            replay = LedgerEntry.objects.filter(idempotency_key=data["idempotency_key"]).exists()
            try:
                entry = services.ledger_post(
                    account_id=account.pk,
                    kind=data["kind"],
                    amount=data["amount"],
                    idempotency_key=data["idempotency_key"],
                    reason=data["reason"],
                    actor=request.user,
                )
            except OpenbiliError as exc:
                field = exc.param if exc.param in form.fields and exc.param != "idempotency_key" else None
                form.add_error(field, exc.message)
            except money.MoneyError as exc:
                form.add_error("amount", str(exc))
            else:
                account.refresh_from_db(fields=["balance"])
                if replay:
                    self.message_user(
                        request,
                        f"This form was already submitted (ledger entry #{entry.pk}); nothing was posted "
                        f"again. Balance of {account}: {usd(account.balance)} USD.",
                        messages.WARNING,
                    )
                else:
                    self.log_change(
                        request,
                        account,
                        f"{entry.get_kind_display()} {usd(entry.amount)} USD (ledger entry #{entry.pk}): "
                        f"{entry.reason}",
                    )
                    self.message_user(
                        request,
                        f"{entry.get_kind_display()} of {usd(entry.amount)} USD posted to {account}. "
                        f"New balance: {usd(entry.balance_after)} USD.",
                        messages.SUCCESS,
                    )
                return HttpResponseRedirect(admin_url(account))
        return self._credit_render(request, account, form)

    def _credit_render(self, request, account, form):
        context = {
            **self.admin_site.each_context(request),
            "title": f"Credit / adjust: {account}",
            "opts": self.opts,
            "account": account,
            "form": form,
            "form_url": reverse("admin:billing_account_credit", args=[account.pk]),
            "ledger_sum": selectors.ledger_sum(account_id=account.pk),
            "balance": usd(account.balance),
            "available": usd(account.available),
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/billing/account/credit_adjust.html", context)


# --- ledger and holds ----------------------------------------------------------------------------


@admin.register(LedgerEntry)
class LedgerEntryAdmin(IdSearchMixin, ViewOnlyAdmin):
    list_display = [
        "created_at",
        "account",
        "kind",
        "amount_usd",
        "balance_after_usd",
        "reason_short",
        "request_id",
        "ticket_link",
        "created_by",
    ]
    list_filter = ["kind", ("ticket", admin.EmptyFieldListFilter), "created_at"]
    list_select_related = ["account", "created_by"]
    search_fields = ["account__name", "idempotency_key__exact", "request_id__exact"]
    search_help_text = "Account name (contains), or an exact idempotency key or request_id (req_…)."
    exact_search_prefixes = (
        ("req_", "request_id"),
        ("usage:", "idempotency_key"),
        ("admin-credit:", "idempotency_key"),
    )
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    show_full_result_count = False

    @admin.display(description="amount (USD)", ordering="amount")
    def amount_usd(self, obj):
        return usd(obj.amount)

    @admin.display(description="balance after (USD)", ordering="balance_after")
    def balance_after_usd(self, obj):
        return usd(obj.balance_after)

    @admin.display(description="reason")
    def reason_short(self, obj):
        return obj.reason if len(obj.reason) <= 60 else obj.reason[:59] + "…"

    @admin.display(description="ticket", ordering="ticket")
    def ticket_link(self, obj):
        if obj.ticket_id is None:
            return "-"
        return format_html(
            '<a href="{}">#{}</a>', reverse("admin:tickets_ticket_change", args=[obj.ticket_id]), obj.ticket_id
        )


@admin.register(Hold)
class HoldAdmin(IdSearchMixin, ViewOnlyAdmin):
    list_display = [
        "request_id",
        "account",
        "api_key",
        "amount",
        "state",
        "settled_amount",
        "created_at",
        "expires_at",
        "resolved_at",
    ]
    list_filter = ["state", "created_at"]
    list_select_related = ["account", "api_key"]
    search_fields = ["request_id__exact", "account__name"]
    search_help_text = "Exact request_id (req_…), or account name (contains)."
    exact_search_prefixes = (("req_", "request_id"),)
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    show_full_result_count = False


# --- API keys ------------------------------------------------------------------------------------


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "prefix",
        "name",
        "account",
        "status",
        "scope",
        "rpm_limit",
        "tpm_limit",
        "expires_at",
        "last_used_at",
        "created_at",
        "replaced_by",
    ]
    list_filter = ["status", "all_models", "created_at"]
    list_select_related = ["account", "replaced_by"]
    search_fields = ["prefix__startswith", "name", "account__name"]
    search_help_text = "Key prefix (e.g. sk-ob-AbCdEf), key name or account name."
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    autocomplete_fields = ["account"]
    actions = ["disable_keys", "rotate_keys"]
    # key_hash is deliberately absent from every field list: it is never shown.
    change_readonly = [
        "account",
        "prefix",
        "status",
        "created_by",
        "created_at",
        "disabled_at",
        "last_used_at",
        "replaced_by",
        "replaces_key",
    ]

    def has_delete_permission(self, request, obj=None):
        # Keys are disabled or rotated, never deleted: usage rows and the audit trail point at them.
        return False

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = ApiKeyChangeForm if obj is not None else ApiKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [
                (
                    None,
                    {
                        "description": "The full key is shown once, right after you save, and is "
                        "stored only as a hash. Copy it then.",
                        "fields": ApiKeyAddForm.Meta.fields,
                    },
                )
            ]
        return [
            (None, {"fields": ["account", "name", "prefix", "status"]}),
            ("Scope and limits", {"fields": ["all_models", "allowed_models", "rpm_limit", "tpm_limit", "expires_at"]}),
            (
                "History",
                {
                    "description": "To stop a key use the 'Disable' action; to replace it use 'Rotate' "
                    "(both on the key list).",
                    "fields": [
                        "created_by",
                        "created_at",
                        "last_used_at",
                        "disabled_at",
                        "replaced_by",
                        "replaces_key",
                    ],
                },
            ),
        ]

    def get_readonly_fields(self, request, obj=None):
        return self.change_readonly if obj is not None else []

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if term.startswith(keys.KEY_START[:3]):
            # Someone pasted a whole key: search by its non-secret prefix only.
            term = term[: keys.PREFIX_LENGTH]
        return super().get_search_results(request, queryset, term)

    @admin.display(description="scope")
    def scope(self, obj):
        return "all models" if obj.all_models else ", ".join(obj.allowed_models) or "(none)"

    @admin.display(description="replaces")
    def replaces_key(self, obj):
        previous = ApiKey.objects.filter(replaced_by=obj).first()
        if previous is None:
            return "-"
        return format_html('<a href="{}">{}</a>', admin_url(previous), previous)

    def save_model(self, request, obj, form, change):
        if change:
            # Through the service: the change is audited (who, when, what) like the API's.
            values = {field: form.cleaned_data[field] for field in form.changed_data if field in services.KEY_SETTINGS}
            services.key_update(key=ApiKey.objects.get(pk=obj.pk), actor=request.user, **values)
            obj.refresh_from_db()
            return
        data = form.cleaned_data
        key, secret = services.key_create(
            account=data["account"],
            name=data["name"],
            models=None if data["all_models"] else data["allowed_models"],
            rpm_limit=data.get("rpm_limit"),
            tpm_limit=data.get("tpm_limit"),
            expires_at=data.get("expires_at"),
            actor=request.user,
        )
        adopt(obj, key)
        obj._new_secret = secret  # lives only until the response below is rendered

    def response_add(self, request, obj, post_url_continue=None):
        secret = getattr(obj, "_new_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        return self._secrets_page(request, "API key created", [(None, obj, secret)])

    def _secrets_page(self, request, title, rows):
        """The one place a full key is ever shown: in this response body, never stored or logged."""
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "rows": [{"old": old, "key": key, "secret": secret} for old, key, secret in rows],
            "changelist_url": changelist_url(ApiKey),
        }
        response = TemplateResponse(request, "admin/billing/apikey/secret_once.html", context)
        add_never_cache_headers(response)
        return response

    def _confirm_page(self, request, queryset, action, title, warning):
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "keys": queryset,
            "action": action,
            "warning": warning,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/billing/apikey/action_confirm.html", context)

    @admin.action(description="Disable selected keys", permissions=["change"])
    def disable_keys(self, request, queryset):
        queryset = queryset.select_related("account")
        if request.POST.get("confirm") != "yes":
            return self._confirm_page(
                request,
                queryset,
                "disable_keys",
                "Disable API keys",
                "Requests with these keys are refused (401) from now on. This cannot be undone here.",
            )
        disabled = 0
        for key in queryset:
            if key.status != ApiKey.Status.DISABLED:
                services.key_disable(key=key, actor=request.user)
                self.log_change(request, key, "Disabled.")
                disabled += 1
        self.message_user(request, f"Disabled {disabled} key(s).", messages.SUCCESS)
        return None

    @admin.action(description="Rotate selected keys (shows the new keys once)", permissions=["change"])
    def rotate_keys(self, request, queryset):
        queryset = queryset.select_related("account")
        if request.POST.get("confirm") != "yes":
            return self._confirm_page(
                request,
                queryset,
                "rotate_keys",
                "Rotate API keys",
                "Each key is replaced by a new one with the same settings; the old key stops working at "
                "once. The new keys are shown once on the next page.",
            )
        rows = []
        for key in queryset:
            try:
                new_key, secret = services.key_rotate(key=key, actor=request.user)
            except OpenbiliError as exc:
                self.message_user(request, f"{key}: {exc.message}", messages.ERROR)
                continue
            self.log_change(request, key, f"Rotated; replaced by {new_key.prefix}… (#{new_key.pk}).")
            rows.append((key, new_key, secret))
        if not rows:
            return None
        return self._secrets_page(request, "API keys rotated", rows)


# --- catalog -------------------------------------------------------------------------------------


def secret_status(route: Route) -> str:
    """Where a route's upstream secret comes from; never the secret or its ciphertext."""
    if route.secret_env:
        return f"env: {route.secret_env}" + (
            " (an unused encrypted secret is also stored)" if route.secret_encrypted else ""
        )
    return "encrypted" if route.secret_encrypted else "none"


def latest_probe_annotations():
    latest = Probe.objects.filter(route=OuterRef("pk")).order_by("-checked_at", "-id")
    return {
        "latest_probe_ok": Subquery(latest.values("ok")[:1]),
        "latest_probe_at": Subquery(latest.values("checked_at")[:1]),
    }


def probe_display(route: Route) -> str:
    ok, at = getattr(route, "latest_probe_ok", None), getattr(route, "latest_probe_at", None)
    if at is None:
        return "never probed"
    return f"{'OK' if ok else 'FAIL'} at {at:%Y-%m-%d %H:%M:%S}"


class RouteSecretMixin:
    """Stores the write-only secret of a RouteForm through the service once the route is saved."""

    @staticmethod
    def apply_secret(form) -> None:
        change = form.secret_change()
        if change is not None and form.instance.pk is not None:
            services.route_secret_set(route=form.instance, secret=change)


class RouteInline(RouteSecretMixin, admin.TabularInline):
    model = Route
    form = RouteForm
    extra = 0
    can_delete = False  # see RouteAdmin.has_delete_permission
    show_change_link = True
    fields = [
        "name",
        "provider",
        "base_url",
        "upstream_model",
        "secret_state",
        "secret",
        "clear_secret",
        "secret_env",
        "priority",
        "active",
        "timeout_seconds",
        "latest_probe",
    ]
    readonly_fields = ["secret_state", "latest_probe"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(**latest_probe_annotations())

    @admin.display(description="secret")
    def secret_state(self, obj):
        return secret_status(obj) if obj and obj.pk else "-"

    @admin.display(description="latest probe")
    def latest_probe(self, obj):
        return probe_display(obj) if obj and obj.pk else "-"


class PriceVersionInline(admin.TabularInline):
    model = PriceVersion
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("effective_from", *PriceVersion.PRICE_FIELDS, "note", "created_by", "created_at")
    readonly_fields = fields
    ordering = ["-effective_from"]
    verbose_name_plural = "price versions (read-only: publish new prices with the link above)"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("created_by")


class CatalogChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        # Visibility of the page's models in 4 queries, whatever the page size.
        models = list(self.result_list)
        entries = {entry.model.pk: entry for entry in selectors.catalog_entries(names=[m.name for m in models])}
        for model in models:
            entry = entries.get(model.pk)
            model._visibility = selectors.model_visibility(entry) if entry else (False, "unknown")


@admin.register(CatalogModel)
class CatalogModelAdmin(RouteSecretMixin, admin.ModelAdmin):
    list_display = [
        "name",
        "display_name",
        "kind",
        "owned_by",
        "enabled",
        "customer_visible",
        "visibility_reason",
        "context_window",
        "max_output_tokens",
    ]
    list_filter = ["kind", "enabled", "owned_by"]
    search_fields = ["name", "display_name", "owned_by"]
    ordering = ["name"]
    inlines = [RouteInline, PriceVersionInline]
    readonly_fields = ["visibility", "prices_link", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "display_name", "kind", "owned_by", "enabled"]}),
        ("Limits", {"fields": ["context_window", "max_output_tokens"]}),
        (
            "Customer visibility",
            {
                "description": "A model is customer-visible only when it is enabled, has an active route "
                "whose latest probe is OK, and has an effective price (CONTRACT §4).",
                "fields": ["visibility", "prices_link"],
            },
        ),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

    def get_changelist(self, request, **kwargs):
        return CatalogChangeList

    def _visibility_of(self, obj) -> tuple[bool, str]:
        cached = getattr(obj, "_visibility", None)
        if cached is None:
            entry = selectors.model_entry(obj.name)
            cached = selectors.model_visibility(entry) if entry else (False, "unknown")
            obj._visibility = cached
        return cached

    @admin.display(description="visible", boolean=True)
    def customer_visible(self, obj):
        return self._visibility_of(obj)[0]

    @admin.display(description="why")
    def visibility_reason(self, obj):
        return self._visibility_of(obj)[1]

    @admin.display(description="customer visibility")
    def visibility(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        visible, reason = self._visibility_of(obj)
        return format_html("<strong>{}</strong>", "✔ visible" if visible else f"✘ hidden: {reason}")

    @admin.display(description="prices")
    def prices_link(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        add_url = reverse("admin:billing_priceversion_add") + f"?model={obj.pk}"
        return format_html(
            '<a href="{}">Publish new prices</a> (a new version; existing versions are never edited) · '
            '<a href="{}">all versions</a>',
            add_url,
            changelist_url(PriceVersion, model__id__exact=obj.pk),
        )

    def save_formset(self, request, form, formset, change):
        super().save_formset(request, form, formset, change)
        if formset.model is Route:
            for route_form in formset.forms:
                if route_form in formset.deleted_forms or not route_form.has_changed():
                    continue
                self.apply_secret(route_form)


@admin.register(Route)
class RouteAdmin(RouteSecretMixin, admin.ModelAdmin):
    form = RouteForm
    list_display = [
        "name",
        "model",
        "provider",
        "upstream_model",
        "base_url",
        "priority",
        "active",
        "secret_state",
        "latest_probe",
    ]
    list_filter = ["provider", "active", "model"]
    list_select_related = ["model"]
    search_fields = ["name", "model__name", "upstream_model", "base_url"]
    ordering = ["model__name", "priority", "id"]
    autocomplete_fields = ["model"]
    readonly_fields = ["secret_state", "latest_probe", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["model", "name", "provider", "base_url", "upstream_model", "priority", "active"]}),
        (
            "Upstream secret",
            {
                "description": "Write-only. Enter a secret to store it encrypted, or name an environment "
                "variable that holds it (the variable wins when both are set). Routes are never deleted: "
                "untick 'active' to take one out of service.",
                "fields": ["secret_state", "secret", "clear_secret", "secret_env"],
            },
        ),
        ("Health", {"fields": ["timeout_seconds", "latest_probe", "created_at", "updated_at"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(**latest_probe_annotations())

    def has_delete_permission(self, request, obj=None):
        # Deactivate instead: deleting would detach past usage rows from their route and drop its probes.
        return False

    @admin.display(description="secret")
    def secret_state(self, obj):
        return secret_status(obj) if obj and obj.pk else "-"

    @admin.display(description="latest probe")
    def latest_probe(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        return format_html(
            '{} · <a href="{}">all probes</a>', probe_display(obj), changelist_url(Probe, route__id__exact=obj.pk)
        )

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        self.apply_secret(form)


@admin.register(PriceVersion)
class PriceVersionAdmin(admin.ModelAdmin):
    """Add-only: a price change is a new version, published through the service."""

    form = PriceVersionAddForm
    list_display = ["model", "effective_from", *PriceVersion.PRICE_FIELDS, "note", "created_by", "created_at"]
    list_filter = ["model"]
    list_select_related = ["model", "created_by"]
    search_fields = ["model__name", "note"]
    date_hierarchy = "effective_from"
    ordering = ["model__name", "-effective_from"]
    autocomplete_fields = ["model"]
    fieldsets = [
        (
            None,
            {
                "description": "Publishing prices identical to the model's newest version changes nothing. "
                "Requests already running keep the prices they started with.",
                "fields": ["model", *PriceVersion.PRICE_FIELDS, "effective_from", "note"],
            },
        )
    ]

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self.fieldsets
        return [(None, {"fields": [*self.fieldsets[0][1]["fields"], "created_by", "created_at"]})]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        version, created = services.price_version_publish(
            model=form.cleaned_data["model"],
            prices=form.prices(),
            effective_from=form.cleaned_data.get("effective_from"),
            note=form.cleaned_data.get("note", ""),
            actor=request.user,
        )
        adopt(obj, version)
        obj._published = created

    def log_addition(self, request, obj, message):
        if getattr(obj, "_published", True):
            return super().log_addition(request, obj, message)
        return None

    def response_add(self, request, obj, post_url_continue=None):
        if getattr(obj, "_published", True) or "_popup" in request.POST:
            return super().response_add(request, obj, post_url_continue)
        self.message_user(
            request,
            f"These prices equal the newest version of {obj.model} ({obj}); nothing was published.",
            messages.WARNING,
        )
        return HttpResponseRedirect(admin_url(obj))


@admin.register(PriceSnapshot)
class PriceSnapshotAdmin(ViewOnlyAdmin):
    list_display = ["short_digest", "model_name", "price_version", *PriceVersion.PRICE_FIELDS, "created_at"]
    list_select_related = ["price_version__model"]
    search_fields = ["model_name", "digest__startswith"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]

    @admin.display(description="digest", ordering="digest")
    def short_digest(self, obj):
        return obj.digest[:12]


@admin.register(Probe)
class ProbeAdmin(ViewOnlyAdmin):
    list_display = ["checked_at", "route", "ok", "status_code", "latency_ms", "error"]
    list_filter = ["ok", "route__provider", "checked_at"]
    list_select_related = ["route__model"]
    search_fields = ["route__model__name", "route__name", "error"]
    date_hierarchy = "checked_at"
    ordering = ["-checked_at", "-id"]
    show_full_result_count = False


@admin.register(KeyAudit)
class KeyAuditAdmin(ViewOnlyAdmin):
    """Who changed which API key, when and how (the dashboard API's and this admin's changes alike).
    Append-only: the table refuses updates and deletes. Never a secret or a hash, only prefixes."""

    list_display = ["created_at", "account", "key_prefix", "action", "actor"]
    list_filter = ["action"]
    list_select_related = ["account", "actor"]
    search_fields = ["key_prefix__startswith", "account__name"]
    search_help_text = "Key prefix (sk-ob-…) or account name."
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    fields = ["created_at", "account", "key", "key_prefix", "action", "actor", "changes"]


# --- invoices ------------------------------------------------------------------------------------


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = ("model", "endpoint", "billing_result", "requests", "input_tokens", "output_tokens", "cost", "amount")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Invoice)
class InvoiceAdmin(ViewOnlyAdmin):
    """Final monthly invoices (billing/invoices.py): built by beat on the 1st or by
    `manage.py invoice_build`; never edited (append-only in the database)."""

    list_display = ["number", "account", "period", "usage_exact_usd", "total_usd", "closing_usd", "files"]
    list_filter = ["period_start"]
    list_select_related = ["account"]
    search_fields = ["number__exact", "account__name"]
    search_help_text = "Exact invoice number (OB-YYYYMM-…), or account name (contains)."
    ordering = ["-period_start", "account_id"]
    inlines = [InvoiceLineInline]
    show_full_result_count = False

    @admin.display(description="period", ordering="period_start")
    def period(self, obj):
        return f"{obj.period_start:%Y-%m}"

    @admin.display(description="usage, exact (USD)")
    def usage_exact_usd(self, obj):
        return usd(obj.usage_exact)

    @admin.display(description="total (USD)", ordering="total")
    def total_usd(self, obj):
        return usd(obj.total)

    @admin.display(description="closing balance (USD)")
    def closing_usd(self, obj):
        return usd(obj.closing_balance)

    @admin.display(description="files")
    def files(self, obj):
        return format_html(
            '<a href="{}">XLSX</a> · <a href="{}">CSV</a>',
            reverse("admin:billing_invoice_download", args=[obj.pk, "xlsx"]),
            reverse("admin:billing_invoice_download", args=[obj.pk, "csv"]),
        )

    def get_urls(self):
        download = self.admin_site.admin_view(self.download_view)
        return [
            path("<int:invoice_id>/download.<str:kind>", download, name="billing_invoice_download"),
            *super().get_urls(),
        ]

    def download_view(self, request, invoice_id: int, kind: str):
        if not self.has_view_permission(request):
            raise PermissionDenied
        invoice = Invoice.objects.select_related("account").filter(pk=invoice_id).first()
        if invoice is None or kind not in invoice_files.FILES:
            raise Http404
        content_type, render = invoice_files.FILES[kind]
        response = HttpResponse(render(invoice), content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="{invoice.number}.{kind}"'
        return response
