"""Accounts, the append-only ledger, holds, API keys and the model catalog.

Money columns are NUMERIC(24, 12) (see billing/money.py). Ledger entries, price versions and price
snapshots are immutable: PostgreSQL triggers (migration 0002) refuse UPDATE and DELETE on them.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from billing import money


def MoneyField(**kwargs):
    kwargs.setdefault("max_digits", money.MONEY_DIGITS)
    kwargs.setdefault("decimal_places", money.MONEY_PLACES)
    return models.DecimalField(**kwargs)


def PriceField(help_text: str, **kwargs):
    kwargs.setdefault("default", 0)
    return models.DecimalField(
        max_digits=money.PRICE_DIGITS, decimal_places=money.PRICE_PLACES, help_text=help_text, **kwargs
    )


# --- accounts and ledger -----------------------------------------------------------------------


class Account(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    name = models.CharField(max_length=120, unique=True, help_text="Customer organisation name.")
    status = models.CharField(
        max_length=16,
        choices=Status.choices,
        default=Status.ACTIVE,
        help_text="A suspended account's keys are refused (401 invalid_api_key) before any upstream call.",
    )
    balance = MoneyField(
        default=0,
        editable=False,
        help_text="Prepaid USD balance. Always equals the sum of the account's ledger entries; "
        "change it only through a ledger entry (the 'Credit / adjust' action).",
    )
    reserved = MoneyField(
        default=0,
        editable=False,
        help_text="Sum of open holds: credit reserved by requests in flight.",
    )
    credit_limit = MoneyField(
        default=0,
        help_text="How far below zero the balance may go (USD, >= 0). 0 means strictly prepaid.",
    )
    rpm_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute for all the account's keys together; empty: none."
    )
    tpm_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tokens per minute for all the account's keys together; empty: none."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="accounts")

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(credit_limit__gte=0), name="account_credit_limit_gte_0"),
            models.CheckConstraint(condition=Q(reserved__gte=0), name="account_reserved_gte_0"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def available(self):
        """Credit a new request may reserve: balance + credit limit - open holds."""
        return self.balance + self.credit_limit - self.reserved


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.account} ({self.role})"


class LedgerEntry(models.Model):
    """One append-only movement of an account's balance. Corrections are new entries."""

    class Kind(models.TextChoices):
        TOPUP = "topup", "Top-up"
        ADJUSTMENT = "adjustment", "Adjustment"
        USAGE = "usage", "Usage charge"
        REFUND = "refund", "Refund"

    account = models.ForeignKey(
        Account,
        on_delete=models.PROTECT,
        related_name="ledger_entries",
        db_index=False,  # ledger_account_time
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = MoneyField(help_text="Signed USD: credits are positive, charges negative.")
    balance_after = MoneyField(help_text="The account balance right after this entry.")
    idempotency_key = models.CharField(
        max_length=200,
        help_text="Posting the same key twice returns the first entry instead of moving money again.",
    )
    reason = models.TextField(blank=True, help_text="Why: shown to operators and in the account's statement.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    hold = models.OneToOneField("Hold", null=True, blank=True, on_delete=models.PROTECT, related_name="entry")
    request_id = models.CharField(max_length=64, blank=True)
    ticket = models.ForeignKey(
        "tickets.Ticket",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="ledger_entries",
        help_text="The diagnostic ticket a refund was granted on.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "ledger entries"
        indexes = [models.Index(fields=["account", "-created_at"], name="ledger_account_time")]
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="ledger_idempotency_key_unique"),
            models.CheckConstraint(condition=~Q(kind="topup") | Q(amount__gt=0), name="ledger_topup_positive"),
            models.CheckConstraint(condition=~Q(kind="refund") | Q(amount__gt=0), name="ledger_refund_positive"),
            models.CheckConstraint(condition=~Q(kind="usage") | Q(amount__lt=0), name="ledger_usage_negative"),
            models.CheckConstraint(condition=~Q(amount=0), name="ledger_amount_nonzero"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} USD ({self.account_id})"


class Hold(models.Model):
    """Credit reserved by one request before it calls upstream; resolved exactly once."""

    class State(models.TextChoices):
        OPEN = "open", "Open"
        SETTLED = "settled", "Settled"
        RELEASED = "released", "Released"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="holds")
    api_key = models.ForeignKey(
        "ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    request_id = models.CharField(max_length=64)
    amount = MoneyField(help_text="Maximum possible cost of the request.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    settled_amount = MoneyField(null=True, blank=True, help_text="Charged on settle (<= amount).")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(help_text="After this the sweeper may release the hold.")
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # For the sweeper. Keyed on resolved_at, not state, on purpose: a predicate on state
            # would make PostgreSQL answer the settle's `id = ... AND state = 'open'` from this
            # index (a scan of every open hold) instead of the primary key.
            models.Index(fields=["expires_at"], condition=Q(resolved_at__isnull=True), name="hold_unresolved_expiry"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["request_id"], name="hold_request_id_unique"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="hold_amount_gte_0"),
            models.CheckConstraint(
                condition=Q(state="open", resolved_at__isnull=True) | (~Q(state="open") & Q(resolved_at__isnull=False)),
                name="hold_resolved_iff_not_open",
            ),
            models.CheckConstraint(
                condition=Q(settled_amount__isnull=True) | Q(settled_amount__lte=models.F("amount")),
                name="hold_settled_lte_amount",
            ),
        ]

    def __str__(self) -> str:
        return f"hold {self.request_id} {self.amount} ({self.state})"


# --- API keys ------------------------------------------------------------------------------------


class ApiKey(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DISABLED = "disabled", "Disabled"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=64)
    prefix = models.CharField(
        max_length=16, db_index=True, help_text="Non-secret leading part of the key, shown in usage and tickets."
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False, help_text="SHA-256 of the key.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    all_models = models.BooleanField(default=True, help_text="Scope: every visible model.")
    allowed_models = ArrayField(
        models.CharField(max_length=100),
        default=list,
        blank=True,
        help_text="Scope when 'all models' is off: the model ids this key may call.",
    )
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute; empty: none.")
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens per minute; empty: none.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    replaced_by = models.OneToOneField(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="replaces",
        help_text="Set when the key was rotated.",
    )
    deleted_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Deleted by its owner: disabled for good and hidden from the console and the API, but kept "
        "so that usage rows, holds and the audit trail still say which key they were.",
    )

    class Meta:
        verbose_name = "API key"
        indexes = [models.Index(fields=["account", "status"], name="apikey_account_status")]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"


class KeyAudit(models.Model):
    """One change to an API key: who, when, what (field → [old, new]); never a secret or a hash.

    Append-only (migration 0008's trigger): the only update allowed sets `key` or `actor` to null
    (their ON DELETE SET NULL, should a key or a user ever be deleted); `key_prefix` keeps saying
    which key it was.
    """

    class Action(models.TextChoices):
        CREATED = "created", "Created"
        UPDATED = "updated", "Updated"
        DISABLED = "disabled", "Disabled"
        ENABLED = "enabled", "Enabled"
        ROTATED = "rotated", "Rotated"
        DELETED = "deleted", "Deleted"

    account = models.ForeignKey(
        Account,
        on_delete=models.PROTECT,
        related_name="key_audits",
        db_index=False,  # keyaudit_account_time
    )
    key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="audits", db_index=False
    )  # keyaudit_key_time
    key_prefix = models.CharField(max_length=16, help_text="The key's non-secret prefix.")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        help_text="Who made the change; empty: an operator's tool or the system.",
    )
    action = models.CharField(max_length=16, choices=Action.choices)
    changes = models.JSONField(default=dict, blank=True, help_text="What changed: field → [old, new].")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "key audit entry"
        verbose_name_plural = "key audit entries"
        indexes = [
            models.Index(fields=["account", "-created_at", "-id"], name="keyaudit_account_time"),
            models.Index(fields=["key", "-created_at", "-id"], name="keyaudit_key_time"),
        ]

    def __str__(self) -> str:
        return f"{self.key_prefix}… {self.action} at {self.created_at:%Y-%m-%d %H:%M:%S}"


