"""The operators' admin for diagnostic tickets (CONTRACT §5, §7): support's queues, one ticket's
bundle, conversation, attempt chain and refunds.

Thin like billing/admin.py: every write (assign, resolve, reply, refund) calls tickets/services.py.
What the customer wrote is read-only and always escaped. Routes appear by name only — never their
base URL or secret — and the key by its prefix only.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import DecimalField, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from billing import money
from billing.admin import IdSearchMixin, admin_url, usd
from billing.models import LedgerEntry
from openbili.core.errors import OpenbiliError
from tickets import services
from tickets.forms import DONE, TicketChangeForm, TicketRefundForm, TicketReplyForm
from tickets.models import Ticket, TicketMessage
from usage.models import UsageRecord
from usage.selectors import page_route_ids, route_names

REFUND_PERMISSION = "billing.add_ledgerentry"  # a refund is a ledger entry
OVER_COST_PERMISSION = "tickets.refund_over_cost"
INTERNAL_LABEL = "internal — never shown to the customer"

# --- reads ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One upstream attempt as operators read it: the route by name, never its URL or secret."""

    attempt: object
    route: str
    upstream_model: str
    status: object
    ms: object
    error: str


def usage_row_of(ticket: Ticket) -> UsageRecord | None:
    """The ticket's usage row now, or None once it is gone (archived)."""
    return UsageRecord.objects.filter(request_id=ticket.request_id).first()


def attempt_chain(row: UsageRecord) -> list[Attempt]:
    """The row's upstream attempts in order, their routes named in one query."""
    names = route_names(page_route_ids([row]))
    chain = []
    for item in row.attempts if isinstance(row.attempts, list) else []:
        if not isinstance(item, dict):
            continue
        route_id = item.get("route_id")
        route = "-" if route_id is None else names.get(route_id, f"route #{route_id} (no longer in the catalog)")
        chain.append(
            Attempt(
                attempt=item.get("attempt"),
                route=route,
                upstream_model=str(item.get("upstream_model") or ""),
                status=item.get("status"),
                ms=item.get("ms"),
                error=str(item.get("error") or ""),
            )
        )
    return chain


def refunds_of(ticket: Ticket) -> QuerySet[LedgerEntry]:
    return (
        LedgerEntry.objects.filter(ticket=ticket, kind=LedgerEntry.Kind.REFUND)
        .select_related("created_by")
        .order_by("id")
    )


def age(since, now=None) -> str:
    """'12 min', '3 h', '2 d': how long a ticket has waited."""
    elapsed = (now or timezone.now()) - since
    if elapsed < timedelta(hours=1):
        return f"{max(int(elapsed.total_seconds() // 60), 0)} min"
    if elapsed < timedelta(days=2):
        return f"{int(elapsed.total_seconds() // 3600)} h"
    return f"{elapsed.days} d"


def _or_dash(value) -> object:
    return "-" if value in (None, "") else value


# --- list filters --------------------------------------------------------------------------------


class AssigneeFilter(admin.SimpleListFilter):
    title = "assigned to"
    parameter_name = "assignee"

    def lookups(self, request, model_admin):
        staff = get_user_model().objects.filter(is_staff=True, is_active=True).order_by("username")
        return [("me", "me"), ("none", "unassigned"), *((str(user.pk), user.get_username()) for user in staff)]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "me":
            return queryset.filter(assigned_to=request.user)
        if value == "none":
            return queryset.filter(assigned_to__isnull=True)
        if value and value.isdigit():
            return queryset.filter(assigned_to_id=int(value))
        return queryset


class ChoiceFilter(admin.SimpleListFilter):
    """A filter over a ticket column copied from the usage row, offering the row's choices (the
    ticket's column has none of its own) instead of a DISTINCT over the table."""

    field: str
    options: list[tuple[str, str]]
    none_label = "none"

    def lookups(self, request, model_admin):
        return [*self.options, ("-", self.none_label)]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(**{self.field: "" if value == "-" else value})


