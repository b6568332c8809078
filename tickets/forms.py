"""Admin forms for tickets. They validate operator input (lengths included); the writes go through
tickets/services.py."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model

from billing import money
from tickets.models import TEXT_MAX, Ticket, TicketMessage

REFUND_REASON_MAX = 2000

# An operator may move a ticket anywhere from the change page: resolving and closing go through
# ticket_resolve, back to open or waiting on the customer through ticket_reopen; replies move the
# status too (ticket_reply).
DONE = (Ticket.Status.RESOLVED, Ticket.Status.CLOSED)


class TicketChangeForm(forms.ModelForm):
    """Status, assignee and resolution; `TicketAdmin.save_model` hands them to the services."""

    class Meta:
        model = Ticket
        fields = ["status", "assigned_to", "resolution"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "status" in self.fields:
            self.fields["status"].help_text = (
                "Resolve, close or reopen here. A support reply sets 'waiting on the customer'; a customer "
                "reply reopens a resolved ticket (a closed one takes no customer reply)."
            )
        if "assigned_to" in self.fields:
            field = self.fields["assigned_to"]
            field.queryset = get_user_model().objects.filter(is_staff=True, is_active=True).order_by("username")
            field.help_text = "Staff only."
        if "resolution" in self.fields:
            self.fields[
                "resolution"
            ].help_text = (
                f"Shown to the customer once the ticket is resolved or closed (at most {TEXT_MAX} characters)."
            )

    def clean(self):
        data = super().clean()
        status = data.get("status")
        if "resolution" in self.changed_data and status not in DONE:
            self.add_error(
                "resolution", "A resolution is recorded when the ticket is resolved or closed: set the status too."
            )
        return data


class TicketReplyForm(forms.Form):
    KIND_CHOICES = [
        (TicketMessage.Kind.SUPPORT, "Support reply (the customer sees it; the ticket waits on them)"),
        (TicketMessage.Kind.INTERNAL, "Internal note (never shown to the customer; no status change)"),
    ]

    kind = forms.ChoiceField(choices=KIND_CHOICES, initial=TicketMessage.Kind.INTERNAL, widget=forms.RadioSelect)
    body = forms.CharField(
        max_length=TEXT_MAX,
        widget=forms.Textarea(attrs={"rows": 6, "cols": 80}),
        help_text=f"At most {TEXT_MAX} characters.",
    )

    def clean_body(self) -> str:
        body = self.cleaned_data["body"]
        if not body.strip():
            raise forms.ValidationError("A reply needs some text.")
        return body


class TicketRefundForm(forms.Form):
    """A refund on the ticket; posted by `services.ticket_refund`, which makes a repeat harmless."""

    amount = forms.DecimalField(
        max_digits=money.MONEY_DIGITS,
        decimal_places=money.MONEY_PLACES,
        help_text="USD, greater than zero.",
    )
    reason = forms.CharField(
        max_length=REFUND_REASON_MAX,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Required. The customer reads it in their ledger as “Ticket #…: <reason>”.",
    )
    again = forms.BooleanField(
        required=False,
        label="This is a further refund",
        help_text="Tick only to refund again on a ticket that already has a refund, with a reason of its own.",
    )

    def clean_amount(self):
        amount = self.cleaned_data["amount"]
        if amount <= 0:
            raise forms.ValidationError("A refund must be greater than zero.")
        return amount

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason
