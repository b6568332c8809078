"""Shared fixtures. Tests run against real PostgreSQL (DATABASE_URL) and Redis (REDIS_URL)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests import log_scan
from tests.celery_worker import celery_worker  # noqa: F401 - fixture
from tests.db_speed import django_db_setup  # noqa: F401 - fixture (async commit, fast teardown)
from tests.factories import AccountFactory, CatalogModelFactory, make_visible_model
from tests.gateway_fixtures import claude, gateway, live_gateway, upstream  # noqa: F401 - fixtures
from tests.worker_env import APPLIED  # noqa: F401 - in an xdist worker, refuses to run unless loaded first (-p)


def pytest_sessionfinish(session, exitstatus):
    log_scan.finish(session)  # every log line of the run, scanned for secrets and prompts


@pytest.fixture(scope="session", autouse=True)
def _logs_recorded_for_the_secret_scan():
    with pytest.MonkeyPatch.context() as patch:
        log_scan.start_recording(patch)
        yield


@pytest.fixture
def account(db):
    return AccountFactory(credit=Decimal("100"))


@pytest.fixture
def visible_model(db):
    return make_visible_model(CatalogModelFactory(name="gpt-test"))
