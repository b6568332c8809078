"""Usage rows, stored images, usage exports and archived months in the admin: read-only; usage rows
searchable by request_id, trace_id, key prefix, account, model; exports can be retried."""

from __future__ import annotations

import json
import uuid

from django.contrib import admin, messages
from django.db.models import Q
from django.utils.html import format_html

from billing.admin import IdSearchMixin, ViewOnlyAdmin, usd
from billing.keys import KEY_START, PREFIX_LENGTH
from usage import exports
from usage.models import StoredImage, UsageArchive, UsageExport, UsageRecord


def w3c_trace_id(term: str) -> str | None:
    """The 32 hex digits of a bare W3C trace id or of a whole `traceparent` value, else None."""
    term = term.strip().lower()
    parts = term.split("-")
    if len(parts) == 4 and len(parts[1]) == 32:  # 00-<trace id>-<parent id>-<flags>
        term = parts[1]
    if len(term) == 32 and all(c in "0123456789abcdef" for c in term):
        return term
    return None


@admin.register(UsageRecord)
class UsageRecordAdmin(IdSearchMixin, ViewOnlyAdmin):
    list_display = [
        "started_at",
        "request_id",
        "account",
        "key_prefix",
        "endpoint",
        "model_requested",
        "stream",
        "status",
        "error_code",
        "billing_result",
        "cost",
        "total_tokens",
    ]
    list_filter = ["billing_result", "error_class", "stream", "provider", "tokens_estimated", "output_reached_client"]
    list_select_related = ["account"]
    search_fields = [
        "request_id__exact",
        "trace_id__exact",
        "key_prefix__startswith",
        "model_requested",
        "account__name",
    ]
    search_help_text = (
        "request_id (req_…), trace_id (trace_… or a W3C trace id), key prefix (sk-ob-…), model or account name."
    )
    exact_search_prefixes = (("req_", "request_id"), ("trace_", "trace_id"))
    date_hierarchy = "started_at"
    ordering = ["-started_at", "-id"]
    show_full_result_count = False  # COUNT(*) over every usage row on each page load is not worth it
    readonly_fields = ["cost", "attempts_pretty"]
    fieldsets = [
        (
            "Request",
            {
                "fields": [
                    "request_id",
                    "trace_id",
                    "account",
                    "api_key",
                    "key_prefix",
                    "endpoint",
                    "model_requested",
                    "stream",
                    "user_agent",
                ]
            },
        ),
        (
            "Outcome",
            {
                "fields": [
                    "status",
                    "error_class",
                    "error_code",
                    "error_message",
                    "output_reached_client",
                    "client_disconnected_at",
                ]
            },
        ),
        ("Billing", {"fields": ["billing_result", "cost", "uncharged_usd", "price_snapshot", "hold"]}),
        (
            "Tokens",
            {
                "fields": [
                    "input_tokens",
                    "output_tokens",
                    "cached_input_tokens",
                    "cache_write_tokens",
                    "reasoning_tokens",
                    "image_count",
                    "tokens_estimated",
                    "max_tokens_requested",
                    "max_tokens_applied",
                ]
            },
        ),
        ("Upstream", {"fields": ["route", "provider", "upstream_model", "attempts_pretty"]}),
        ("Timing", {"fields": ["started_at", "first_byte_at", "finished_at"]}),
    ]

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if term.startswith(KEY_START[:3]) and " " not in term:
            # A key prefix, or a pasted whole key: match on the non-secret prefix only.
            if len(term) >= PREFIX_LENGTH:
                return queryset.filter(key_prefix=term[:PREFIX_LENGTH]), False
            return queryset.filter(key_prefix__startswith=term), False
        hex_id = w3c_trace_id(term)
        if hex_id is not None:
            # A W3C trace id (the client's traceparent, or the whole header pasted), or a request id
            # without its prefix: stored as trace_<hex> / req_<hex>.
            return queryset.filter(Q(trace_id=f"trace_{hex_id}") | Q(request_id=f"req_{hex_id}")), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="cost (USD)", ordering="cost_usd")
    def cost(self, obj):
        return usd(obj.cost_usd)

    @admin.display(description="tokens")
    def total_tokens(self, obj):
        return obj.input_tokens + obj.cached_input_tokens + obj.cache_write_tokens + obj.output_tokens

    @admin.display(description="attempts")
    def attempts_pretty(self, obj):
        if not obj.attempts:
            return "-"
        return format_html("<pre>{}</pre>", json.dumps(obj.attempts, indent=2, ensure_ascii=False, default=str))