class ErrorClassFilter(ChoiceFilter):
    title = "error class"
    parameter_name = "error_class"
    field = "error_class"
    options = [(value, value) for value in UsageRecord.ErrorClass.values]
    none_label = "no error"


class BillingResultFilter(ChoiceFilter):
    title = "billing result"
    parameter_name = "billing_result"
    field = "billing_result"
    options = [(value, str(label)) for value, label in UsageRecord.BillingResult.choices]
    none_label = "unknown"


# --- the ticket admin ----------------------------------------------------------------------------


@admin.register(Ticket)
class TicketAdmin(IdSearchMixin, admin.ModelAdmin):
    form = TicketChangeForm
    list_display = [
        "number",
        "subject",
        "account",
        "status",
        "waiting",
        "assigned_to",
        "model",
        "error_class",
        "refunded_usd",
    ]
    list_display_links = ["number", "subject"]
    list_filter = ["status", AssigneeFilter, ErrorClassFilter, BillingResultFilter]
    list_select_related = ["account", "assigned_to"]
    search_fields = ["request_id__exact", "subject", "account__name"]
    search_help_text = "request_id (req_…, exact), #ticket number, subject or account name."
    exact_search_prefixes = (("req_", "request_id"),)
    # Oldest first: within a status queue this is the ticket_queue index (status, created_at).
    ordering = ["created_at", "id"]
    show_full_result_count = False
    actions = ["assign_to_me"]
    readonly_fields = [
        "number",
        "account",
        "request_link",
        "created_by",
        "created_at",
        "updated_at",
        "resolved_at",
        "subject",
        "description",
        "tried",
        "bundle_pretty",
        "live_vs_frozen",
        "attempts_table",
        "refunds_summary",
        "conversation",
    ]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "number",
                    "account",
                    "request_link",
                    "status",
                    "assigned_to",
                    "created_by",
                    "created_at",
                    "updated_at",
                    "resolved_at",
                ]
            },
        ),
        ("What the customer wrote (read-only)", {"fields": ["subject", "description", "tried"]}),
        ("Resolution", {"fields": ["resolution"]}),
        (
            "Conversation",
            {
                "description": "Add a support reply or an internal note with the form below the page.",
                "fields": ["conversation"],
            },
        ),
        ("Refunds", {"fields": ["refunds_summary"]}),
        (
            "The request",
            {
                "description": "The usage row as it is now, beside the bundle frozen when the ticket was opened.",
                "fields": ["live_vs_frozen", "attempts_table", "bundle_pretty"],
            },
        ),
    ]

    def has_add_permission(self, request, obj=None):
        return False  # tickets come from usage rows (tickets.services.ticket_open)

    def has_delete_permission(self, request, obj=None):
        return False  # refunds (ledger entries) point at tickets; a ticket is closed, not deleted

    def get_queryset(self, request):
        refunded = (
            LedgerEntry.objects.filter(ticket=OuterRef("pk"), kind=LedgerEntry.Kind.REFUND)
            .order_by()
            .values("ticket")
            .annotate(total=Sum("amount"))
            .values("total")
        )
        money_field = DecimalField(max_digits=money.MONEY_DIGITS, decimal_places=money.MONEY_PLACES)
        return (
            super()
            .get_queryset(request)
            .annotate(refunded_total=Coalesce(Subquery(refunded, output_field=money_field), Value(Decimal(0))))
        )

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "assigned_to" and field is not None:
            # Pick an existing staff member; users are not added, edited or deleted from a ticket.
            for flag in ("can_add_related", "can_change_related", "can_delete_related"):
                setattr(field.widget, flag, False)
        return field

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if term.startswith("#") and term[1:].isdigit():
            return queryset.filter(pk=int(term[1:])), False
        return super().get_search_results(request, queryset, search_term)

    # -- columns ----------------------------------------------------------------------------------

    @admin.display(description="#", ordering="id")
    def number(self, obj):
        return f"#{obj.pk}"

    @admin.display(description="age", ordering="created_at")
    def waiting(self, obj):
        return age(obj.created_at)

    @admin.display(description="refunded (USD)")
    def refunded_usd(self, obj):
        total = getattr(obj, "refunded_total", None)
        if total is None:
            total = services.refunded(obj)
        return usd(total) if total else "-"

    # -- the change page's read-only parts --------------------------------------------------------

    @admin.display(description="request")
    def request_link(self, obj):
        row_id = UsageRecord.objects.filter(request_id=obj.request_id).values_list("pk", flat=True).first()
        if row_id is None:
            return format_html("{} (the usage row is gone: archived)", obj.request_id)
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:usage_usagerecord_change", args=[row_id]), obj.request_id
        )

    @admin.display(description="bundle (frozen)")
    def bundle_pretty(self, obj):
        text = json.dumps(obj.bundle, indent=2, ensure_ascii=False, sort_keys=True, default=str)
        return format_html("<pre>{}</pre>", text)

    @admin.display(description="now vs when opened")
    def live_vs_frozen(self, obj):
        row = usage_row_of(obj)
        bundle = obj.bundle if isinstance(obj.bundle, dict) else {}
        frozen = [bundle.get("status"), bundle.get("cost_usd"), bundle.get("billing_result")]
        if row is None:
            live = ["-", "-", "-"]
            note = format_html(
                "<p><strong>{}</strong> {}</p>", "The usage row is gone (archived):", "only the bundle remains."
            )
        else:
            live = [row.status, usd(row.cost_usd), row.billing_result]
            note = ""
        if frozen[1] is not None:
            with contextlib.suppress(money.MoneyError):  # else shown as stored
                frozen[1] = usd(money.usd(frozen[1]))
        cells = format_html_join(
            "",
            "<tr><th>{}</th><td>{}</td><td>{}</td></tr>",
            (
                (label, _or_dash(now), _or_dash(then))
                for label, now, then in zip(("HTTP status", "cost (USD)", "billing result"), live, frozen, strict=True)
            ),
        )
        return format_html(
            "{}<table><thead><tr><th></th><th>usage row now</th><th>bundle (when opened)</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            note,
            cells,
        )

    @admin.display(description="attempt chain")
    def attempts_table(self, obj):
        row = usage_row_of(obj)
        if row is None:
            return "The usage row is gone (archived): its attempt chain is no longer available."
        chain = attempt_chain(row)
        if not chain:
            return "No upstream attempt: the request was answered or refused before any upstream call."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    _or_dash(a.attempt),
                    a.route,
                    _or_dash(a.upstream_model),
                    _or_dash(a.status),
                    _or_dash(a.ms),
                    _or_dash(a.error),
                )
                for a in chain
            ),
        )
        return format_html(
            "<table><thead><tr><th>#</th><th>route</th><th>upstream model</th><th>status</th>"
            "<th>latency (ms)</th><th>error</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="refunds")
    def refunds_summary(self, obj):
        entries = list(refunds_of(obj))
        cost = usd(services.request_cost(obj))
        if not entries:
            listing = "No refund yet."
        else:
            listing = format_html(
                "<ul>{}</ul>",
                format_html_join(
                    "",
                    '<li><a href="{}">entry #{}</a>: {} USD, {} — by {} on {}</li>',
                    (
                        (
                            admin_url(e),
                            e.pk,
                            usd(e.amount),
                            e.reason,
                            e.created_by or "-",
                            f"{e.created_at:%Y-%m-%d %H:%M} UTC",
                        )
                        for e in entries
                    ),
                ),
            )
        return format_html(
            "<p>The request cost {} USD; refunded so far {} USD. Refund with the <b>Refund</b> button above.</p>{}",
            cost,
            usd(sum((e.amount for e in entries), Decimal(0))),
            listing,
        )

    @admin.display(description="messages")
    def conversation(self, obj):
        items = list(obj.messages.select_related("author").order_by("created_at", "id"))
        if not items:
            return "No message yet."
        return format_html_join("", "{}", ((message_html(m),) for m in items))

    # -- saving: through the services -------------------------------------------------------------

    def save_model(self, request, obj, form, change):
        if not change:  # has_add_permission is False; never reached
            raise PermissionDenied
        ticket = Ticket.objects.get(pk=obj.pk)
        data, changed = form.cleaned_data, set(form.changed_data)
        if "assigned_to" in changed:
            ticket = services.ticket_assign(ticket=ticket, assignee=data["assigned_to"])
        status = data.get("status", ticket.status)
        if status in DONE and changed & {"status", "resolution"}:
            services.ticket_resolve(
                ticket=ticket,
                resolution=data.get("resolution", ticket.resolution),
                close=status == Ticket.Status.CLOSED,
            )
        elif "status" in changed:
            services.ticket_reopen(ticket=ticket, status=status)
        obj.refresh_from_db()

    # -- the actions and the custom views ---------------------------------------------------------

    @admin.action(description="Assign the selected tickets to me", permissions=["change"])
    def assign_to_me(self, request, queryset):
        assigned = 0
        for ticket in queryset:
            if ticket.assigned_to_id != request.user.pk:
                services.ticket_assign(ticket=ticket, assignee=request.user)
                self.log_change(request, ticket, "Assigned to me.")
                assigned += 1
        self.message_user(request, f"Assigned {assigned} ticket(s) to you.", messages.SUCCESS)

    def get_urls(self):
        urls = [
            path(
                "<path:object_id>/reply/",
                self.admin_site.admin_view(self.reply_view),
                name="tickets_ticket_reply",
            ),
            path(
                "<path:object_id>/refund/",
                self.admin_site.admin_view(self.refund_view),
                name="tickets_ticket_refund",
            ),
        ]
        return urls + super().get_urls()

    def may_refund(self, request, ticket: Ticket) -> bool:
        # As the account's Credit / adjust view: the right to change the object, plus (a refund
        # being a ledger entry) the right to add one. Superusers hold every permission.
        return self.has_change_permission(request, ticket) and request.user.has_perm(REFUND_PERMISSION)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        ticket = self.get_object(request, unquote(object_id))
        extra = {
            "reply_form": TicketReplyForm(),
            "may_refund": ticket is not None and self.may_refund(request, ticket),
            "may_reply": ticket is not None and self.has_change_permission(request, ticket),
        }
        return super().change_view(request, object_id, form_url, extra_context=extra | (extra_context or {}))

    def _ticket(self, request, object_id) -> Ticket:
        ticket = self.get_object(request, unquote(object_id))
        if ticket is None:
            raise Http404("No such ticket.")
        return ticket

    def _page(self, request, ticket: Ticket, template: str, title: str, **context):
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "ticket": ticket,
            "change_url": reverse("admin:tickets_ticket_change", args=[ticket.pk]),
            **context,
        }
        return TemplateResponse(request, f"admin/tickets/ticket/{template}", context)

    @staticmethod
    def _form_error(form, exc: OpenbiliError) -> None:
        form.add_error(exc.param if exc.param in form.fields else None, exc.message)

    def reply_view(self, request, object_id):
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        ticket = self._ticket(request, object_id)
        if not self.has_change_permission(request, ticket):
            raise PermissionDenied
        form = TicketReplyForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                message = services.ticket_reply(
                    ticket=ticket, author=request.user, body=data["body"], kind=data["kind"]
                )
            except OpenbiliError as exc:
                self._form_error(form, exc)
            else:
                what = message.get_kind_display()
                self.log_change(request, ticket, f"Added a message ({what}, #{message.pk}).")
                ticket.refresh_from_db(fields=["status"])
                self.message_user(
                    request, f"Added: {what}. The ticket is now “{ticket.get_status_display()}”.", messages.SUCCESS
                )
                return HttpResponseRedirect(reverse("admin:tickets_ticket_change", args=[ticket.pk]))
        return self._page(
            request,
            ticket,
            "reply.html",
            f"Reply on ticket #{ticket.pk}",
            form=form,
            conversation=self.conversation(ticket),
            form_url=reverse("admin:tickets_ticket_reply", args=[ticket.pk]),
        )

    def refund_view(self, request, object_id):
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        ticket = self._ticket(request, object_id)
        if not self.may_refund(request, ticket):
            raise PermissionDenied
        form = TicketRefundForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            # Only for the message: the service itself makes a repeated form harmless.
            before = set(refunds_of(ticket).values_list("pk", flat=True))
            try:
                entry = services.ticket_refund(
                    ticket=ticket,
                    actor=request.user,
                    amount=data["amount"],
                    reason=data["reason"],
                    again=data["again"],
                )
            except OpenbiliError as exc:
                self._form_error(form, exc)
            except money.MoneyError as exc:
                form.add_error("amount", str(exc))
            else:
                if entry.pk in before:
                    self.message_user(
                        request,
                        f"This refund was already posted as ledger entry #{entry.pk} ({usd(entry.amount)} USD); "
                        "nothing was posted again.",
                        messages.WARNING,
                    )
                else:
                    self.log_change(request, ticket, f"Refunded {usd(entry.amount)} USD (ledger entry #{entry.pk}).")
                    self.message_user(
                        request,
                        f"Refunded {usd(entry.amount)} USD to {ticket.account}: ledger entry #{entry.pk}.",
                        messages.SUCCESS,
                    )
                return HttpResponseRedirect(reverse("admin:tickets_ticket_change", args=[ticket.pk]))
        entries = list(refunds_of(ticket))
        cost = services.request_cost(ticket)
        total = sum((e.amount for e in entries), Decimal(0))
        return self._page(
            request,
            ticket,
            "refund.html",
            f"Refund on ticket #{ticket.pk}",
            form=form,
            form_url=reverse("admin:tickets_ticket_refund", args=[ticket.pk]),
            cost=usd(cost),
            refunded=usd(total),
            left=usd(max(cost - total, Decimal(0))),
            refunds=[
                {
                    "entry": e,
                    "url": admin_url(e),
                    "amount": usd(e.amount),
                    "by": e.created_by or "-",
                }
                for e in entries
            ],
            balance=usd(ticket.account.balance),
            may_over_cost=request.user.has_perm(OVER_COST_PERMISSION),
            media=self.media + form.media,
        )


