"""An export whose job the broker lost (queued for long) is sent again by the hourly expiry job."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import AccountFactory
from usage import exports, tasks
from usage.models import UsageExport

pytestmark = pytest.mark.django_db


def test_an_export_queued_for_long_is_sent_again_and_a_fresh_one_is_not(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(tasks.export_run, "delay", lambda export_id: sent.append(export_id))
    account = AccountFactory()
    old = exports.export_create(account=account, user=None, format="csv", filters={})  # on_commit: not sent here
    fresh = exports.export_create(account=account, user=None, format="xlsx", filters={})
    UsageExport.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert sent == []
    exports.exports_expire()
    assert sent == [str(old.pk)]
    assert UsageExport.objects.get(pk=fresh.pk).status == UsageExport.Status.QUEUED
