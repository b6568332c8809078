"""API keys and their audit trail: /api/v1/accounts/{account_id}/keys… and …/audit.

Members list and read the account's keys; only owners create, change, rotate and delete them, and
read the audit trail (403 permission_denied for a member). Every change is one billing.services
call, which writes its KeyAudit entry in the same transaction; the gateways drop their cached copy
of the key on commit (the NOTIFY triggers of billing migration 0003), so a disabled, rotated or
deleted key is refused by the next request.

DELETE is a soft delete (services.key_delete): usage rows and holds point at their key, and a real
DELETE would null that reference (ON DELETE SET NULL) and take the key out of the account's usage
history, its per-key summaries and its audit trail. A deleted key is disabled for good, hidden here
(404), and still named by its prefix wherever history shows it.
"""

from __future__ import annotations

import django_filters
from django import forms
from django.db.models import OuterRef, QuerySet, Subquery
from django.db.models.functions import Greatest
from django.urls import path
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import generics, status
from rest_framework.response import Response

from billing import services
from billing.api.keys_serializers import (
    STATES,
    KeyAuditSerializer,
    KeyConflictSerializer,
    KeyCreatedSerializer,
    KeySerializer,
    KeyUpdateSerializer,
    KeyWriteSerializer,
)
from billing.models import Account, ApiKey, KeyAudit
from openbili.api.errors import service_call
from openbili.api.params import check_known
from openbili.api.tenancy import AccountScoped
from usage.models import UsageRecord

CONFLICT = OpenApiResponse(KeyConflictSerializer, description="The key was rotated or deleted meanwhile.")


def keys_of(account: Account) -> QuerySet[ApiKey]:
    """The account's keys that were not deleted, with who created them and when each was last
    used: the newest usage row's start (one probe of usage_key_time per key), or the key's own
    last_used_at if a writer ever sets it."""
    newest_use = UsageRecord.objects.filter(api_key=OuterRef("pk")).order_by("-started_at").values("started_at")[:1]
    return (
        ApiKey.objects.filter(account=account, deleted_at__isnull=True)
        .select_related("created_by")
        .annotate(last_used=Greatest("last_used_at", Subquery(newest_use)))  # PostgreSQL: NULLs ignored
    )


@extend_schema_field(OpenApiTypes.INT)
class IntegerFilter(django_filters.NumberFilter):
    field_class = forms.IntegerField  # NumberFilter's DecimalField would take "1.5"


class KeyFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=[(state, state) for state in STATES],
        method="filter_status",
        help_text="active, disabled, or expired (active but past expires_at).",
    )
    name = django_filters.CharFilter(lookup_expr="icontains", max_length=64, help_text="Name contains (any case).")

    class Meta:
        model = ApiKey
        fields: list[str] = []

    def filter_status(self, queryset, name, value):
        if value == "disabled":
            return queryset.filter(status=ApiKey.Status.DISABLED)
        now = timezone.now()
        active = queryset.filter(status=ApiKey.Status.ACTIVE)
        if value == "expired":
            return active.filter(expires_at__lte=now)
        return active.exclude(expires_at__lte=now)


class KeyAuditFilter(django_filters.FilterSet):
    key = IntegerFilter(field_name="key_id", min_value=1, max_value=2**63 - 1, help_text="Entries of this key id.")
    action = django_filters.ChoiceFilter(choices=KeyAudit.Action.choices)

    class Meta:
        model = KeyAudit
        fields: list[str] = []


class KeyScoped(AccountScoped):
    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no account
            return ApiKey.objects.none()
        return keys_of(self.account)

    def get_serializer_context(self):
        return super().get_serializer_context() | {"now": timezone.now()}  # type: ignore[misc]

    def answer(self, key: ApiKey, *, secret: str | None = None, http_status: int = status.HTTP_200_OK) -> Response:
        """The key as the list shows it (re-read: last use, creator), with its secret when just made."""
        fresh = self.get_queryset().get(pk=key.pk)
        if secret is None:
            return Response(KeySerializer(fresh, context=self.get_serializer_context()).data, status=http_status)
        fresh.secret = secret
        return Response(KeyCreatedSerializer(fresh, context=self.get_serializer_context()).data, status=http_status)


