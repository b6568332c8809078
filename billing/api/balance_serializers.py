"""Balance and ledger as the dashboard API shows them: money as exact decimal strings, USD."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing import money
from billing.models import Account, Hold, LedgerEntry


def _usd(help_text: str, **kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=money.MONEY_DIGITS, decimal_places=money.MONEY_PLACES, read_only=True, help_text=help_text, **kwargs
    )


class BalanceSerializer(serializers.ModelSerializer):
    account_id = serializers.IntegerField(source="pk", read_only=True)
    currency = serializers.SerializerMethodField(help_text="Always USD.")
    available = _usd("What a new request may reserve: balance + credit_limit - reserved.")

    class Meta:
        model = Account
        fields = ("account_id", "currency", "balance", "reserved", "credit_limit", "available")
        read_only_fields = fields

    def get_currency(self, account) -> str:
        return "USD"


class HoldSerializer(serializers.ModelSerializer):
    """The credit a request reserved before it ran; its usage entry charges at most that."""

    class Meta:
        model = Hold
        fields = ("id", "amount", "state")
        read_only_fields = fields


class LedgerEntrySerializer(serializers.ModelSerializer):
    request_id = serializers.SerializerMethodField()
    hold = HoldSerializer(read_only=True, allow_null=True)

    class Meta:
        model = LedgerEntry
        fields = ("id", "kind", "amount", "balance_after", "reason", "created_at", "request_id", "hold", "ticket")
        extra_kwargs = {"ticket": {"help_text": "The diagnostic ticket a refund was granted on, if any."}}
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True, help_text="The gateway request it settles, if any."))
    def get_request_id(self, entry) -> str | None:
        return entry.request_id or None
