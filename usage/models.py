"""One usage row per client request that presented a known key (CONTRACT §3)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from billing.models import MoneyField


class UsageRecord(models.Model):
    class BillingResult(models.TextChoices):
        PENDING = "pending", "Pending (request in flight)"
        BILLED = "billed", "Billed"
        FAILED_BUT_BILLABLE = "failed_but_billable", "Failed but billable"
        NOT_BILLED = "not_billed", "Not billed"

    class ErrorClass(models.TextChoices):
        INVALID_REQUEST = "invalid_request"
        AUTH_OR_KEY_SCOPE = "auth_or_key_scope"
        QUOTA_OR_RATE_LIMIT = "quota_or_rate_limit"
        MODEL_UNAVAILABLE = "model_unavailable"
        UPSTREAM_OR_PLATFORM_ERROR = "upstream_or_platform_error"
        STREAM_INTERRUPTED = "stream_interrupted"

    # Indexes are kept to what the usage page, the sweeper and operators search by: every extra one
    # is written on every request (see Meta and bench/README.md).
    request_id = models.CharField(max_length=64)
    trace_id = models.CharField(max_length=64)
    account = models.ForeignKey(
        "billing.Account",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="usage_records",
        db_index=False,  # usage_account_time
    )
    api_key = models.ForeignKey(
        "billing.ApiKey",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="usage_records",
        db_index=False,  # usage_key_time
    )
    key_prefix = models.CharField(max_length=16, blank=True)
    endpoint = models.CharField(max_length=64, help_text="e.g. /v1/chat/completions")
    model_requested = models.CharField(max_length=100, blank=True)
    route = models.ForeignKey(
        "billing.Route",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="usage_records",
        db_index=False,
    )
    provider = models.CharField(max_length=16, blank=True)
    upstream_model = models.CharField(max_length=120, blank=True)
    stream = models.BooleanField(default=False)
    status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="HTTP status sent to the client.")
    error_class = models.CharField(max_length=32, choices=ErrorClass.choices, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True, help_text="No prompt content, no secrets.")

    input_tokens = models.PositiveIntegerField(default=0, help_text="Uncached input tokens.")
    output_tokens = models.PositiveIntegerField(default=0, help_text="Output tokens, reasoning included.")
    cached_input_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    image_count = models.PositiveIntegerField(default=0)
    tokens_estimated = models.BooleanField(
        default=False, help_text="Upstream reported no usage; tokens estimated from what was streamed."
    )
    max_tokens_requested = models.PositiveIntegerField(null=True, blank=True)
    max_tokens_applied = models.PositiveIntegerField(null=True, blank=True)

    cost_usd = MoneyField(default=0)
    uncharged_usd = MoneyField(
        default=0,
        help_text="What the usage cost above the request's hold: a hold is settled for at most its amount, so "
        "this was not charged. Non-zero means the request's cost bound was wrong; it is never capped silently.",
    )
    billing_result = models.CharField(max_length=24, choices=BillingResult.choices, default=BillingResult.PENDING)
    price_snapshot = models.ForeignKey(
        "billing.PriceSnapshot",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="usage_records",
        db_index=False,  # snapshots are never deleted (append-only trigger)
    )
    # One row per hold in fact (a hold is taken for one request), but not a unique index: the
    # partitioned table's can only be unique with started_at in it (migration 0010).
    hold = models.ForeignKey(
        "billing.Hold",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="usage_records",
        db_index=False,  # usage_hold
    )
    output_reached_client = models.BooleanField(
        default=False, help_text="Whether output bytes reached the client before any failure."
    )
    client_disconnected_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField()
    first_byte_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.JSONField(
        default=list, blank=True, help_text="Upstream attempts under this trace: route, status, error, timing."
    )
    user_agent = models.CharField(max_length=200, blank=True)
    response_id = models.CharField(
        max_length=100,
        blank=True,
        default="",
        db_default="",
        help_text="The upstream's id of a stored Responses API response: how the gateway knows it is this "
        "account's (GET /v1/responses/{id}, previous_response_id) and which route holds it.",
    )

    # The table is partitioned by month of started_at (migration 0010, usage/partitions.py): its
    # primary key is (id, started_at) in the database, `id` alone here (unique in fact: identity),
    # and request_id is unique with started_at, which a CHECK binds to a time-carrying id
    # (usage/gateway/ids.py) so that request_id is unique by itself. Statements that find a row by
    # request_id also say its started_at, so PostgreSQL reads one partition (usage/gateway/sql.py).
    class Meta:
        indexes = [
            models.Index(fields=["trace_id"], name="usage_trace_id"),
            models.Index(fields=["hold"], name="usage_hold"),  # the sweeper's (SWEEP_HOLD)
            models.Index(fields=["account", "response_id"], name="usage_response_id", condition=~Q(response_id="")),
            models.Index(fields=["account", "-started_at"], name="usage_account_time"),
            models.Index(fields=["api_key", "-started_at"], name="usage_key_time"),
            # The usage page's filters (usage/api/filters.py) and the admin's list. Each covers only
            # columns written when the row is opened and never changed by the settle (model,
            # started_at, id), or changed only on the rare failing row (error_class), so the
            # settle of a successful request stays a HOT update (migration 0003).
            models.Index(fields=["-started_at", "-id"], name="usage_time"),
            models.Index(fields=["account", "model_requested", "-started_at"], name="usage_account_model_time"),
            models.Index(
                fields=["account", "-started_at"], name="usage_account_error_time", condition=~Q(error_class="")
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["request_id", "started_at"], name="usage_request_id_unique"),
            models.CheckConstraint(condition=Q(cost_usd__gte=0), name="usage_cost_gte_0"),
            models.CheckConstraint(
                condition=~Q(billing_result="not_billed") | Q(cost_usd=0), name="usage_not_billed_is_free"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model_requested} {self.status} {self.billing_result}"


class StoredImage(models.Model):
    """An image an upstream returned as bytes, kept for a while behind a capability URL
    (usage/images.py). The URL's token is never stored: only its SHA-256, so neither a database
    dump nor an operator can rebuild a working URL. The file's storage name is a separate random id."""

    account = models.ForeignKey(
        "billing.Account", on_delete=models.PROTECT, related_name="stored_images", db_index=False
    )  # stored_image_account_time
    request_id = models.CharField(max_length=64, help_text="The request that generated the image.")
    token_sha256 = models.BinaryField(max_length=32, help_text="SHA-256 of the URL's token (the token is not kept).")
    storage_name = models.CharField(max_length=255, help_text="Name in the openbili_images storage.")
    content_type = models.CharField(max_length=32)
    size_bytes = models.PositiveBigIntegerField()
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["expires_at"], name="stored_image_expires"),
            models.Index(fields=["request_id"], name="stored_image_request"),
            models.Index(fields=["account", "-created_at"], name="stored_image_account_time"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["token_sha256"], name="stored_image_token_unique"),
            models.CheckConstraint(
                condition=Q(expires_at__gt=models.F("created_at")), name="stored_image_expires_later"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.content_type} {self.size_bytes} B"


