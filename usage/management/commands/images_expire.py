from django.core.management.base import BaseCommand

from usage.images import expire_images


class Command(BaseCommand):
    help = "Delete stored images whose URLs have expired: their files from storage, then their rows."

    def handle(self, *args, **options):
        self.stdout.write(f"{expire_images()} expired image(s) deleted")
