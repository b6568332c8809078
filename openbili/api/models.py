"""Personal API tokens: how a script signs in to the dashboard API.

A token is `obt_` followed by 43 URL-safe characters (256 random bits), shown once and stored as
its SHA-256 (high entropy: a fast unsalted hash is safe, and one unique-index lookup finds it),
as API keys are (billing/keys.py). It acts as its user, on every account the user is a member
of, until revoked or expired. It is not an API key: it reaches /api/, never /v1.
"""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models

TOKEN_START = "obt_"  # noqa: S105 - the public marker of a token, not a secret
PREFIX_LENGTH = 12


def token_generate() -> str:
    return TOKEN_START + secrets.token_urlsafe(32)


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class PersonalToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="personal_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=PREFIX_LENGTH, help_text="The token's first characters, not secret.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "-created_at"], name="token_user_time")]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"
