"""Diagnostic tickets (CONTRACT §5): one per failing or disputed request, opened from its usage row.

A ticket carries the request's no-secret bundle (tickets/bundle.py), frozen when the ticket was
opened: later changes to the row or the catalog do not rewrite it. The filter columns (model,
error_class, billing_result, occurred_at) are copied out of it so the lists are index scans.
The conversation is TicketMessage rows; support's internal notes are messages the customer never
sees. A refund is a ledger entry (kind refund) that points at its ticket (billing.LedgerEntry.ticket).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

SUBJECT_MAX = 200
TEXT_MAX = 10_000


class Ticket(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open (waiting on support)"
        WAITING_ON_CUSTOMER = "waiting_on_customer", "Waiting on the customer"
        RESOLVED = "resolved", "Resolved"
        CLOSED = "closed", "Closed"

    account = models.ForeignKey("billing.Account", on_delete=models.PROTECT, related_name="tickets", db_index=False)
    # The usage row it came from, by request id: not a foreign key, so that archiving old usage
    # partitions (operations) never touches tickets; the bundle holds what support needs.
    request_id = models.CharField(max_length=64, unique=True)
    source = models.CharField(max_length=16, default="usage")
    subject = models.CharField(max_length=SUBJECT_MAX)
    description = models.TextField(max_length=TEXT_MAX, blank=True)
    tried = models.TextField(max_length=TEXT_MAX, blank=True, help_text="What the customer already tried.")
    bundle = models.JSONField(help_text="The request's no-secret diagnostic bundle, as of the ticket's creation.")
    model = models.CharField(max_length=128, blank=True)
    error_class = models.CharField(max_length=32, blank=True)
    billing_result = models.CharField(max_length=32, blank=True)
    occurred_at = models.DateTimeField(help_text="When the request started.")
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.OPEN)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    assigned_to = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="assigned_tickets",
        limit_choices_to={"is_staff": True},
    )
    resolution = models.TextField(max_length=TEXT_MAX, blank=True, help_text="Shown to the customer when resolved.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["account", "-created_at"], name="ticket_account_time"),
            models.Index(fields=["status", "created_at"], name="ticket_queue"),  # the admin's queues, oldest first
        ]
        permissions = [("refund_over_cost", "Can refund more than the request cost")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.subject}"


class TicketMessage(models.Model):
    """One message of a ticket's conversation."""

    class Kind(models.TextChoices):
        CUSTOMER = "customer", "Customer reply"
        SUPPORT = "support", "Support reply"
        INTERNAL = "internal", "Internal note (support only)"

    ticket = models.ForeignKey(Ticket, on_delete=models.CASCADE, related_name="messages")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    body = models.TextField(max_length=TEXT_MAX)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("created_at", "id")

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on #{self.ticket_id}"
