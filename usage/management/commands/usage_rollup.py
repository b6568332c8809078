from django.core.management.base import BaseCommand

from usage.rollup import usage_rollup, watermark


class Command(BaseCommand):
    help = (
        "Roll up closed hours of usage rows into the summaries' hourly table (and recompute hours a late "
        "write changed). Idempotent; the first run over a big table commits a day at a time."
    )

    def handle(self, *args, **options):
        hours = usage_rollup()
        self.stdout.write(f"{hours} hour(s) computed; usage rolled up through {watermark()}")
