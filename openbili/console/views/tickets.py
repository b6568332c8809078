"""The account's diagnostic tickets: the list, and one ticket with its bundle, the conversation
(support's internal notes never shown: tickets.api.views.with_conversation), status and refunds,
and the customer's reply."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods

from openbili.console.access import account_page
from openbili.console.forms import ReplyForm
from openbili.console.pages import page
from openbili.core.errors import OpenbiliError
from tickets import services
from tickets.api.serializers import TicketSerializer, TicketSummarySerializer
from tickets.api.views import with_conversation
from tickets.models import Ticket, TicketMessage


@account_page
def ticket_list(request: HttpRequest, member) -> HttpResponse:
    tickets = Ticket.objects.filter(account=member.account).order_by("-created_at", "-id")[:200]
    return page(
        request,
        member,
        "console/tickets.html",
        {"tickets": TicketSummarySerializer(tickets, many=True).data, "section": "tickets"},
    )


@account_page
@require_http_methods(["GET", "POST"])
def ticket_detail(request: HttpRequest, member, ticket_id: int) -> HttpResponse:
    ticket = with_conversation(Ticket.objects.filter(account=member.account, pk=ticket_id)).first()
    if ticket is None:
        raise Http404("No such ticket.")
    form = ReplyForm()
    status = 200
    if request.method == "POST":
        form = ReplyForm(request.POST)
        status = 400
        if form.is_valid():
            try:
                services.ticket_reply(
                    ticket=ticket, author=request.user, body=form.cleaned_data["body"], kind=TicketMessage.Kind.CUSTOMER
                )
            except OpenbiliError as exc:
                form.add_error(None, exc.message)
                status = 409
            else:
                messages.success(request, _("Reply sent."))
                return redirect("console-ticket", account_id=member.account_id, ticket_id=ticket.pk)
    return page(
        request,
        member,
        "console/ticket.html",
        {"ticket": TicketSerializer(ticket).data, "form": form, "section": "tickets"},
        status=status,
    )
