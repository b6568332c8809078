"""Indexes for the dashboard's usage page (issue 11) and the admin's usage list.

- usage_time (started_at DESC, id DESC): the admin's list sorts every account's rows so; nothing
  served it (a sort of the whole table per page).
- usage_account_model_time: the usage page filtered by model, newest first, however rare the model.
- usage_account_error_time, partial (error_class <> ''): the page filtered by error_class or
  error_code; only failing rows are in it, so it stays small.

All three cover columns the gateway writes when it opens a row and the settle never changes
(account, model_requested, started_at, id), or changes only on a failing row (error_class): the
settle of a successful request stays a HOT update (0003). Built CONCURRENTLY so that the gateway's
inserts are not blocked while a big table is indexed.
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [
        ("usage", "0006_usage_response_id"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="usagerecord",
            index=models.Index(fields=["-started_at", "-id"], name="usage_time"),
        ),
        AddIndexConcurrently(
            model_name="usagerecord",
            index=models.Index(fields=["account", "model_requested", "-started_at"], name="usage_account_model_time"),
        ),
        AddIndexConcurrently(
            model_name="usagerecord",
            index=models.Index(
                condition=~models.Q(error_class=""), fields=["account", "-started_at"], name="usage_account_error_time"
            ),
        ),
    ]
