"""The dashboard API for diagnostic tickets: /api/v1/tickets… and /api/v1/usage/{request_id}/bundle."""
