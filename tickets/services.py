"""Ticket writes: open from a usage row, reply, assign, resolve, refund. Each is one transaction
that locks the ticket row, so two support agents (or a double click) act one after the other."""

from __future__ import annotations

import logging
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from billing import money
from billing import services as billing_services
from billing.models import Account, LedgerEntry
from openbili.core.errors import InvalidRequest, StateConflict
from tickets import notify
from tickets.bundle import bundle_of
from tickets.models import Ticket, TicketMessage
from usage.models import UsageRecord

log = logging.getLogger("openbili.tickets")


class RefundRefused(InvalidRequest):
    code = "refund_refused"


def ticket_open(
    *, account: Account, row: UsageRecord, user, subject: str, description: str = "", tried: str = ""
) -> tuple[Ticket, bool]:
    """The ticket of a usage row of `account`: a new one with the row's bundle, or the one it
    already has (created False) — whoever opened it, whatever text comes this time."""
    assert row.account_id == account.pk
    existing = Ticket.objects.filter(request_id=row.request_id).first()
    if existing is not None:
        return existing, False
    if row.billing_result == UsageRecord.BillingResult.PENDING:
        raise StateConflict("The request is still in progress: open a ticket once it has finished.")
    bundle = bundle_of(row)
    try:
        with transaction.atomic():
            ticket = Ticket.objects.create(
                account=account,
                request_id=row.request_id,
                subject=subject,
                description=description,
                tried=tried,
                bundle=bundle,
                model=row.model_requested,
                error_class=row.error_class,
                billing_result=row.billing_result,
                occurred_at=row.started_at,
                created_by=user,
            )
    except IntegrityError:  # opened meanwhile by another request: that one is the ticket
        return Ticket.objects.get(request_id=row.request_id), False
    transaction.on_commit(lambda: notify.ticket_opened(ticket.pk))
    return ticket, True


def _locked(ticket: Ticket) -> Ticket:
    return Ticket.objects.select_for_update().get(pk=ticket.pk)


@transaction.atomic
def ticket_reply(*, ticket: Ticket, author, body: str, kind: str) -> TicketMessage:
    """A message on the ticket. A customer's reply reopens a resolved ticket (a closed one takes
    none); support's reply waits on the customer; an internal note changes nothing they see."""
    if not body.strip():
        raise InvalidRequest("A reply needs some text.", param="body")
    ticket = _locked(ticket)
    if ticket.status == Ticket.Status.CLOSED and kind == TicketMessage.Kind.CUSTOMER:
        raise StateConflict("This ticket is closed.")
    message = TicketMessage.objects.create(ticket=ticket, kind=kind, author=author, body=body)
    status = {
        TicketMessage.Kind.CUSTOMER: Ticket.Status.OPEN,
        TicketMessage.Kind.SUPPORT: Ticket.Status.WAITING_ON_CUSTOMER,
    }.get(TicketMessage.Kind(kind))
    if status is not None and ticket.status != Ticket.Status.CLOSED:
        ticket.status = status
        ticket.resolved_at = None
    ticket.save(update_fields=["status", "resolved_at", "updated_at"])
    if kind == TicketMessage.Kind.SUPPORT:
        transaction.on_commit(lambda: notify.support_replied(message.pk))
    elif kind == TicketMessage.Kind.CUSTOMER:
        transaction.on_commit(lambda: notify.customer_replied(message.pk))
    return message


@transaction.atomic
def ticket_assign(*, ticket: Ticket, assignee) -> Ticket:
    ticket = _locked(ticket)
    ticket.assigned_to = assignee
    ticket.save(update_fields=["assigned_to", "updated_at"])
    return ticket


@transaction.atomic
def ticket_resolve(*, ticket: Ticket, resolution: str, close: bool = False) -> Ticket:
    """Resolved (the customer may still reply, which reopens it) or closed for good."""
    ticket = _locked(ticket)
    ticket.status = Ticket.Status.CLOSED if close else Ticket.Status.RESOLVED
    ticket.resolution = resolution
    ticket.resolved_at = timezone.now()
    ticket.save(update_fields=["status", "resolution", "resolved_at", "updated_at"])
    return ticket


