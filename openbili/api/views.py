"""Sign-in, the caller and their personal tokens: /api/v1/auth/…, /api/v1/me…"""

from __future__ import annotations

from django.contrib.auth import authenticate, login, logout
from django.middleware.csrf import get_token
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, generics, serializers, status
from rest_framework.authentication import CSRFCheck
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.models import Membership
from openbili.api.errors import error_response
from openbili.api.models import PREFIX_LENGTH, PersonalToken, token_generate, token_hash
from openbili.api.params import check_known
from openbili.api.serializers import LoginSerializer, MeSerializer, TokenCreatedSerializer, TokenSerializer


def _enforce_csrf(request) -> None:
    """Sign-in from a browser is CSRF-checked too (else a page could sign a visitor in as the
    attacker): GET /api/v1/auth/csrf first, then send its token in X-CSRFToken."""
    check = CSRFCheck(lambda request: None)
    check.process_request(request)
    reason = check.process_view(request, None, (), {})
    if reason:
        raise exceptions.PermissionDenied(f"CSRF failed: {reason}")


def _me(user) -> dict:
    user.memberships_listed = list(
        Membership.objects.select_related("account").filter(user=user).order_by("account__name")
    )
    return MeSerializer(user).data


@extend_schema(tags=["auth"], responses=inline_serializer("Csrf", {"csrf_token": serializers.CharField()}))
class CsrfView(APIView):
    """The CSRF token for a browser session (also set as the csrftoken cookie)."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    def get(self, request):
        check_known(request, set())
        return Response({"csrf_token": get_token(request)})


@extend_schema(tags=["auth"], request=LoginSerializer, responses={200: MeSerializer})
class LoginView(APIView):
    """Sign in with a username and password: a session cookie. Wrong passwords are counted per
    username and address (OPENBILI_LOGIN_FAILURE_LIMIT, django-axes): past the limit, 429."""

    permission_classes = [AllowAny]
    authentication_classes: list = []
    throttle_scope = "login"

    def post(self, request):
        _enforce_csrf(request)
        form = LoginSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        user = authenticate(request, **form.validated_data)
        if getattr(request, "axes_locked_out", False):
            response = error_response("locked_out", "Too many failed sign-ins: try again later.", 429)
            response["Retry-After"] = "900"
            return response
        if user is None or not user.is_active:
            return error_response("invalid_credentials", "Wrong username or password.", 401)
        login(request, user)
        return Response(_me(user) | {"csrf_token": get_token(request)})


@extend_schema(tags=["auth"], request=None, responses={204: None})
class LogoutView(APIView):
    def post(self, request):
        logout(request)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["me"], responses=MeSerializer)
class MeView(APIView):
    """The caller, their accounts and their role in each."""

    permission_classes = [IsAuthenticated]

    def get(self, request):
        check_known(request, set())
        return Response(_me(request.user))


@extend_schema(tags=["me"])
class TokenListView(generics.ListCreateAPIView):
    """The caller's personal tokens (a script's sign-in). Creating one returns its secret once."""

    serializer_class = TokenSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no user
            return PersonalToken.objects.none()
        check_known(self.request, set())
        return PersonalToken.objects.filter(user=self.request.user)

    @extend_schema(responses={201: TokenCreatedSerializer})
    def post(self, request, *args, **kwargs):
        form = TokenSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        secret = token_generate()
        token = form.save(user=request.user, token_hash=token_hash(secret), prefix=secret[:PREFIX_LENGTH])
        token.token = secret
        return Response(TokenCreatedSerializer(token).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["me"])
class TokenView(generics.RetrieveDestroyAPIView):
    """One personal token; DELETE revokes it at once (it stays listed, revoked)."""

    serializer_class = TokenSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return PersonalToken.objects.none()
        return PersonalToken.objects.filter(user=self.request.user)

    def perform_destroy(self, instance):
        if instance.revoked_at is None:
            instance.revoked_at = timezone.now()
            instance.save(update_fields=["revoked_at"])