# --- catalog -------------------------------------------------------------------------------------


class CatalogModel(models.Model):
    class Kind(models.TextChoices):
        CHAT = "chat", "Chat"
        IMAGE = "image", "Image"

    name = models.CharField(max_length=100, unique=True, help_text="Model id customers send, e.g. gpt-5.")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CHAT)
    owned_by = models.CharField(max_length=64, blank=True, help_text="Vendor shown in /v1/models.")
    display_name = models.CharField(max_length=120, blank=True)
    context_window = models.PositiveIntegerField(help_text="Maximum input + output tokens.")
    max_output_tokens = models.PositiveIntegerField(
        help_text="Output limit: larger max_tokens values are clamped to it, never rejected."
    )
    enabled = models.BooleanField(default=True, help_text="Operator switch; off hides the model everywhere.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "model"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Route(models.Model):
    class Provider(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible"
        ANTHROPIC = "anthropic", "Anthropic"
        GEMINI = "gemini", "Gemini"

    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="routes")
    name = models.CharField(max_length=64, help_text="Label unique within the model, e.g. 'openai-primary'.")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    base_url = models.URLField(max_length=300, help_text="e.g. https://api.openai.com/v1, https://api.anthropic.com")
    upstream_model = models.CharField(max_length=120, help_text="Model name sent to the upstream.")
    secret_encrypted = models.TextField(
        blank=True, editable=False, help_text="Upstream API key, Fernet-encrypted at rest."
    )
    secret_env = models.CharField(
        max_length=100, blank=True, help_text="Or: name of the environment variable holding the upstream key."
    )
    priority = models.PositiveIntegerField(default=100, help_text="Lower is tried first.")
    active = models.BooleanField(default=True)
    timeout_seconds = models.PositiveIntegerField(default=600, help_text="Upstream read timeout.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model__name", "priority", "id"]
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="route_model_name_unique")]

    def __str__(self) -> str:
        return f"{self.model.name} → {self.provider}:{self.upstream_model} ({self.name})"


