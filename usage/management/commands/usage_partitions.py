from django.core.management.base import BaseCommand

from usage.partitions import AHEAD, DEFAULT, default_months, month_partitions, partitions_ensure


class Command(BaseCommand):
    help = (
        f"Make the usage table's monthly partitions: this month's and the next {AHEAD}, and those of any "
        f"month with rows in {DEFAULT} (moved there), never an archived month's (usage/partitions.py). "
        "Idempotent; the daily task runs the same."
    )

    def handle(self, *args, **options):
        made = partitions_ensure()
        self.stdout.write(f"made: {', '.join(made) or 'none'}")
        self.stdout.write(f"partitions: {', '.join(p.label for p in month_partitions())}")
        if stray := default_months():
            self.stderr.write(f"{DEFAULT} still has rows of: {', '.join(f'{m:%Y-%m}' for m in stray)}")
