"""Dashboard API authentication: a browser's session (Django's login, with CSRF on every write,
which DRF's SessionAuthentication enforces) or a script's personal token (`Authorization: Bearer
obt_…`, models.PersonalToken). A revoked or expired token is refused like an unknown one."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from openbili.api.models import TOKEN_START, PersonalToken, token_hash

TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per token


class TokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, secret = header.partition(" ")
        if scheme != self.keyword or not secret.startswith(TOKEN_START):
            return None  # not ours: the session may still authenticate
        now = timezone.now()
        token = PersonalToken.objects.select_related("user").filter(token_hash=token_hash(secret.strip())).first()
        if (
            token is None
            or token.revoked_at is not None
            or (token.expires_at is not None and token.expires_at <= now)
            or not token.user.is_active
        ):
            raise exceptions.AuthenticationFailed("Invalid token: unknown, revoked or expired.")
        if token.last_used_at is None or now - token.last_used_at > TOUCH_EVERY:
            PersonalToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request) -> str:
        return self.keyword  # a 401 with WWW-Authenticate, not a 403, when nothing authenticated


class TokenScheme(OpenApiAuthenticationExtension):
    """The personal token in the OpenAPI schema: HTTP bearer auth."""

    target_class = "openbili.api.auth.TokenAuthentication"
    name = "personalToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "obt_…", "description": "A personal token."}
