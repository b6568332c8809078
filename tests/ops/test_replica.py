"""The read replica (docs/operations.md): with OPENBILI_REPLICA_DATABASE_URL set, the usage page,
its summary and the export jobs read from it; writes, and reads a write depends on, stay on the
primary. Here the replica alias is a second connection to the test database (a mirror)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from tests.api.conftest import Caller
from usage import exports
from usage.models import UsageExport, UsageRecord

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])


@pytest.fixture(autouse=True)
def replica_closed():
    yield
    connections["replica"].close()  # its own session of the test database: not left to block dropping it


@pytest.fixture
def replica_reads(settings):
    settings.OPENBILI_REPLICA_READS = True


def usage_queries(context: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in context.captured_queries if "usage_usagerecord" in q["sql"]]


def a_row(caller: Caller, index: int = 0) -> UsageRecord:
    started = datetime.now(UTC) - timedelta(minutes=5 + index)
    return UsageRecord.objects.create(
        request_id=f"req_{'replica'}{index:025d}",
        trace_id=f"trace_{index:032x}",
        account=caller.account,
        endpoint="/v1/chat/completions",
        model_requested="gpt-5",
        status=200,
        billing_result="billed",
        started_at=started,
        finished_at=started + timedelta(seconds=1),
    )


def test_the_usage_page_and_summary_read_from_the_replica(replica_reads):
    alice = Caller("alice")
    row = a_row(alice)
    with (
        CaptureQueriesContext(connections["replica"]) as replica,
        CaptureQueriesContext(connections["default"]) as primary,
    ):
        page = alice.client.get(alice.url("/usage"))
        summary = alice.client.get(alice.url("/usage/summary"), {"bucket": "day"})
    assert page.status_code == 200 and [r["request_id"] for r in page.json()["results"]] == [row.request_id]
    assert summary.status_code == 200, summary.content
    assert usage_queries(replica), "the usage page did not read from the replica"
    assert not usage_queries(primary), usage_queries(primary)
    # Who the caller is and what they may see is the primary's (a read their access depends on).
    assert any("billing_membership" in q["sql"] or "personaltoken" in q["sql"] for q in primary.captured_queries)


def test_an_export_reads_its_rows_from_the_replica_and_writes_its_job_on_the_primary(replica_reads):
    alice = Caller("alice")
    rows = [a_row(alice, i) for i in range(3)]
    with CaptureQueriesContext(connections["replica"]) as replica:
        # The suite's tasks run eagerly (memory:// broker): the job runs as the export is created.
        export = exports.export_create(account=alice.account, user=alice.user, format="csv", filters={})
        exports.export_run(export.pk)  # and a redelivery changes nothing
    done = UsageExport.objects.get(pk=export.pk)
    assert done.status == UsageExport.Status.DONE and done.rows_done == len(rows)
    assert usage_queries(replica)
    assert not [q for q in replica.captured_queries if q["sql"].lstrip().upper().startswith(("UPDATE", "INSERT"))]


def test_without_a_replica_everything_reads_the_primary():
    alice = Caller("alice")
    a_row(alice)
    with CaptureQueriesContext(connections["replica"]) as replica:
        assert alice.client.get(alice.url("/usage")).status_code == 200
    assert replica.captured_queries == []