def message_html(message: TicketMessage):
    """One message of the conversation, its kind unmistakable; internal notes stand out."""
    author = message.author or "-"
    when = f"{message.created_at:%Y-%m-%d %H:%M} UTC"
    if message.kind == TicketMessage.Kind.INTERNAL:
        return format_html(
            '<div class="ticket-message ticket-internal" style="border-left:4px solid #c9a400;'
            'background:#fff8d6;padding:6px 10px;margin:0 0 10px">'
            '<strong style="color:#7a5d00">INTERNAL NOTE · {}</strong> — {} · {}'
            '<div style="white-space:pre-wrap;margin-top:4px">{}</div></div>',
            INTERNAL_LABEL,
            author,
            when,
            message.body,
        )
    label = "Customer" if message.kind == TicketMessage.Kind.CUSTOMER else "Support reply (the customer sees it)"
    border = "#417690" if message.kind == TicketMessage.Kind.SUPPORT else "#999"
    return format_html(
        '<div class="ticket-message ticket-{}" style="border-left:4px solid {};padding:6px 10px;margin:0 0 10px">'
        "<strong>{}</strong> — {} · {}"
        '<div style="white-space:pre-wrap;margin-top:4px">{}</div></div>',
        message.kind,
        border,
        label,
        author,
        when,
        message.body,
    )
