"""The test database, made cheaper to use without changing what a test sees (registered by tests/conftest.py).

1. Asynchronous commit on the test databases (`ALTER DATABASE ... SET synchronous_commit = off`),
   for every connection made after setup: this process's, the live gateway's pool, the Celery
   workers' and the second gateways' processes. A commit is visible to every other session the
   moment it returns either way; only the wait for the WAL flush to disk goes, which no test on
   the shared server depends on (the fault tests kill PostgreSQL, but their own private cluster).

2. A faster end of each transactional test (`transactional_db`, `django_db(transaction=True)`, so
   every gateway test). Django empties the database with one `TRUNCATE` of every table, then
   emits post_migrate to recreate the content types and permissions. TRUNCATE makes new files
   for each of the ~300 relations (tables, partitions, indexes, TOAST): ~0.2 s on a quiet disk,
   2-3 s while other work writes to it, for the ~2,000 tests that end this way. Here instead, in
   one transaction with triggers off (`session_replication_role = replica`: the ledger's
   append-only triggers would refuse a DELETE, and the foreign keys need no check when every
   row goes), `DELETE FROM` every table Django would truncate (the same list): milliseconds for
   a test's few rows. The content types and permissions, which post_migrate would recreate just
   as they are, stay when the test left them as migrate made them (same count and largest id);
   otherwise they go too and post_migrate runs, as Django does. Afterwards the database holds what
   it holds after Django's flush. Sequences are not reset, by either.
   Django's own flush is used when a test asks for something this does not do (reset_sequences,
   serialized_rollback, available_apps), and for the rest of the run when the database user may
   not set session_replication_role (not a superuser).
"""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connections, transaction
from django.test import TransactionTestCase

KEPT = ("django_content_type", "auth_permission")  # recreated by post_migrate: kept when untouched
_baseline: dict[str, tuple] = {}  # alias: (count, max id) of the KEPT tables after migrate
_fallback = False  # set once the user turned out unable to turn triggers off

_django_fixture_teardown = TransactionTestCase._fixture_teardown


def _signature(connection) -> tuple:
    with connection.cursor() as cursor:
        cursor.execute(
            " UNION ALL ".join(f"SELECT count(*), max(id) FROM {connection.ops.quote_name(t)}" for t in KEPT)
        )
        return tuple(cursor.fetchall())


def _empty(alias: str) -> None:
    from django.core.management.sql import emit_post_migrate_signal

    connection = connections[alias]
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    recreate = _signature(connection) != _baseline.get(alias)
    doomed = [t for t in tables if recreate or t not in KEPT]
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        for table in doomed:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(table)}")
    if recreate:
        emit_post_migrate_signal(verbosity=0, interactive=False, db=alias)
        _baseline[alias] = _signature(connection)


def _fixture_teardown(self) -> None:
    global _fallback
    if _fallback or self.reset_sequences or self.serialized_rollback or self.available_apps is not None:
        return _django_fixture_teardown(self)
    for alias in self._databases_names(include_mirrors=False):
        try:
            _empty(alias)
        except DatabaseError as exc:
            if "session_replication_role" not in str(exc) and "permission denied" not in str(exc):
                raise
            _fallback = True
            return _django_fixture_teardown(self)
    return None


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test databases, then asynchronous commit on each and the KEPT baseline."""
    TransactionTestCase._fixture_teardown = _fixture_teardown
    with django_db_blocker.unblock():
        for alias in connections:
            connection = connections[alias]
            if connection.settings_dict.get("TEST", {}).get("MIRROR"):
                continue
            with connection.cursor() as cursor:
                name = connection.ops.quote_name(connection.settings_dict["NAME"])
                cursor.execute(f"ALTER DATABASE {name} SET synchronous_commit = off")
            connection.close()  # the next connection has the setting
            _baseline[alias] = _signature(connection)
    yield
    TransactionTestCase._fixture_teardown = _django_fixture_teardown
