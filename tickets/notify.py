"""Optional ticket e-mails through Django's e-mail backend (console by default: the process's
output). Support hears of new tickets and customer replies at OPENBILI_SUPPORT_EMAIL (unset: no
mail); the customer who opened a ticket hears of support's replies (OPENBILI_TICKET_CUSTOMER_EMAILS).

A mail names the ticket and its request and says where to read it; it never carries the
conversation, the bundle's prices or anything of the request beyond its ids, model and error
code — and internal notes never cause one. Sent after the commit; a failing mail server is logged,
never an error of the reply that caused it.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail

from tickets.models import Ticket, TicketMessage

log = logging.getLogger("openbili.tickets")


def _summary(ticket: Ticket) -> str:
    return (
        f"Ticket #{ticket.pk}: {ticket.subject}\n"
        f"Request: {ticket.request_id}\n"
        f"Model: {ticket.model or '-'}    Error: {ticket.bundle.get('error_code') or 'none'}\n"
        f"Status: {ticket.get_status_display()}\n"
    )


def _send(subject: str, body: str, to: list[str]) -> None:
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, to)
    except Exception:
        log.exception("ticket e-mail %r not sent", subject)


def ticket_opened(ticket_id: int) -> None:
    if not settings.OPENBILI_SUPPORT_EMAIL:
        return
    ticket = Ticket.objects.get(pk=ticket_id)
    _send(
        f"[Openbili] New ticket #{ticket.pk}",
        _summary(ticket) + "\nOpen it in the admin.",
        [settings.OPENBILI_SUPPORT_EMAIL],
    )


def customer_replied(message_id: int) -> None:
    if not settings.OPENBILI_SUPPORT_EMAIL:
        return
    ticket = TicketMessage.objects.select_related("ticket").get(pk=message_id).ticket
    _send(
        f"[Openbili] Reply on ticket #{ticket.pk}",
        _summary(ticket) + "\nThe customer replied.",
        [settings.OPENBILI_SUPPORT_EMAIL],
    )


def support_replied(message_id: int) -> None:
    if not settings.OPENBILI_TICKET_CUSTOMER_EMAILS:
        return
    message = TicketMessage.objects.select_related("ticket__created_by").get(pk=message_id)
    ticket = message.ticket
    to = ticket.created_by.email if ticket.created_by and ticket.created_by.is_active else ""
    if not to:
        return
    _send(
        f"[Openbili] Support replied on ticket #{ticket.pk}",
        _summary(ticket) + "\nSupport replied: read it in the console or GET /api/v1/tickets/" + f"{ticket.pk}.",
        [to],
    )
