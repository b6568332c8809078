"""The whole dashboard API against its own OpenAPI schema (issue 11, Done when): schemathesis
generates requests for every operation from the schema — within the caller's own account, with a
personal token — and checks each answer: never a 5xx, and every status, header and body as the
schema documents it. Bounded: OPENBILI_SCHEMATHESIS_EXAMPLES per operation (default 25)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi import checks

from openbili.wsgi import application
from tests.api.conftest import Caller

EXAMPLES = int(os.environ.get("OPENBILI_SCHEMATHESIS_EXAMPLES", "25"))

# Loaded at collection: the schema view touches no database.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


@pytest.fixture(autouse=True)
def keep_the_test_connection():
    """As Django's test client does: the WSGI handler must not close the test's own connection
    (and its transaction) at the end of each request."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def owner(db) -> Caller:
    return Caller("schema-owner")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_as_its_schema_says(case, owner):
    if "account_id" in (case.path_parameters or {}):
        case.path_parameters["account_id"] = owner.account.pk  # explore inside the caller's account
    # Checked: no 5xx, and status codes, content types, headers and bodies as documented. Not
    # checked: that every schema-valid request is accepted (a cursor or a model name can be
    # well-formed and still unknown: a 400 or 404 is right) or every invalid one refused (an empty
    # filter means no filter) — the API's own tests pin those rules.
    case.call_and_validate(
        headers={"Authorization": f"Bearer {owner.secret}"},
        excluded_checks=[checks.positive_data_acceptance, checks.negative_data_rejection],
    )
