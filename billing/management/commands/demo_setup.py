"""Create (once) the demo account, its API key, a console login and an admin login for the local run
command.

Keys are stored hashed, so the demo secrets are kept in files under var/ (mode 0600) for the
launcher to print again on the next run. Never use this in production.
"""

import json
import os
import secrets
from decimal import Decimal
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from billing import selectors, services
from billing.models import Account, Membership

DEMO_ACCOUNT = "Demo"
DEMO_CREDIT = Decimal("10.00")


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")


def _login(account: Account, username: str, password_path: Path, *, superuser: bool) -> str:
    """The login `username` (made once, its password kept in password_path), an owner of account."""
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    if user is None:
        password = secrets.token_urlsafe(12)
        make = user_model.objects.create_superuser if superuser else user_model.objects.create_user
        user = make(username, f"{username}@localhost", password)
        _write_secret(password_path, password)
    Membership.objects.get_or_create(account=account, user=user, defaults={"role": Membership.Role.OWNER})
    return password_path.read_text().strip() if password_path.exists() else "(set by you)"


class Command(BaseCommand):
    help = "Create the demo account, key and admin login (local run command only); print them as JSON."

    def add_arguments(self, parser):
        parser.add_argument("--key-file", required=True, help="Where the demo key is kept between runs.")

    def handle(self, *args, key_file, **options):
        key_path = Path(key_file)
        account = Account.objects.filter(name=DEMO_ACCOUNT).first()
        if account is None:
            account = services.account_create(name=DEMO_ACCOUNT, credit=DEMO_CREDIT)

        secret = key_path.read_text().strip() if key_path.exists() else ""
        key = selectors.key_lookup(secret) if secret else None
        if key is None or key.account_id != account.pk or not selectors.key_is_usable(key):
            _, secret = services.key_create(account=account, name="demo")
            _write_secret(key_path, secret)

        # The admin login also owns the demo account in the dashboard API (/api/v1/me lists it); the
        # console's login (/console/) is a customer's: owner of the demo account, not staff.
        password = _login(account, "admin", key_path.with_name("demo-admin-password"), superuser=True)
        console_password = _login(account, "demo", key_path.with_name("demo-console-password"), superuser=False)
        self.stdout.write(
            json.dumps(
                {
                    "key": secret,
                    "admin_user": "admin",
                    "admin_password": password,
                    "console_user": "demo",
                    "console_password": console_password,
                }
            )
        )