@transaction.atomic
def ticket_reopen(*, ticket: Ticket, status: str = Ticket.Status.OPEN) -> Ticket:
    """Support moves a ticket back to open (or to waiting on the customer) by hand: a resolution
    given too soon, a closed ticket with news. The resolution text stays, for the record."""
    if status not in (Ticket.Status.OPEN, Ticket.Status.WAITING_ON_CUSTOMER):
        raise InvalidRequest("A ticket is reopened as open or waiting on the customer.", param="status")
    ticket = _locked(ticket)
    ticket.status = status
    ticket.resolved_at = None
    ticket.save(update_fields=["status", "resolved_at", "updated_at"])
    return ticket


def refunded(ticket: Ticket) -> Decimal:
    total = LedgerEntry.objects.filter(ticket=ticket, kind=LedgerEntry.Kind.REFUND).aggregate(s=Sum("amount"))["s"]
    return total or Decimal(0)


def request_cost(ticket: Ticket) -> Decimal:
    """What the ticket's request was charged: its usage row now (a refund gives back money that was
    taken, whatever the bundle said then), or the bundle's if the row is gone (archived)."""
    cost = UsageRecord.objects.filter(request_id=ticket.request_id).values_list("cost_usd", flat=True).first()
    return cost if cost is not None else money.usd(ticket.bundle.get("cost_usd", 0))


@transaction.atomic
def ticket_refund(*, ticket: Ticket, actor, amount, reason: str, again: bool = False) -> LedgerEntry:
    """Credit the account back on this ticket: one ledger entry (kind refund) linked to it.

    Idempotent: a refund repeated (a double click, a retried form) returns the first entry. A second
    refund on the same ticket must say so (`again`) with its own reason. The total refunded never
    exceeds what the request cost, unless the actor holds tickets.refund_over_cost.
    """
    amount = money.usd(amount)
    if amount <= 0:
        raise RefundRefused("A refund must be positive.", param="amount")
    reason = reason.strip()
    if not reason:
        raise RefundRefused("A refund needs a reason (the customer sees it in their ledger).", param="reason")
    ticket = _locked(ticket)
    stated = f"Ticket #{ticket.pk}: {reason}"  # the ledger entry's reason, as the customer reads it
    earlier = list(LedgerEntry.objects.filter(ticket=ticket, kind=LedgerEntry.Kind.REFUND).order_by("id"))
    if earlier and not again:
        first = earlier[0]
        if first.amount == amount and first.reason == stated:
            return first  # the same refund again: what happened the first time
        raise RefundRefused(
            f"This ticket was already refunded {first.amount} USD on {first.created_at:%Y-%m-%d %H:%M} UTC "
            f"({first.reason}); a further refund must be marked as one, with its own reason.",
            param="again",
        )
    if any(entry.reason == stated for entry in earlier):
        raise RefundRefused("A further refund needs a reason of its own.", param="reason")
    total = sum((entry.amount for entry in earlier), Decimal(0)) + amount
    cost = request_cost(ticket)
    if total > cost and not actor.has_perm("tickets.refund_over_cost"):
        raise RefundRefused(
            f"Refunds on this ticket would total {total} USD, more than the request cost ({cost} USD); "
            "that needs the 'refund over cost' permission.",
            param="amount",
        )
    entry = billing_services.ledger_post(
        account_id=ticket.account_id,
        kind=LedgerEntry.Kind.REFUND,
        amount=amount,
        idempotency_key=f"ticket-refund:{ticket.pk}:{len(earlier) + 1}",
        reason=stated,
        actor=actor,
        request_id=ticket.request_id,
        ticket_id=ticket.pk,
    )
    log.info("ticket #%s refunded %s USD by %s", ticket.pk, amount, actor)
    return entry
