"""Usage exports in the admin: read-only, searchable by id, and a retry action over the service
(failed or expired exports only)."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from usage import exports
from usage.models import UsageExport

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:usage_usageexport_changelist")


def test_exports_are_read_only_and_found_by_id(admin_client, admin_user, rf, dataset):
    export = exports.export_create(account=dataset.owner.account, user=None, format="csv", filters={})
    model_admin = admin.site._registry[UsageExport]
    request = rf.get("/")
    request.user = admin_user
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, export)
    assert not model_admin.has_delete_permission(request, export)
    page = admin_client.get(reverse("admin:usage_usageexport_change", args=[export.pk]))
    assert page.status_code == 200 and dataset.owner.account.name in page.content.decode()
    found = admin_client.get(CHANGELIST, {"q": str(export.pk)})
    assert list(found.context["cl"].result_list) == [export]
    assert admin_client.get(CHANGELIST, {"q": dataset.owner.account.name}).status_code == 200


def test_the_retry_action_queues_failed_exports_and_leaves_the_others(
    admin_client, dataset, export_dir, django_capture_on_commit_callbacks
):
    failed = exports.export_create(account=dataset.owner.account, user=None, format="csv", filters={})
    UsageExport.objects.filter(pk=failed.pk).update(status="failed", error="The file could not be saved.")
    queued = exports.export_create(account=dataset.owner.account, user=None, format="csv", filters={})
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            CHANGELIST,
            {"action": "retry_exports", ACTION_CHECKBOX_NAME: [str(failed.pk), str(queued.pk)]},
            follow=True,
        )
    messages = [str(m) for m in response.context["messages"]]
    assert "1 export(s) queued again." in messages
    assert any("1 export(s) not retried" in m for m in messages)
    failed.refresh_from_db()
    assert failed.status == "done" and failed.attempts == 1  # rebuilt by the eager job
    assert UsageExport.objects.get(pk=queued.pk).status == "queued"
