"""The usage page: the account's rows newest first with the API's filters (usage.api.filters) and
cursor pages (usage.api.rows.UsageCursor), charts of requests, errors and cost by model over the
filtered time range, a row's detail (price snapshot, attempt chain), and the diagnostic ticket of a
row — opened once, a second click shows the same ticket (tickets.services.ticket_open)."""

from __future__ import annotations

from datetime import timedelta

from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

from billing.api.keys import keys_of
from billing.models import CatalogModel
from openbili.console import charts
from openbili.console.access import account_page
from openbili.console.forms import ExportForm, TicketForm
from openbili.console.pages import page
from openbili.core.errors import OpenbiliError
from tickets import selectors as ticket_selectors
from tickets import services as ticket_services
from tickets.api.views import TicketCreateThrottle
from tickets.bundle import bundle_of
from tickets.models import Ticket
from usage import selectors
from usage.api.filters import USAGE_FILTERS, UsageFilter
from usage.api.rows import UsageCursor
from usage.api.serializers import UsageRowSerializer
from usage.models import UsageRecord

CHART_SPAN = timedelta(days=7)  # without a time filter, the charts show the last week
MAX_CHART_SPAN = timedelta(days=92)
HOURLY_UP_TO = timedelta(days=2)
# What the page drops from a row: an upstream's error message may quote the request's text.
HIDDEN = ("error_message",)


def _shown(rows: list[UsageRecord]) -> list[dict]:
    names = selectors.route_names(selectors.page_route_ids(rows))
    tickets = ticket_selectors.tickets_by_request([row.request_id for row in rows])
    data = UsageRowSerializer(rows, many=True, context={"route_names": names, "tickets": tickets}).data
    shown = []
    for row, item in zip(rows, data, strict=True):
        item = {name: value for name, value in item.items() if name not in HIDDEN}
        item["failed"] = bool(row.error_class)
        item["disputable"] = bool(row.error_class) or row.billing_result != UsageRecord.BillingResult.BILLED
        item["finished"] = row.billing_result != UsageRecord.BillingResult.PENDING
        shown.append(item)
    return shown


def _charts(member, filters: dict) -> list:
    now = timezone.now()
    end = filters.get("started_before") or now
    start = filters.get("started_after") or end - CHART_SPAN
    start = max(start, end - MAX_CHART_SPAN)
    if end <= start:
        return []
    bucket = "hour" if end - start <= HOURLY_UP_TO else "day"
    groups = selectors.usage_aggregate(
        account_id=member.account_id,
        start=start,
        end=end,
        bucket=bucket,
        group_columns=("model_requested",),
        models=[filters["model"]] if filters.get("model") else None,
        api_key_ids=[filters["api_key"]] if filters.get("api_key") else None,
    )
    buckets = charts.buckets_between(start, end, bucket)
    return [
        charts.stacked_bars(_("Requests"), buckets, charts.series_by_model(groups, "requests")),
        charts.stacked_bars(_("Errors"), buckets, charts.series_by_model(groups, "errors")),
        charts.stacked_bars(_("Cost (USD)"), buckets, charts.series_by_model(groups, "cost_usd"), money=True),
    ]


@account_page
def usage_list(request: HttpRequest, member) -> HttpResponse:
    params = QueryDict(mutable=True)
    for name, values in request.GET.lists():
        if name in USAGE_FILTERS or name in {"cursor", "page_size"}:
            params.setlist(name, [value for value in values if value != ""])  # empty inputs: no filter
    rows_qs = selectors.usage_rows(account_id=member.account_id)
    filterset = UsageFilter(params, queryset=rows_qs)
    rows: list[dict] = []
    next_link = previous_link = None
    status = 200
    graphs: list = []
    if filterset.is_valid():
        paginator = UsageCursor()
        try:
            page_rows = paginator.paginate_queryset(filterset.qs, Request(request))
        except ValidationError:  # a cursor or page_size that is not ours
            filterset.form.add_error(None, _("That page link is not valid any more: start again."))
            status = 400
        else:
            rows = _shown(list(page_rows or []))
            next_link, previous_link = paginator.get_next_link(), paginator.get_previous_link()
            graphs = _charts(member, filterset.form.cleaned_data)
    else:
        status = 400
    filter_text = {name: value for name, value in params.items() if name in USAGE_FILTERS}
    return page(
        request,
        member,
        "console/usage.html",
        {
            "filterset": filterset,
            "rows": rows,
            "next_link": next_link,
            "previous_link": previous_link,
            "charts": graphs,
            "filters": filter_text,
            "models": CatalogModel.objects.order_by("name").values_list("name", flat=True),
            "keys": keys_of(member.account).order_by("name").values("id", "name", "prefix"),
            "error_classes": UsageRecord.ErrorClass.choices,
            "billing_results": UsageRecord.BillingResult.choices,
            "export_form": ExportForm(),
            "section": "usage",
        },
        status=status,
    )


def _row(member, request_id: str) -> UsageRecord:
    row = (
        selectors.usage_rows(account_id=member.account_id)
        .select_related("price_snapshot")
        .filter(request_id=request_id)
        .first()
    )
    if row is None:
        raise Http404("No such request.")
    return row


@account_page
def usage_row(request: HttpRequest, member, request_id: str) -> HttpResponse:
    row = _row(member, request_id)
    return page(request, member, "console/usage_row.html", {"row": _shown([row])[0], "section": "usage"})


class _TicketScope:
    def __init__(self, account_id: int) -> None:
        self.ticket_account_id = account_id  # TicketCreateThrottle's bucket: the account, as in the API


@account_page
@require_http_methods(["GET", "POST"])
def ticket_new(request: HttpRequest, member, request_id: str) -> HttpResponse:
    """The pre-filled, no-secret bundle and a form for the customer's words; a request that has a
    ticket already goes straight to it."""
    row = _row(member, request_id)
    existing = Ticket.objects.filter(request_id=row.request_id, account=member.account).first()
    if existing is not None:
        return redirect("console-ticket", account_id=member.account_id, ticket_id=existing.pk)
    bundle = bundle_of(row)
    form = TicketForm(initial={"subject": _default_subject(row)})
    status = 200
    if request.method == "POST":
        form = TicketForm(request.POST)
        status = 400
        if form.is_valid():
            throttle = TicketCreateThrottle()
            if not throttle.allow_request(request, _TicketScope(member.account_id)):  # type: ignore[arg-type]
                form.add_error(None, _("Too many new tickets for this account: try again later."))
                status = 429
            else:
                try:
                    ticket, _created = ticket_services.ticket_open(
                        account=member.account, row=row, user=request.user, **form.cleaned_data
                    )
                except OpenbiliError as exc:
                    form.add_error(None, exc.message)
                    status = 409
                else:
                    return redirect("console-ticket", account_id=member.account_id, ticket_id=ticket.pk)
    return page(
        request,
        member,
        "console/ticket_new.html",
        {"row": _shown([row])[0], "bundle": bundle, "form": form, "section": "usage"},
        status=status,
    )


def _default_subject(row: UsageRecord) -> str:
    if row.error_class:
        return f"{row.model_requested}: {row.status} {row.error_code}"[:200]
    return f"{row.model_requested}: charge of {row.cost_usd.normalize():f} USD"[:200]