@extend_schema(tags=["keys"])
class KeyListView(KeyScoped, generics.ListAPIView):
    """The account's API keys, newest first (deleted keys are not listed). Owners create keys."""

    serializer_class = KeySerializer
    filterset_class = KeyFilter
    owner_methods = frozenset({"POST"})

    def list(self, request, *args, **kwargs):
        check_known(request, {"status", "name"})
        return super().list(request, *args, **kwargs)

    @extend_schema(request=KeyWriteSerializer, responses={201: KeyCreatedSerializer})
    def post(self, request, *args, **kwargs):
        """Create a key (owner). Its secret is in this answer only: it is stored as a hash."""
        check_known(request, set())
        form = KeyWriteSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        key, secret = service_call(
            lambda: services.key_create(
                account=self.account,
                name=data["name"],
                models=data.get("allowed_models"),
                # allowed_models given alone restricts the key, as on PATCH
                all_models=data.get("all_models", "allowed_models" not in data),
                rpm_limit=data.get("rpm_limit"),
                tpm_limit=data.get("tpm_limit"),
                expires_at=data.get("expires_at"),
                actor=request.user,
            )
        )
        return self.answer(key, secret=secret, http_status=status.HTTP_201_CREATED)


@extend_schema(tags=["keys"])
class KeyView(KeyScoped, generics.RetrieveAPIView):
    """One key of the account. Owners change (PATCH) and delete it."""

    serializer_class = KeySerializer
    lookup_url_kwarg = "key_id"
    owner_methods = frozenset({"PATCH", "DELETE"})

    def retrieve(self, request, *args, **kwargs):
        check_known(request, set())
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(request=KeyUpdateSerializer, responses={200: KeySerializer, 409: CONFLICT})
    def patch(self, request, *args, **kwargs):
        """Change the name, scope, limits, expiry, or `active` (owner); fields left out stay.
        Each change is an audit entry; a disabled key is refused by the gateway at once."""
        check_known(request, set())
        key = self.get_object()
        form = KeyUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        service_call(lambda: services.key_update(key=key, actor=request.user, **form.validated_data))
        return self.answer(key)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, *args, **kwargs):
        """Delete the key (owner): disabled for good and no longer listed; usage history keeps it."""
        check_known(request, set())
        services.key_delete(key=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["keys"])
class KeyRotateView(KeyScoped, generics.GenericAPIView):
    serializer_class = KeyCreatedSerializer
    lookup_url_kwarg = "key_id"
    owner_methods = frozenset({"POST"})

    @extend_schema(request=None, responses={201: KeyCreatedSerializer, 409: CONFLICT})
    def post(self, request, *args, **kwargs):
        """Replace the key by a new one with the same settings (owner). The new secret is in this
        answer only; the old key is disabled and refused by the gateway from now on."""
        check_known(request, set())
        key = self.get_object()
        new_key, secret = service_call(lambda: services.key_rotate(key=key, actor=request.user))
        return self.answer(new_key, secret=secret, http_status=status.HTTP_201_CREATED)


@extend_schema(tags=["keys"])
class KeyAuditListView(AccountScoped, generics.ListAPIView):
    """Every change to the account's keys (owner), newest first: who, when, and what changed."""

    serializer_class = KeyAuditSerializer
    filterset_class = KeyAuditFilter
    owner_methods = frozenset({"GET"})

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return KeyAudit.objects.none()
        return KeyAudit.objects.filter(account=self.account).select_related("actor")

    def list(self, request, *args, **kwargs):
        check_known(request, {"key", "action"})
        return super().list(request, *args, **kwargs)


urlpatterns = [
    path("keys", KeyListView.as_view(), name="api-keys"),
    path("keys/<int:key_id>", KeyView.as_view(), name="api-key"),
    path("keys/<int:key_id>/rotate", KeyRotateView.as_view(), name="api-key-rotate"),
    path("audit", KeyAuditListView.as_view(), name="api-key-audit"),
]