class PriceVersion(models.Model):
    """A model's prices from `effective_from` on. Never edited: a change is a new version."""

    model = models.ForeignKey(CatalogModel, on_delete=models.PROTECT, related_name="price_versions")
    input_per_mtok = PriceField("USD per 1M uncached input tokens.")
    output_per_mtok = PriceField("USD per 1M output tokens (reasoning included).")
    cached_input_per_mtok = PriceField("USD per 1M cached input tokens (cache reads).")
    cache_write_per_mtok = PriceField("USD per 1M cache-write input tokens.")
    per_image = PriceField("USD per generated image.")
    per_request = PriceField("USD per request.")
    effective_from = models.DateTimeField(help_text="Requests that start at or after this time use it.")
    note = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    PRICE_FIELDS = (
        "input_per_mtok",
        "output_per_mtok",
        "cached_input_per_mtok",
        "cache_write_per_mtok",
        "per_image",
        "per_request",
    )

    class Meta:
        ordering = ["model__name", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="price_model_effective_unique"),
            models.CheckConstraint(
                condition=Q(input_per_mtok__gte=0)
                & Q(output_per_mtok__gte=0)
                & Q(cached_input_per_mtok__gte=0)
                & Q(cache_write_per_mtok__gte=0)
                & Q(per_image__gte=0)
                & Q(per_request__gte=0),
                name="price_nonnegative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} prices from {self.effective_from:%Y-%m-%d %H:%M}"

    def prices(self) -> money.Prices:
        return money.Prices(**{f: getattr(self, f) for f in self.PRICE_FIELDS})


class PriceSnapshot(models.Model):
    """Immutable, de-duplicated prices a request was billed with. Usage rows reference it."""

    digest = models.CharField(max_length=64, unique=True, editable=False)
    model_name = models.CharField(max_length=100)
    currency = models.CharField(max_length=3, default="USD")
    price_version = models.ForeignKey(PriceVersion, on_delete=models.PROTECT, related_name="snapshots")
    input_per_mtok = PriceField("USD per 1M uncached input tokens.")
    output_per_mtok = PriceField("USD per 1M output tokens.")
    cached_input_per_mtok = PriceField("USD per 1M cached input tokens.")
    cache_write_per_mtok = PriceField("USD per 1M cache-write tokens.")
    per_image = PriceField("USD per image.")
    per_request = PriceField("USD per request.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.model_name} snapshot {self.digest[:10]}"

    def prices(self) -> money.Prices:
        return money.Prices(**{f: getattr(self, f) for f in PriceVersion.PRICE_FIELDS})

    def as_dict(self) -> dict[str, object]:
        """The no-secret JSON form shown in usage rows, exports and tickets."""
        data: dict[str, object] = {"id": self.pk, "model": self.model_name, "currency": self.currency}
        data |= {f: f"{getattr(self, f):f}" for f in PriceVersion.PRICE_FIELDS}  # plain digits: never 0E-10
        return data


class Probe(models.Model):
    """Outcome of one health check of a route; the latest one decides visibility."""

    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="probes")
    ok = models.BooleanField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, help_text="No secrets: upstream error summary.")
    checked_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-checked_at"]
        indexes = [models.Index(fields=["route", "-checked_at"], name="probe_route_latest")]

    def __str__(self) -> str:
        return f"{'OK' if self.ok else 'FAIL'} {self.route_id} at {self.checked_at:%Y-%m-%d %H:%M:%S}"


