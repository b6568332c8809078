from django.core.management.base import BaseCommand

from usage.services import requests_sweep


class Command(BaseCommand):
    help = "Release holds of requests that died (expired) and finish their usage rows as interrupted."

    def handle(self, *args, **options):
        self.stdout.write(f"{requests_sweep()} expired hold(s) released")
