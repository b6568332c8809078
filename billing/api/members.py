"""Members of an account: GET/POST /api/v1/accounts/{account_id}/members, PATCH/DELETE …/{id}.

Everyone in the account sees who else is; owners add existing users (by username or email), change
roles and remove members. An account always keeps an owner: the last one can be neither demoted
nor removed (409), so no account is left that nobody can manage.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, generics, serializers, status
from rest_framework.response import Response

from billing.models import Membership
from openbili.api.errors import Conflict
from openbili.api.params import check_known
from openbili.api.tenancy import AccountScoped


class MemberSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    email = serializers.EmailField(source="user.email", read_only=True)

    class Meta:
        model = Membership
        fields = ("id", "username", "email", "role", "created_at")
        read_only_fields = ("id", "created_at")


class MemberAddSerializer(serializers.Serializer):
    user = serializers.CharField(max_length=254, help_text="An existing user's username or email.")
    role = serializers.ChoiceField(choices=Membership.Role.choices, default=Membership.Role.MEMBER)


class MemberRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Membership.Role.choices)


def _keeps_an_owner(member: Membership) -> None:
    """409 if `member` is the account's last owner (checked under a lock of its owners)."""
    owners = list(
        Membership.objects.select_for_update()
        .filter(account_id=member.account_id, role=Membership.Role.OWNER)
        .values_list("pk", flat=True)
    )
    if owners == [member.pk]:
        raise Conflict("An account keeps at least one owner: make another member an owner first.")


@extend_schema(tags=["members"])
class MemberListView(AccountScoped, generics.ListAPIView):
    """The account's members and their roles. Owners add members."""

    serializer_class = MemberSerializer
    owner_methods = frozenset({"POST"})

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Membership.objects.none()
        check_known(self.request, set())
        return Membership.objects.select_related("user").filter(account=self.account)

    @extend_schema(request=MemberAddSerializer, responses={201: MemberSerializer})
    def post(self, request, *args, **kwargs):
        form = MemberAddSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        name = form.validated_data["user"]
        user = get_user_model().objects.filter(Q(username=name) | Q(email__iexact=name), is_active=True).first()
        if user is None:
            raise exceptions.ValidationError({"user": ["No active user with this username or email."]})
        member, created = Membership.objects.get_or_create(
            account=self.account, user=user, defaults={"role": form.validated_data["role"]}
        )
        if not created:
            raise Conflict("This user is already a member of the account.")
        return Response(MemberSerializer(member).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["members"])
class MemberView(AccountScoped, generics.RetrieveAPIView):
    """One member. Owners change the role (PATCH) or remove the member (DELETE)."""

    serializer_class = MemberSerializer
    owner_methods = frozenset({"PATCH", "DELETE"})
    lookup_url_kwarg = "member_id"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Membership.objects.none()
        return Membership.objects.select_related("user").filter(account=self.account)

    @extend_schema(request=MemberRoleSerializer, responses={200: MemberSerializer})
    def patch(self, request, *args, **kwargs):
        form = MemberRoleSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        with transaction.atomic():
            member = self.get_object()
            if form.validated_data["role"] != Membership.Role.OWNER:
                _keeps_an_owner(member)
            member.role = form.validated_data["role"]
            member.save(update_fields=["role"])
        return Response(MemberSerializer(member).data)

    @extend_schema(responses={204: None})
    def delete(self, request, *args, **kwargs):
        with transaction.atomic():
            member = self.get_object()
            _keeps_an_owner(member)
            member.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


urlpatterns = [
    path("members", MemberListView.as_view(), name="api-members"),
    path("members/<int:member_id>", MemberView.as_view(), name="api-member"),
]
