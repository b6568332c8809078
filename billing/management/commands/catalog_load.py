"""`manage.py catalog_load PATH [--dry-run] [--deactivate-missing] [--demo-upstream URL]`.

Loads a declarative TOML catalog idempotently (format: fixtures/catalog.toml; logic:
billing/catalog_file.py). A bad file changes nothing and names the offending entry.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from billing import catalog_file


class Command(BaseCommand):
    help = "Load models, routes and prices from a TOML catalog file (idempotent; changed prices get a new version)."

    def add_arguments(self, parser):
        parser.add_argument("path", help="The catalog file, e.g. fixtures/catalog.toml.")
        parser.add_argument("--dry-run", action="store_true", help="Report what would change; write nothing.")
        parser.add_argument(
            "--deactivate-missing",
            action="store_true",
            help="Set inactive the routes of the file's models that the file does not list.",
        )
        parser.add_argument(
            "--demo-upstream",
            metavar="URL",
            help="Offline demo: route every model to this OpenAI-compatible upstream (route 'demo', "
            "base URL URL/v1, priority 1) instead of the file's routes.",
        )

    def handle(self, *args, path: str, dry_run: bool, deactivate_missing: bool, demo_upstream: str | None, **opts):
        try:
            specs = catalog_file.catalog_read(path)
            result = catalog_file.catalog_load(
                specs,
                demo_upstream=demo_upstream,
                deactivate_missing=deactivate_missing,
                dry_run=dry_run,
                note=f"catalog_load {path}",
            )
        except catalog_file.CatalogFileError as exc:
            raise CommandError(f"{path}: {exc} (nothing was written)") from exc
        except DatabaseError as exc:  # e.g. a concurrent load created the same row first
            raise CommandError(f"{path}: the database refused the load, nothing was written: {exc}") from exc

        for line in result.changes:
            self.stdout.write(f"  {line}")
        models, routes = result.models, result.routes
        self.stdout.write(f"models: {models.created} created, {models.updated} updated, {models.unchanged} unchanged")
        deactivated = f", {result.routes_deactivated} deactivated" if deactivate_missing else ""
        self.stdout.write(
            f"routes: {routes.created} created, {routes.updated} updated, {routes.unchanged} unchanged{deactivated}"
        )
        published = f" ({', '.join(result.prices_published)})" if result.prices_published else ""
        self.stdout.write(
            f"prices: {len(result.prices_published)} new versions{published}, {result.prices_unchanged} unchanged"
        )
        if dry_run:
            self.stdout.write("dry run: nothing was written")
        elif not result.changed:
            self.stdout.write("no changes")
