from django.core.management.base import BaseCommand

from usage.services import responses_poll


class Command(BaseCommand):
    help = "Bill the background responses that have finished (GET each pending one from its route)."

    def handle(self, *args, **options):
        self.stdout.write(f"{responses_poll()} background response(s) billed")