# --- invoices ------------------------------------------------------------------------------------


class Invoice(models.Model):
    """One account's statement for one calendar month (UTC), final when written (billing/invoices.py).

    It covers ledger entries, not time: every entry of the account written before the month's end
    that no earlier invoice covered (InvoiceEntry), so an entry committed late — a request still in
    flight at midnight settles after it — goes to the next invoice, never lost, never counted twice.
    Invoices, their lines and their coverage are append-only (database triggers, migration 0010).
    """

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="invoices", db_index=False)
    number = models.CharField(max_length=32, unique=True, help_text="OB-YYYYMM-<account id>.")
    period_start = models.DateTimeField(help_text="The month's first instant (UTC).")
    period_end = models.DateTimeField(help_text="The next month's first instant (UTC), exclusive.")
    currency = models.CharField(max_length=3, default="USD")
    opening_balance = MoneyField(help_text="The closing balance of the account's previous invoice (0 for its first).")
    topups = MoneyField(default=0)
    refunds = MoneyField(default=0)
    adjustments = MoneyField(default=0)
    usage_exact = MoneyField(default=0, help_text="Usage charged, exact: the sum of the lines' costs.")
    total = MoneyField(default=0, help_text="Usage charged: the sum of the lines' amounts, each rounded to the cent.")
    closing_balance = MoneyField(help_text="opening + top-ups + refunds + adjustments - usage (exact).")
    entry_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "period_start"], name="invoice_account_period")]
        ordering = ["-period_start", "account_id"]

    def __str__(self) -> str:
        return self.number


class InvoiceLine(models.Model):
    """Usage of one model and endpoint in the invoice, one line per billing result (billed, and
    failed_but_billable on a line of its own)."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="lines")
    model = models.CharField(max_length=128)
    endpoint = models.CharField(max_length=64)
    billing_result = models.CharField(max_length=32)
    requests = models.PositiveIntegerField()
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    image_count = models.BigIntegerField(default=0)
    cost = MoneyField(help_text="Exact: the sum of the ledger's charges for these requests.")
    amount = MoneyField(help_text="cost rounded to the cent, once (billing.money.to_cents: half-even).")
    price_snapshot_ids = ArrayField(models.BigIntegerField(), default=list, help_text="The price snapshots used.")

    class Meta:
        ordering = ["model", "endpoint", "billing_result"]

    def __str__(self) -> str:
        return f"{self.model} {self.endpoint} {self.billing_result}"


class InvoiceEntry(models.Model):
    """A ledger entry covered by an invoice: each entry by one invoice at most."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="+", db_index=False)
    entry = models.OneToOneField(LedgerEntry, on_delete=models.PROTECT, related_name="+", primary_key=True)

    class Meta:
        indexes = [models.Index(fields=["invoice"], name="invoice_entry_invoice")]
        verbose_name_plural = "invoice entries"

    def __str__(self) -> str:
        return f"entry {self.entry_id} in invoice {self.invoice_id}"
