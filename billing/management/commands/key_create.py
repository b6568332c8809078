"""`manage.py key_create --account NAME_OR_ID --name N [--models a,b] [--rpm 60] [--tpm 100000]
[--expires-days 90] [--quiet]`.

The full secret is printed once, on stdout, and nowhere else (not stored, not logged, not on stderr).
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing import services
from billing.models import Account, ApiKey, CatalogModel

_MAX_EXPIRES_DAYS = 36_500
_PG_INT_MAX = 2_147_483_647


def _positive_int(maximum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between 1 and {maximum}, not {value}")
        return value

    return parse


def account_find(reference: str) -> Account:
    """An account by exact name or by numeric id; ambiguous or unknown references are errors."""
    found = {account.pk: account for account in Account.objects.filter(name=reference)}
    if reference.isdigit():
        found |= {account.pk: account for account in Account.objects.filter(pk=int(reference))}
    if not found:
        raise CommandError(f"no account named or numbered {reference!r}")
    if len(found) > 1:
        raise CommandError(f"{reference!r} is both an account name and another account's id; pass the other one's id")
    return next(iter(found.values()))


class Command(BaseCommand):
    help = "Create an API key for an account and print its secret once (store it now: it cannot be shown again)."

    def add_arguments(self, parser):
        parser.add_argument("--account", required=True, help="Account name or id.")
        parser.add_argument("--name", required=True, help="Key label, e.g. 'ci' or 'production'.")
        parser.add_argument(
            "--models", help="Comma-separated model ids this key may call (default: every visible model)."
        )
        parser.add_argument("--rpm", type=_positive_int(_PG_INT_MAX), help="Requests per minute limit.")
        parser.add_argument("--tpm", type=_positive_int(_PG_INT_MAX), help="Tokens per minute limit.")
        parser.add_argument(
            "--expires-days", type=_positive_int(_MAX_EXPIRES_DAYS), help="Expire the key after this many days."
        )
        parser.add_argument("--quiet", action="store_true", help="Print only the secret (for scripts).")

    def handle(self, *args, account: str, name: str, models: str | None, rpm, tpm, expires_days, quiet: bool, **opts):
        target = account_find(account.strip())
        name = name.strip()
        max_length = ApiKey._meta.get_field("name").max_length or 64
        if not name or len(name) > max_length:
            raise CommandError(f"--name must be 1 to {max_length} characters")
        scope = None
        if models is not None:
            scope = sorted({m.strip() for m in models.split(",") if m.strip()})
            if not scope:
                raise CommandError("--models is empty; omit it to allow every model")
            known = set(CatalogModel.objects.filter(name__in=scope).values_list("name", flat=True))
            unknown = [m for m in scope if m not in known]
            if unknown:
                raise CommandError(f"unknown model(s) in --models: {', '.join(unknown)} (load the catalog first?)")
        expires_at = timezone.now() + timedelta(days=expires_days) if expires_days else None

        key, secret = services.key_create(
            account=target, name=name, models=scope, rpm_limit=rpm, tpm_limit=tpm, expires_at=expires_at
        )
        if quiet:
            self.stdout.write(secret)
            return
        self.stdout.write(f"key: {secret}")
        self.stdout.write(f"prefix: {key.prefix}")
        self.stdout.write(f"account: {target.pk} {target.name!r}")
        self.stdout.write(f"scope: {'all models' if key.all_models else ', '.join(key.allowed_models)}")
        limits = [f"rpm {key.rpm_limit}" if key.rpm_limit else "", f"tpm {key.tpm_limit}" if key.tpm_limit else ""]
        self.stdout.write(f"limits: {', '.join(filter(None, limits)) or 'none'}")
        self.stdout.write(f"expires: {key.expires_at.isoformat(timespec='seconds') if key.expires_at else 'never'}")
        self.stderr.write("The key is shown once and stored only as a hash: save it now.")