# --- the hourly roll-up of usage rows (usage/rollup.py) ---
#
# The usage summary and the OpenAI-shaped Usage and Costs answers add up whole hours from here
# and only the hours the roll-up has not reached from the rows themselves, so a 30-day summary
# reads a few thousand groups, not a million rows. The gateway never writes these tables: a
# periodic job recomputes closed hours from the rows, off the request path.


class UsageHour(models.Model):
    """The aggregates of one account's rows started in one UTC hour, per model, key and endpoint —
    the finest grouping the summaries offer. Column names are the aggregates' names
    (usage.selectors), so a read sums them under the same names."""

    hour = models.DateTimeField(help_text="Start of the UTC hour.")
    account = models.ForeignKey(
        "billing.Account", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+", db_index=False
    )
    api_key = models.ForeignKey(
        "billing.ApiKey", null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    key_prefix = models.CharField(max_length=16, blank=True)
    endpoint = models.CharField(max_length=64)
    model_requested = models.CharField(max_length=100, blank=True)

    requests = models.BigIntegerField()
    errors = models.BigIntegerField()
    error_invalid_request = models.BigIntegerField()
    error_auth_or_key_scope = models.BigIntegerField()
    error_quota_or_rate_limit = models.BigIntegerField()
    error_model_unavailable = models.BigIntegerField()
    error_upstream_or_platform_error = models.BigIntegerField()
    error_stream_interrupted = models.BigIntegerField()
    tokens_input = models.BigIntegerField()
    tokens_output = models.BigIntegerField()
    tokens_cached_input = models.BigIntegerField()
    tokens_cache_write = models.BigIntegerField()
    tokens_reasoning = models.BigIntegerField()
    image_count = models.BigIntegerField()
    cost_usd = MoneyField(max_digits=32)  # a sum of MoneyFields: as exact, room for more digits
    uncharged_usd = MoneyField(max_digits=32)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "hour", "model_requested", "api_key", "key_prefix", "endpoint"],
                name="usage_hour_unique",
                nulls_distinct=False,  # a deleted key's rows (api_key null) are one group per prefix
            ),
        ]
        indexes = [models.Index(fields=["hour"], name="usage_hour_hour")]  # the job's delete of an hour

    def __str__(self) -> str:
        return f"{self.account_id} {self.hour:%Y-%m-%d %H}:00 {self.model_requested} {self.endpoint}"


