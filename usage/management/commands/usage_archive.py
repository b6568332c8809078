from django.core.management.base import BaseCommand, CommandError

from billing.invoices import parse_month
from openbili.core.errors import InvalidRequest
from usage.archive import ArchiveRefused, usage_archive


class Command(BaseCommand):
    help = (
        "Archive whole months of usage rows before --before (YYYY-MM): each month's partition, once invoiced "
        "and settled, is copied to a gzipped CSV in the exports storage, read back and checked, then dropped "
        "(usage/archive.py). Never the current or previous month. Idempotent: rerun after any failure."
    )

    def add_arguments(self, parser):
        parser.add_argument("--before", required=True, help="the first month kept (YYYY-MM)")
        parser.add_argument("--dry-run", action="store_true", help="check and report; write nothing")

    def handle(self, *args, **options):
        try:
            before = parse_month(options["before"])
            outcomes = usage_archive(before=before, dry_run=options["dry_run"], say=self.stdout.write)
        except (InvalidRequest, ArchiveRefused) as exc:
            raise CommandError(str(exc)) from exc
        for outcome in outcomes:
            self.stdout.write(str(outcome))
        if not outcomes:
            self.stdout.write(f"no month partition before {before:%Y-%m}")
        if any(outcome.action == "refused" for outcome in outcomes):
            raise CommandError("a month was refused (see above); later months were not tried")
