"""Usage exports through the dashboard API: members create, follow and download their account's
exports; another account's are 404 whatever the id; bad input is a 400 naming each field and
writes nothing; a file is downloadable only once done and not after it expired (410)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import Membership
from tests.api.conftest import Caller
from tests.api.test_auth import assert_error
from tests.exports.conftest import T1, expected, iso, read_csv, read_xlsx, totals
from usage import exports
from usage.models import UsageExport, UsageRecord

pytestmark = pytest.mark.django_db


@pytest.fixture
def running_jobs(django_capture_on_commit_callbacks):
    """Run the jobs queued on commit, as the embedded run command does (no broker: eager tasks)."""
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        yield callbacks


def create(caller: Caller, **body):
    return caller.client.post(caller.url("/exports"), body, format="json")


def test_a_member_exports_follows_and_downloads(dataset, export_dir, django_capture_on_commit_callbacks):
    member = dataset.owner
    assert Membership.objects.get(user=member.user).role == "member"
    with django_capture_on_commit_callbacks(execute=True):
        response = create(member, format="csv", model="gpt-5", stream=True, status=200)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued" and body["format"] == "csv" and body["download_url"] is None
    assert body["filters"] == {"model": "gpt-5", "stream": True, "status": 200, "started_before": body["created_at"]}
    assert body["created_by"] == member.user.username

    detail = member.client.get(member.url(f"/exports/{body['id']}"))
    assert detail.status_code == 200, detail.content
    done = detail.json()
    wanted = [r for r in dataset.rows if r.model_requested == "gpt-5" and r.stream and r.status == 200]
    assert done["status"] == "done" and done["progress"] == 1.0 and done["error"] == ""
    assert done["row_count"] == done["rows_done"] == done["rows_total"] == len(wanted)
    assert done["download_url"] == f"/api/v1/accounts/{member.account.pk}/exports/{body['id']}/download"
    assert done["expires_at"] is not None and done["attempts"] == 1

    download = member.client.get(done["download_url"])
    assert download.status_code == 200
    assert download["Content-Type"] == "text/csv; charset=utf-8"
    assert download["Content-Disposition"].startswith('attachment; filename="openbili-usage-')
    assert download["Cache-Control"] == "private, no-store"
    data = b"".join(download.streaming_content)
    assert int(download["Content-Length"]) == len(data) == done["size_bytes"]
    header, rows = read_csv(data)
    assert header == list(exports.HEADER)
    assert [r["request_id"] for r in rows] == [r.request_id for r in wanted]
    assert totals(rows)["cost_usd"] == sum(
        r.cost_usd for r in UsageRecord.objects.filter(pk__in=[w.pk for w in wanted])
    )


def test_an_xlsx_download_whatever_the_client_accepts(dataset, export_dir, running_jobs):
    created = create(dataset.owner, format="xlsx", started_after=iso(T1 + timedelta(minutes=30)))
    assert created.status_code == 201, created.content
    running_jobs.clear()
    export = UsageExport.objects.get()
    exports.export_run(export.pk)
    url = dataset.owner.url(f"/exports/{export.pk}/download")
    for accept in ("*/*", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "text/csv"):
        download = dataset.owner.client.get(url, HTTP_ACCEPT=accept)
        assert download.status_code == 200, download.content
        assert download["Content-Type"] == exports.CONTENT_TYPES["xlsx"]
        assert download["Content-Disposition"].endswith('.xlsx"')
    _, rows = read_xlsx(b"".join(download.streaming_content))
    names = {dataset.route.pk: dataset.route.name}
    assert [r["request_id"] for r in rows] == [r.request_id for r in dataset.rows[30:]]
    assert rows[0]["cost_usd"] == expected(dataset.rows[30], names)["cost_usd"]


def test_the_list_is_newest_first_and_paginated(dataset, export_dir):
    made = [create(dataset.owner, format=fmt).json()["id"] for fmt in ("csv", "xlsx", "csv")]
    listed = dataset.owner.client.get(dataset.owner.url("/exports"), {"page_size": 2})
    assert listed.status_code == 200, listed.content
    page = listed.json()
    assert [e["id"] for e in page["results"]] == made[::-1][:2]
    rest = dataset.owner.client.get(page["next"]).json()
    assert [e["id"] for e in rest["results"]] == made[:1]
    assert_error(dataset.owner.client.get(dataset.owner.url("/exports"), {"status": "done"}), 400, "invalid_request")


def test_another_accounts_export_is_404_everywhere(dataset, export_dir):
    theirs = exports.export_run(
        exports.export_create(account=dataset.other.account, user=None, format="csv", filters={}).pk
    )
    me = dataset.owner
    for tail in ("", "/download"):
        assert_error(me.client.get(me.url(f"/exports/{theirs.pk}{tail}")), 404, "not_found")
        # nor through their account's URL
        other_url = f"/api/v1/accounts/{dataset.other.account.pk}/exports/{theirs.pk}{tail}"
        assert_error(me.client.get(other_url), 404, "not_found")
    assert_error(me.client.post(me.url(f"/exports/{theirs.pk}/retry")), 404, "not_found")
    assert_error(me.client.get(f"/api/v1/accounts/{dataset.other.account.pk}/exports"), 404, "not_found")
    assert_error(me.client.get(me.url("/exports/not-a-uuid")), 404, "not_found")
    mine = create(me, format="csv").json()["id"]
    assert [e["id"] for e in me.client.get(me.url("/exports")).json()["results"]] == [mine]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"format": "pdf"}, {"format"}),
        ({}, {"format"}),
        ({"format": "csv", "started_after": "yesterday"}, {"started_after"}),
        ({"format": "csv", "started_before": "2026-02-30T00:00:00Z"}, {"started_before"}),
        ({"format": "csv", "started_after": "0001-01-01T00:00:00+05:00"}, {"started_after"}),
        ({"format": "csv", "status": "ok"}, {"status"}),
        ({"format": "csv", "status": 99}, {"status"}),
        ({"format": "csv", "api_key": 0}, {"api_key"}),
        ({"format": "csv", "error_class": "bad_luck"}, {"error_class"}),
        ({"format": "csv", "billing_result": "free"}, {"billing_result"}),
        ({"format": "csv", "stream": "maybe"}, {"stream"}),
        ({"format": "csv", "model": ["gpt-5"]}, {"model"}),
        ({"format": "csv", "colour": "blue", "shape": 1}, {"colour", "shape"}),
        (
            {"format": "xlsx", "started_after": iso(T1), "started_before": iso(T1 - timedelta(days=1))},
            {"started_after"},
        ),
        ({"format": "xlsx", "started_after": iso(timezone.now() + timedelta(days=1))}, {"started_after"}),
    ],
)
def test_bad_input_is_a_400_naming_each_field_and_writes_nothing(alice, body, fields):
    assert_error(create(alice, **body), 400, "invalid_request", fields)
    assert not UsageExport.objects.exists()


def test_a_body_that_is_not_a_json_object(alice):
    response = alice.client.post(alice.url("/exports"), ["csv"], format="json")
    assert_error(response, 400, "invalid_request")
    form = alice.client.post(alice.url("/exports"), {"format": "csv"})  # multipart: not accepted
    assert_error(form, 415, "unsupported_media_type")
    assert not UsageExport.objects.exists()


def test_download_before_done_is_409_and_after_expiry_410(dataset, export_dir):
    me = dataset.owner
    export_id = create(me, format="csv").json()["id"]
    url = me.url(f"/exports/{export_id}/download")
    assert_error(me.client.get(url), 409, "export_not_ready")
    exports.export_run(export_id)
    assert me.client.get(url).status_code == 200
    UsageExport.objects.filter(pk=export_id).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert exports.exports_expire() == 1
    assert_error(me.client.get(url), 410, "export_expired")
    detail = me.client.get(me.url(f"/exports/{export_id}")).json()
    assert detail["status"] == "expired" and detail["download_url"] is None and detail["row_count"] is None


def test_retry_requeues_failed_or_expired_exports_only(dataset, export_dir, django_capture_on_commit_callbacks):
    me = dataset.owner
    export_id = create(me, format="csv").json()["id"]
    retry = me.url(f"/exports/{export_id}/retry")
    assert_error(me.client.post(retry), 409, "export_not_retryable")  # queued
    exports.export_run(export_id)
    assert_error(me.client.post(retry), 409, "export_not_retryable")  # done
    UsageExport.objects.filter(pk=export_id).update(status="failed", error="boom", file_name="", expires_at=None)
    with django_capture_on_commit_callbacks(execute=True):
        response = me.client.post(retry)
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "queued" and response.json()["error"] == ""
    again = me.client.get(me.url(f"/exports/{export_id}")).json()
    assert again["status"] == "done" and again["attempts"] == 2


def test_at_most_five_at_once_then_429_with_retry_after(alice):
    for _ in range(exports.MAX_ACTIVE):
        assert create(alice, format="csv").status_code == 201
    refused = create(alice, format="xlsx")
    assert_error(refused, 429, "too_many_exports")
    assert refused["Retry-After"] == "30"
    assert UsageExport.objects.count() == exports.MAX_ACTIVE


def test_not_signed_in_is_401(alice):
    alice.client.credentials()
    assert_error(alice.client.get(alice.url("/exports")), 401, "not_authenticated")
    assert_error(create(alice, format="csv"), 401, "not_authenticated")
