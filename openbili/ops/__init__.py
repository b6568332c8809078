"""What operators run the service by: health checks, Prometheus metrics, structured logs and traces.

The gateway (usage/gateway/) reports to these modules and hands `health.py` its state; they import
nothing of the gateway's (the outbox declares its Redis lists to the metrics, not the reverse).
The ASGI entry point routes `/healthz`, `/readyz` and `/metrics` to `health.py`.
"""
