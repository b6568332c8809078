"""The SECRET_KEY guard (see settings.py): what the key protects never runs on the public one."""

from __future__ import annotations

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured


def on_public_key() -> bool:
    return settings.SECRET_KEY == settings.DEV_SECRET_KEY and not settings.ALLOW_DEV_SECRET_KEY


def require_secret_key(what: str) -> None:
    """Refuse `what` (serving, a worker, encrypting) on the public development key."""
    if on_public_key():
        raise ImproperlyConfigured(
            f"SECRET_KEY is not set: refusing {what} on the public development key. Set it in production; "
            "`scripts/run` keeps a random local one in var/secret-key; OPENBILI_INSECURE_DEV_SECRET=1 opts out."
        )


@checks.register(checks.Tags.security, deploy=True)
def secret_key_check(app_configs, **kwargs) -> list[checks.CheckMessage]:
    if on_public_key():
        return [checks.Error("SECRET_KEY is not set (the public development key is in use).", id="openbili.E001")]
    return []