class UsageRollup(models.Model):
    """The roll-up's watermark: every hour before `through` is in UsageHour and final (one row)."""

    through = models.DateTimeField(null=True, help_text="Hours before this are rolled up; none yet if empty.")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"usage rolled up through {self.through}"


class UsageHourDirty(models.Model):
    """An hour whose rows changed after they could have been rolled up (a late outbox write:
    usage.gateway.outbox.MARK_DIRTY), to be recomputed by the next run."""

    hour = models.DateTimeField(primary_key=True)
    marked_at = models.DateTimeField(db_default=Now())  # the outbox marks it in raw SQL

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00"


# --- usage exports (usage/exports.py) ---


class UsageExport(models.Model):
    """One customer's export of their usage rows to an XLSX or CSV file, built by a Celery job.

    `filters` are the usage page's filters (usage/api/filters.py), as the job applies them: the
    time range's end is frozen when the export is created, so a retry writes the same rows. The
    file is `exports/<account>/<id>.<format>` in the `openbili_exports` storage — one name per
    export, so a retried or duplicated run replaces the file instead of adding one."""

    class Format(models.TextChoices):
        CSV = "csv", "CSV"
        XLSX = "xlsx", "XLSX"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey(
        "billing.Account", on_delete=models.PROTECT, related_name="usage_exports", db_index=False
    )  # usage_export_account_time
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    format = models.CharField(max_length=8, choices=Format.choices)
    filters = models.JSONField(default=dict, blank=True, help_text="The usage page's filters, as applied.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    rows_total = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Rows the filters matched when the run started (for progress)."
    )
    rows_done = models.PositiveBigIntegerField(default=0, help_text="Rows written so far by the current run.")
    file_name = models.CharField(max_length=255, blank=True, help_text="Name in the openbili_exports storage.")
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, help_text="Why the last run failed; no secrets.")
    attempts = models.PositiveIntegerField(default=0, help_text="Runs started (retries and redeliveries included).")
    lost_runs = models.PositiveSmallIntegerField(
        default=0, help_text="Runs in a row that stopped without finishing (a killed worker); reset by a retry."
    )
    run_token = models.UUIDField(null=True, blank=True, editable=False, help_text="The run that holds the job.")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="The current run's last progress.")
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="When the file is deleted.")

    class Meta:
        indexes = [
            models.Index(fields=["account", "-created_at"], name="usage_export_account_time"),
            models.Index(fields=["expires_at"], name="usage_export_expiry", condition=Q(status="done")),
        ]
        constraints = [
            models.CheckConstraint(
                condition=~Q(status="done") | (~Q(file_name="") & Q(expires_at__isnull=False)),
                name="usage_export_done_has_file",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.format} {self.status}"


# --- archived months of usage rows (usage/archive.py) ---


class UsageArchive(models.Model):
    """One calendar month (UTC) of usage rows, archived: its partition copied to a gzipped CSV in
    the `openbili_exports` storage, verified, then dropped from the database.

    What the month's rows added up to stays here, so that reconciliation still balances the
    ledger's charges of archived rows (billing/reconcile.py): per account its rows, their cost and
    its charged rows with the ledger's charges; per invoice the cost of its archived rows."""

    class Status(models.TextChoices):
        WRITTEN = "written", "Written (file saved, not yet verified)"
        VERIFIED = "verified", "Verified (file read back and checked; partition still there)"
        DROPPED = "dropped", "Dropped (partition removed from the database)"

    month = models.DateTimeField(unique=True, help_text="The month's first instant (UTC).")
    partition = models.CharField(max_length=63, help_text="The PostgreSQL partition the rows were in.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.WRITTEN)
    rows = models.PositiveBigIntegerField(help_text="Rows in the file (= rows the partition had).")
    file_name = models.CharField(max_length=255, help_text="Name in the openbili_exports storage (.csv.gz).")
    size_bytes = models.PositiveBigIntegerField(help_text="Size of the gzipped file.")
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the gzipped file, hex.")
    cost_usd = MoneyField(max_digits=32, help_text="Sum of the rows' cost_usd.")
    accounts = models.JSONField(
        default=dict,
        help_text='Per account id ("" for rows of no account): rows, cost_usd (sum), charged_rows and '
        "charged_usd (the ledger's usage charges of those rows). Decimals as strings.",
    )
    invoices = models.JSONField(
        default=dict, help_text="Per invoice id: the cost_usd of the archived rows whose charges it covers."
    )
    created_at = models.DateTimeField(default=timezone.now)
    verified_at = models.DateTimeField(null=True, blank=True)
    dropped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-month"]

    def __str__(self) -> str:
        return f"usage {self.month:%Y-%m}: {self.rows} rows, {self.status}"
