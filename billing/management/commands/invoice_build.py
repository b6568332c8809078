"""`manage.py invoice_build --month 2026-11 [--account NAME_OR_ID]`: build (or show) invoices."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing import invoices
from billing.models import Account
from openbili.core.errors import OpenbiliError


class Command(BaseCommand):
    help = (
        "Build the invoices of one month (UTC) for one account or every account with ledger entries; "
        "an invoice that exists is shown, never changed. Default month: the previous one."
    )

    def add_arguments(self, parser):
        parser.add_argument("--month", help="YYYY-MM (default: the month before this one).")
        parser.add_argument("--account", help="Account name or id (default: every account).")

    def handle(self, *args, month=None, account=None, **options):
        try:
            start = invoices.parse_month(month) if month else None
            if account is None:
                built = invoices.invoices_build_month(month=start)
            else:
                found = Account.objects.filter(**({"pk": int(account)} if account.isdigit() else {"name": account}))
                target = found.first()
                if target is None:
                    raise CommandError(f"no account {account!r}")
                if start is None:
                    start = invoices.previous_month(invoices.month_start(timezone.now()))
                built = [invoices.invoice_build(account=target, month=start)]
        except OpenbiliError as exc:
            raise CommandError(exc.message) from exc
        for item in built:
            invoice = item.invoice
            state = "built" if item.created else "exists"
            self.stdout.write(
                f"{invoice.number} {state}: {invoice.entry_count} entries, usage {invoice.usage_exact} "
                f"(total {invoice.total}) USD, closing balance {invoice.closing_balance}"
            )
