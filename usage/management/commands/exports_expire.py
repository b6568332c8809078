from django.core.management.base import BaseCommand

from usage.exports import exports_expire


class Command(BaseCommand):
    help = "Mark usage exports past their expiry expired and delete their files from storage."

    def handle(self, *args, **options):
        self.stdout.write(f"{exports_expire()} expired export file(s) deleted")
