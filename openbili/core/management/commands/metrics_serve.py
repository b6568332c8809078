"""`manage.py metrics_serve [--host 127.0.0.1] [--port 9464] [--no-ledger]`: the Prometheus
metrics of this host's processes on a port of their own.

Every gateway worker and Celery worker started with the same PROMETHEUS_MULTIPROC_DIR writes its
metrics there; this process reads them all at each scrape (and the ledger's gauges from PostgreSQL
and Redis, unless --no-ledger: scrape those from one host only if you like fewer series). Run one
per host, on an address only operators (Prometheus) reach. The service's own port serves the same
at /metrics only with OPENBILI_METRICS_TOKEN.
"""

from __future__ import annotations

import threading

from django.core.management.base import BaseCommand, CommandError

from openbili.ops import metrics


class Command(BaseCommand):
    help = "Serve this host's metrics (PROMETHEUS_MULTIPROC_DIR) and the ledger's gauges on a port of their own."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=9464, help="Port (default 9464).")
        parser.add_argument("--no-ledger", action="store_true", help="Only this host's process metrics.")

    def handle(self, *args, host: str, port: int, no_ledger: bool, **options):
        from prometheus_client import start_http_server

        import usage.gateway.outbox  # noqa: F401 - declares its Redis lists to the ledger's gauges

        if not metrics.MULTIPROCESS_DIR:
            raise CommandError("PROMETHEUS_MULTIPROC_DIR is not set: there is no other process's metrics to serve")
        server, _ = start_http_server(port, addr=host, registry=metrics.registry(ledger=not no_ledger))
        self.stdout.write(f"metrics on http://{host}:{server.server_port}/metrics from {metrics.MULTIPROCESS_DIR}")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
