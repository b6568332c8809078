"""`manage.py account_create NAME [--owner-email E] [--credit 25.00] [--credit-limit 0] [--if-missing]`."""

from __future__ import annotations

import re
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction

from billing import money, services
from billing.models import Account

_PLAIN_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_MAX_AMOUNT = Decimal(10) ** (money.MONEY_DIGITS - money.MONEY_PLACES)  # what NUMERIC(24, 12) holds


def amount_parse(text: str, *, option: str) -> Decimal:
    """A non-negative USD amount typed on the command line: plain decimal digits only.

    Exponents ("1e400"), "nan", "inf" and signs are refused with a message, never a traceback.
    """
    text = text.strip()
    if text.startswith("-"):
        raise CommandError(f"{option} cannot be negative: {text!r}")
    if not _PLAIN_DECIMAL.match(text):
        raise CommandError(f'{option} must be a plain decimal amount in USD like "25.00", not {text!r}')
    amount = Decimal(text)  # exact: the pattern above admits only plain decimal digits
    if -amount.as_tuple().exponent > money.MONEY_PLACES:  # type: ignore[operator]
        raise CommandError(f"{option} has more than {money.MONEY_PLACES} decimal places: {text!r}")
    if amount >= _MAX_AMOUNT:
        raise CommandError(f"{option} is too large: {text!r}")
    return amount


def amount_format(amount: Decimal) -> str:
    """Cents when that is exact, else every significant digit (never rounds money away)."""
    amount = Decimal(amount)
    cents = money.to_cents(amount)
    return f"{cents}" if cents == amount else format(amount.normalize(), "f")


class Command(BaseCommand):
    help = "Create a customer account (with its owner user and opening credit) and print its id and balance."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Account (organisation) name; unique.")
        parser.add_argument(
            "--owner-email", help="Owner user's email; the user is created (without a usable password) if missing."
        )
        parser.add_argument("--credit", default="0", help="Opening prepaid credit in USD, e.g. 25.00 (default 0).")
        parser.add_argument(
            "--credit-limit", default="0", help="How far below zero the balance may go, USD (default 0: prepaid)."
        )
        parser.add_argument(
            "--if-missing", action="store_true", help="If the account exists, print it and change nothing."
        )

    def handle(
        self, *args, name: str, owner_email: str | None, credit: str, credit_limit: str, if_missing: bool, **opts
    ):
        name = name.strip()
        if not name:
            raise CommandError("the account name cannot be empty")
        max_length = Account._meta.get_field("name").max_length or 120
        if len(name) > max_length:
            raise CommandError(f"the account name is longer than {max_length} characters")
        credit_amount = amount_parse(credit, option="--credit")
        limit_amount = amount_parse(credit_limit, option="--credit-limit")
        email = None
        if owner_email is not None:
            email = owner_email.strip()
            try:
                validate_email(email)
            except ValidationError as exc:
                raise CommandError(f"--owner-email is not an email address: {owner_email!r}") from exc

        existing = Account.objects.filter(name=name).first()
        if existing is not None:
            if not if_missing:
                raise CommandError(f"account {name!r} already exists (id {existing.pk}); use --if-missing to accept it")
            self._print(existing, note="exists, unchanged")
            return

        try:
            with transaction.atomic():
                owner, owner_created = self._owner(email) if email else (None, False)
                account = services.account_create(
                    name=name, owner=owner, credit=credit_amount, credit_limit=limit_amount
                )
        except IntegrityError as exc:  # created concurrently between the check above and the insert
            raise CommandError(f"account {name!r} could not be created: it already exists") from exc
        account.refresh_from_db()  # the stored balance and limit, not the in-memory defaults
        self._print(account, note="created")
        if owner is not None:
            self.stdout.write(
                f"owner: {owner.email} ({'created, no usable password' if owner_created else 'existing user'})"
            )

    def _owner(self, email: str):
        User = get_user_model()
        users = list(User.objects.filter(email__iexact=email).order_by("pk")[:2])
        if len(users) > 1:
            raise CommandError(f"several users have the email {email!r}; resolve that in the admin first")
        if users:
            return users[0], False
        username_field = User.USERNAME_FIELD
        if User.objects.filter(**{f"{username_field}__iexact": email}).exists():
            raise CommandError(f"a user named {email!r} exists with another email; resolve that in the admin first")
        user = User(**{username_field: email, "email": email})
        user.set_unusable_password()
        user.save()
        return user, True

    def _print(self, account: Account, *, note: str) -> None:
        self.stdout.write(f"account {account.pk} {account.name!r} ({note})")
        self.stdout.write(f"balance: {amount_format(account.balance)} USD")
        self.stdout.write(f"credit limit: {amount_format(account.credit_limit)} USD")
