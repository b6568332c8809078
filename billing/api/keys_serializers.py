"""What the keys endpoints read and answer. A key's answer never holds its hash, and its secret only
in the one answer that created it (KeyCreatedSerializer)."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.models import ApiKey, CatalogModel, KeyAudit

STATES = ("active", "disabled", "expired")
LIMIT_MAX = 2**31 - 1  # PostgreSQL integer


def key_state(key: ApiKey, now=None) -> str:
    """active, disabled, or expired (active but past its expiry: the gateway refuses it too)."""
    if key.status == ApiKey.Status.DISABLED:
        return "disabled"
    if key.expires_at is not None and key.expires_at <= (now or timezone.now()):
        return "expired"
    return "active"


class UserRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


class KeySerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField(help_text="active, disabled, or expired (active but past expires_at).")
    created_by = UserRefSerializer(allow_null=True, help_text="Who created it; null when unknown.")
    last_used_at = serializers.DateTimeField(
        source="last_used", allow_null=True, help_text="When a request last presented this key; null: never."
    )
    replaced_by = serializers.IntegerField(
        source="replaced_by_id", allow_null=True, help_text="The key that replaced this one when it was rotated."
    )

    class Meta:
        model = ApiKey
        fields: tuple[str, ...] = (
            "id",
            "name",
            "prefix",
            "status",
            "all_models",
            "allowed_models",
            "rpm_limit",
            "tpm_limit",
            "expires_at",
            "created_at",
            "created_by",
            "disabled_at",
            "last_used_at",
            "replaced_by",
        )
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=STATES))
    def get_status(self, key: ApiKey) -> str:
        return key_state(key, self.context.get("now"))


class KeyCreatedSerializer(KeySerializer):
    secret = serializers.CharField(help_text="The full key (sk-ob-…): shown in this answer only, never again.")

    class Meta(KeySerializer.Meta):
        fields = (*KeySerializer.Meta.fields, "secret")
        read_only_fields = fields


class KeyWriteSerializer(serializers.Serializer):
    """Name, scope, limits and expiry, for POST (name required) and PATCH (everything optional)."""

    name = serializers.CharField(max_length=64)
    all_models = serializers.BooleanField(
        required=False, help_text="Scope: every model. True clears allowed_models; default on create: true."
    )
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=100),
        required=False,
        max_length=500,
        help_text="Scope when all_models is false: model names of the catalog. Given alone, it turns all_models off.",
    )
    rpm_limit = serializers.IntegerField(
        min_value=1, max_value=LIMIT_MAX, allow_null=True, required=False, help_text="Requests per minute; null: none."
    )
    tpm_limit = serializers.IntegerField(
        min_value=1, max_value=LIMIT_MAX, allow_null=True, required=False, help_text="Tokens per minute; null: none."
    )
    expires_at = serializers.DateTimeField(
        allow_null=True, required=False, help_text="In the future; null: never expires."
    )

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Must be in the future.")
        return value

    def validate_allowed_models(self, value: list[str]) -> list[str]:
        names = set(value)
        known = set(CatalogModel.objects.filter(name__in=names).values_list("name", flat=True))
        unknown = sorted(names - known)
        if unknown:
            raise serializers.ValidationError(f"Unknown models: {', '.join(unknown)}.")
        return sorted(names)

    def validate(self, attrs: dict) -> dict:
        if attrs.get("all_models") is True and attrs.get("allowed_models"):
            raise serializers.ValidationError({"allowed_models": ["Must be empty when all_models is true."]})
        return attrs


class KeyUpdateSerializer(KeyWriteSerializer):
    """PATCH: any of the settings, and `active`; fields left out keep their value."""

    name = serializers.CharField(max_length=64, required=False)
    active = serializers.BooleanField(
        required=False, help_text="false disables the key at once; true enables it again (not a rotated key)."
    )


class ChangesField(serializers.DictField):
    child = serializers.ListField(child=serializers.JSONField(allow_null=True), min_length=2, max_length=2)


class KeyAuditSerializer(serializers.ModelSerializer):
    key = serializers.IntegerField(source="key_id", allow_null=True, help_text="The key's id.")
    actor = UserRefSerializer(allow_null=True, help_text="Who made the change; null: an operator's tool.")
    changes = ChangesField(help_text="What changed: field → [old, new] (null old values on create).")

    class Meta:
        model = KeyAudit
        fields: tuple[str, ...] = ("id", "key", "key_prefix", "action", "actor", "changes", "created_at")
        read_only_fields = fields


class KeyConflictDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


class KeyConflictSerializer(serializers.Serializer):
    """The one error body (openbili/api/errors.py) of a 409, which the schema hook does not add."""

    error = KeyConflictDetailSerializer()