@admin.register(StoredImage)
class StoredImageAdmin(IdSearchMixin, ViewOnlyAdmin):
    """Metadata only. The image URL's token is not stored anywhere (only a hash of it, not shown), so
    operators cannot open a customer's image from here."""

    list_display = ["created_at", "request_id", "account", "content_type", "size_bytes", "expires_at"]
    list_filter = ["content_type"]
    list_select_related = ["account"]
    search_fields = ["request_id__exact", "account__name"]
    search_help_text = "request_id (req_…) or account name."
    exact_search_prefixes = (("req_", "request_id"),)
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    show_full_result_count = False
    fields = ["request_id", "account", "content_type", "size_bytes", "storage_name", "created_at", "expires_at"]


@admin.register(UsageExport)
class UsageExportAdmin(ViewOnlyAdmin):
    """Customers' usage exports (usage/exports.py): read-only, with a retry action for failed or
    expired ones (the service queues the job again). The file itself is for the account's members
    (the API's download), not served here."""

    list_display = ["created_at", "id", "account", "format", "status", "rows_done", "attempts", "expires_at"]
    list_filter = ["status", "format"]
    list_select_related = ["account"]
    search_fields = ["account__name"]
    search_help_text = "export id or account name."
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    show_full_result_count = False
    actions = ["retry_exports"]
    fields = [
        "id",
        "account",
        "created_by",
        "format",
        "filters",
        "status",
        "error",
        "rows_total",
        "rows_done",
        "attempts",
        "lost_runs",
        "file_name",
        "size_bytes",
        "created_at",
        "started_at",
        "heartbeat_at",
        "finished_at",
        "expires_at",
    ]

    def get_search_results(self, request, queryset, search_term):
        try:  # an export id: one primary-key lookup
            return queryset.filter(id=uuid.UUID(search_term.strip())), False
        except ValueError:
            return super().get_search_results(request, queryset, search_term)

    def has_retry_permission(self, request) -> bool:
        # Not the form's change permission (nothing here is edited), but the same right: it changes
        # the export's state and queues a job.
        return request.user.has_perm("usage.change_usageexport")

    @admin.action(description="Retry selected exports (failed or expired)", permissions=["retry"])
    def retry_exports(self, request, queryset):
        retried, refused = 0, 0
        for export in queryset:
            try:
                exports.export_retry(export=export)
            except (exports.ExportConflict, exports.TooManyExports):
                refused += 1
            else:
                retried += 1
                self.log_change(request, export, "Retried.")
        if retried:
            self.message_user(request, f"{retried} export(s) queued again.", messages.SUCCESS)
        if refused:
            self.message_user(
                request,
                f"{refused} export(s) not retried: only failed or expired ones can be, at most "
                f"{exports.MAX_ACTIVE} per account at once.",
                messages.WARNING,
            )


@admin.register(UsageArchive)
class UsageArchiveAdmin(ViewOnlyAdmin):
    """Months of usage rows archived by `manage.py usage_archive` (usage/archive.py): the file in
    the exports storage, what it holds, and how far the archiving got (written → verified →
    dropped). Read-only: reconciliation balances archived charges against these rows, and a rerun
    of the command is how one that stopped half-way is finished."""

    list_display = ["month", "status", "rows", "cost", "size_bytes", "file_name", "dropped_at"]
    list_filter = ["status"]
    ordering = ["-month"]
    fields = [
        "month",
        "partition",
        "status",
        "rows",
        "cost_usd",
        "file_name",
        "size_bytes",
        "sha256",
        "accounts",
        "invoices",
        "created_at",
        "verified_at",
        "dropped_at",
    ]

    @admin.display(description="cost (USD)", ordering="cost_usd")
    def cost(self, obj: UsageArchive) -> str:
        return usd(obj.cost_usd)
