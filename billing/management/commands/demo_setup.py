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

        admin_path = key_path.with_name("demo-admin-password")
        user_model = get_user_model()
        admin = user_model.objects.filter(username="admin").first()
        if admin is None:
            password = secrets.token_urlsafe(12)
            admin = user_model.objects.create_superuser("admin", "admin@localhost", password)
            _write_secret(admin_path, password)
        # The same login owns the demo account in the dashboard API (/api/v1/me lists it).
        Membership.objects.get_or_create(account=account, user=admin, defaults={"role": Membership.Role.OWNER})
        password = admin_path.read_text().strip() if admin_path.exists() else "(set by you)"

        # A customer's login for the console (/console/): owner of the demo account, not staff.
        console_path = key_path.with_name("demo-console-password")
        customer = user_model.objects.filter(username="demo").first()
        if customer is None:
            console_password = secrets.token_urlsafe(12)
            customer = user_model.objects.create_user("demo", "demo@localhost", console_password)
            _write_secret(console_path, console_password)
        Membership.objects.get_or_create(account=account, user=customer, defaults={"role": Membership.Role.OWNER})
        console_password = console_path.read_text().strip() if console_path.exists() else "(set by you)"
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
