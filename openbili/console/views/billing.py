"""Billing: balance, reserved (holds in flight), credit limit and available; ledger entries (cursor
pages, as the API's); usage exports — start one (from here or with the usage page's filters),
watch its progress (console.js polls the API's GET …/exports/{id}), download it; and invoices,
downloaded from the API's own file routes (session auth, the same membership gate)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

from billing.api.balance_serializers import BalanceSerializer, LedgerEntrySerializer
from billing.api.invoice_serializers import InvoiceSerializer
from billing.api.invoices import invoices_of
from billing.selectors import ledger_entries
from openbili.api.pagination import Cursor
from openbili.console.access import account_page
from openbili.console.forms import ExportForm
from openbili.console.pages import page
from openbili.core.errors import OpenbiliError
from usage import exports
from usage.api.exports import ExportSerializer
from usage.api.filters import USAGE_FILTERS
from usage.models import UsageExport

RECENT_EXPORTS = 20


@account_page
def billing(request: HttpRequest, member) -> HttpResponse:
    account = member.account
    paginator = Cursor()
    status = 200
    try:
        entries = paginator.paginate_queryset(ledger_entries(account_id=account.pk), Request(request)) or []
        next_link, previous_link = paginator.get_next_link(), paginator.get_previous_link()
    except ValidationError:  # a cursor or page_size that is not ours
        entries, next_link, previous_link, status = [], None, None, 400
    recent = UsageExport.objects.filter(account=account).select_related("created_by").order_by("-created_at")
    return page(
        request,
        member,
        "console/billing.html",
        {
            "balance": BalanceSerializer(account).data,
            "entries": LedgerEntrySerializer(entries, many=True).data,
            "next_link": next_link,
            "previous_link": previous_link,
            "exports": ExportSerializer(recent[:RECENT_EXPORTS], many=True).data,
            "invoices": InvoiceSerializer(invoices_of(account).order_by("-period_start", "-id")[:24], many=True).data,
            "export_form": ExportForm(),
            "section": "billing",
        },
        status=status,
    )


@account_page
@require_POST
def export_start(request: HttpRequest, member) -> HttpResponse:
    """Start an export of the rows matching the usage filters posted with it (none: every row)."""
    form = ExportForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose XLSX or CSV."))
        return redirect("console-billing", account_id=member.account_id)
    filters = {name: str(value) for name, value in request.POST.items() if name in USAGE_FILTERS and value != ""}
    try:
        exports.export_create(
            account=member.account, user=request.user, format=form.cleaned_data["format"], filters=filters
        )
    except OpenbiliError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("Export started: it appears below, with its progress."))
    return redirect("console-billing", account_id=member.account_id)
