"""Admin forms. They validate operator input; the writes themselves go through billing/services.py."""

from __future__ import annotations

import re
import uuid

from django import forms

from billing import money
from billing.models import ApiKey, LedgerEntry, PriceVersion, Route

# --- Credit / adjust -----------------------------------------------------------------------------

CREDIT_KEY_PREFIX = "admin-credit:"
_CREDIT_KEY_RE = re.compile(r"^admin-credit:[0-9a-f]{32}$")


def credit_idempotency_key() -> str:
    """A fresh key, generated when the form is rendered, so a double submit posts only once."""
    return f"{CREDIT_KEY_PREFIX}{uuid.uuid4().hex}"


class CreditAdjustForm(forms.Form):
    """Move an account's balance by one ledger entry (posted by `services.ledger_post`)."""

    KIND_CHOICES = [
        (LedgerEntry.Kind.TOPUP, "Top-up (customer paid; amount > 0)"),
        (LedgerEntry.Kind.ADJUSTMENT, "Adjustment (correction; positive or negative, not zero)"),
        (LedgerEntry.Kind.REFUND, "Refund (credit given back; amount > 0)"),
    ]

    kind = forms.ChoiceField(choices=KIND_CHOICES)
    amount = forms.DecimalField(
        max_digits=money.MONEY_DIGITS,
        decimal_places=money.MONEY_PLACES,
        help_text="USD. Top-ups and refunds are positive; an adjustment may be negative (a debit).",
    )
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=2000,
        help_text="Required. Shown to operators and in the account's statement.",
    )
    # Not the operator's to choose: it rides along in the page so that a double click, a browser
    # resubmit or a retry after a timeout posts the same key and the service returns the first entry.
    idempotency_key = forms.CharField(widget=forms.HiddenInput, max_length=200)

    def clean_idempotency_key(self) -> str:
        key = self.cleaned_data["idempotency_key"]
        # Only keys this form generated: a hand-made key could collide with the gateway's own
        # ("usage:<request_id>") and break a later settle.
        if not _CREDIT_KEY_RE.match(key):
            raise forms.ValidationError("This form is invalid or expired; reload the page and try again.")
        return key

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason

    def clean(self):
        data = super().clean()
        kind, amount = data.get("kind"), data.get("amount")
        if kind is None or amount is None:
            return data
        if kind in (LedgerEntry.Kind.TOPUP, LedgerEntry.Kind.REFUND) and amount <= 0:
            self.add_error("amount", f"A {dict(LedgerEntry.Kind.choices)[kind].lower()} must be greater than zero.")
        elif kind == LedgerEntry.Kind.ADJUSTMENT and amount == 0:
            self.add_error("amount", "An adjustment cannot be zero.")
        return data


# --- API keys ------------------------------------------------------------------------------------


class ApiKeyAddForm(forms.ModelForm):
    """Create a key; `ApiKeyAdmin.save_model` hands the cleaned data to `services.key_create`."""

    class Meta:
        model = ApiKey
        fields = ["account", "name", "all_models", "allowed_models", "rpm_limit", "tpm_limit", "expires_at"]

    def clean(self):
        data = super().clean()
        if not data.get("all_models", True) and not data.get("allowed_models"):
            self.add_error("allowed_models", "List at least one model, or tick 'all models'.")
        return data


class ApiKeyChangeForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["name", "all_models", "allowed_models", "rpm_limit", "tpm_limit", "expires_at"]

    def clean(self):
        data = super().clean()
        if not data.get("all_models", True) and not data.get("allowed_models"):
            self.add_error("allowed_models", "List at least one model, or tick 'all models'.")
        return data


# --- routes --------------------------------------------------------------------------------------


class RouteForm(forms.ModelForm):
    """A route with a write-only upstream secret, stored by `services.route_secret_set`."""

    base_url = forms.URLField(
        max_length=300,
        assume_scheme="https",
        label="Base URL",
        help_text=Route._meta.get_field("base_url").help_text,
    )
    secret = forms.CharField(
        required=False,
        label="Upstream secret",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: stored encrypted, never shown again. Leave empty to keep the current secret.",
    )
    clear_secret = forms.BooleanField(
        required=False, label="Clear secret", help_text="Remove the stored (encrypted) secret."
    )

    class Meta:
        model = Route
        fields = [
            "model",
            "name",
            "provider",
            "base_url",
            "upstream_model",
            "secret",
            "clear_secret",
            "secret_env",
            "priority",
            "active",
            "timeout_seconds",
        ]

    def clean(self):
        data = super().clean()
        if data.get("secret") and data.get("clear_secret"):
            self.add_error("clear_secret", "Either enter a new secret or clear it, not both.")
        return data

    def secret_change(self) -> str | None:
        """The secret to store ("" clears it), or None to keep the current one."""
        if self.cleaned_data.get("clear_secret"):
            return ""
        return self.cleaned_data.get("secret") or None


# --- prices --------------------------------------------------------------------------------------


class PriceVersionAddForm(forms.ModelForm):
    """Publish prices; `PriceVersionAdmin.save_model` calls `services.price_version_publish`."""

    class Meta:
        model = PriceVersion
        fields = ["model", *PriceVersion.PRICE_FIELDS, "effective_from", "note"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "effective_from" in self.fields:  # absent on the read-only view of a published version
            self.fields["effective_from"].required = False
            self.fields[
                "effective_from"
            ].help_text = "Requests that start at or after this time use these prices. Empty: now."

    def clean(self):
        data = super().clean()
        for field in PriceVersion.PRICE_FIELDS:
            value = data.get(field)
            if value is not None and value < 0:
                self.add_error(field, "Prices cannot be negative.")
        model, effective_from = data.get("model"), data.get("effective_from")
        if (
            model
            and effective_from
            and PriceVersion.objects.filter(model=model, effective_from=effective_from).exists()
        ):
            self.add_error("effective_from", "This model already has a price version starting at this time.")
        return data

    def prices(self) -> dict:
        return {field: self.cleaned_data[field] for field in PriceVersion.PRICE_FIELDS}
