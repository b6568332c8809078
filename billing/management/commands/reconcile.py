"""`manage.py reconcile [--account ID]`: print every difference between ledger, usage and invoices;
exit status 1 if there is any (a deploy gate), 0 if none."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand

from billing.reconcile import CHECKS, reconcile
from openbili.ops import metrics


class Command(BaseCommand):
    help = "Check balance = ledger sum, usage charges = usage rows, invoices = their lines and rows, no stale hold."

    def add_arguments(self, parser):
        parser.add_argument("--account", type=int, help="One account's id (default: every account).")

    def handle(self, *args, account=None, **options):
        differences = reconcile(account_id=account)
        if account is None:  # a whole run: its result is the one `openbili_reconcile_differences` reports
            metrics.record_reconcile(len(differences))
        for difference in differences:
            self.stdout.write(str(difference))
        if differences:
            self.stderr.write(f"reconcile: {len(differences)} difference(s)")
            sys.exit(1)
        self.stdout.write(f"reconcile: no differences ({len(CHECKS)} checks)")
