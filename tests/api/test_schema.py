"""The OpenAPI schema of /api/ generates without a warning (every view's responses resolved), so
the schema and the docs page describe what the API answers."""

from __future__ import annotations

import pytest
import yaml
from django.core.management import call_command


@pytest.mark.django_db
def test_the_schema_generates_cleanly_and_lists_the_api(tmp_path):
    out = tmp_path / "schema.yml"
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    assert schema["openapi"].startswith("3.")
    assert {"/api/v1/me", "/api/v1/me/tokens", "/api/v1/auth/login"} <= set(schema["paths"])
    assert {
        "/api/v1/tickets/",
        "/api/v1/tickets/{ticket_id}",
        "/api/v1/tickets/{ticket_id}/replies",
        "/api/v1/usage/{request_id}/bundle",
    } <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["personalToken"]["scheme"] == "bearer"
