from django.core.management.base import BaseCommand

from usage.services import routes_probe


class Command(BaseCommand):
    help = "Probe every active route with a minimal real request; the latest probe decides model visibility."

    def add_arguments(self, parser):
        parser.add_argument("--model", help="Only this model's routes.")

    def handle(self, *args, model=None, **options):
        results = routes_probe(model=model)
        for route, ok in results:
            self.stdout.write(f"{'OK  ' if ok else 'FAIL'} {route.model.name} via {route.name} ({route.provider})")
        failed = sum(not ok for _, ok in results)
        self.stdout.write(f"{len(results)} route(s) probed, {failed} failed")
