"""Every write to accounts, the ledger, keys and the catalog goes through these functions."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing import crypto, keys, ledger, money
from billing.models import (
    Account,
    ApiKey,
    CatalogModel,
    KeyAudit,
    LedgerEntry,
    Membership,
    PriceSnapshot,
    PriceVersion,
    Probe,
    Route,
)
from openbili.core.errors import IdempotencyConflict, InsufficientBalance, InvalidRequest
from openbili.ops import metrics

# --- accounts and ledger -----------------------------------------------------------------------


@transaction.atomic
def account_create(
    *,
    name: str,
    owner=None,
    credit: Decimal | int | str = 0,
    credit_limit: Decimal | int | str = 0,
    actor=None,
) -> Account:
    """Create an account, its owner membership and (if any) the opening top-up entry."""
    account = Account.objects.create(name=name, credit_limit=money.usd(credit_limit))
    if owner is not None:
        Membership.objects.create(account=account, user=owner, role=Membership.Role.OWNER)
    credit = money.usd(credit)
    if credit:
        ledger_post(
            account_id=account.pk,
            kind=LedgerEntry.Kind.TOPUP,
            amount=credit,
            idempotency_key=f"opening:{account.pk}",
            reason="opening credit",
            actor=actor,
        )
        account.refresh_from_db()
    return account


_SIGN_RULES: dict[str, Callable[[Decimal], bool]] = {
    LedgerEntry.Kind.TOPUP: lambda a: a > 0,
    LedgerEntry.Kind.REFUND: lambda a: a > 0,
    LedgerEntry.Kind.ADJUSTMENT: lambda a: a != 0,
}


@transaction.atomic
def ledger_post(
    *,
    account_id: int,
    kind: str,
    amount: Decimal | int | str,
    idempotency_key: str,
    reason: str = "",
    actor=None,
    request_id: str = "",
    ticket_id: int | None = None,
) -> LedgerEntry:
    """Move an account's balance by one append-only entry (top-up, adjustment or refund).

    Idempotent: posting an idempotency key again returns the first entry. Usage charges are not
    posted here; they come only from settling a hold (billing/ledger.py).
    """
    amount = money.usd(amount)
    if kind not in _SIGN_RULES:
        raise InvalidRequest(f"ledger entries of kind {kind!r} cannot be posted directly", param="kind")
    if not _SIGN_RULES[kind](amount):
        raise InvalidRequest(f"a {kind} must be {'non-zero' if kind == 'adjustment' else 'positive'}", param="amount")
    if not idempotency_key:
        raise InvalidRequest("an idempotency key is required", param="idempotency_key")
    if idempotency_key.startswith("usage:"):  # reserved for settled holds (billing/ledger.py)
        raise InvalidRequest("idempotency keys starting with 'usage:' are reserved", param="idempotency_key")
    # The row lock serialises every balance change of this account, so the replay check below
    # sees any entry committed by a concurrent post of the same key.
    account = Account.objects.select_for_update().get(pk=account_id)
    existing = LedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
    if existing is not None:
        if existing.account_id != account_id or existing.amount != amount or existing.kind != kind:
            raise IdempotencyConflict()
        return existing
    account.balance += amount
    account.save(update_fields=["balance"])
    try:
        with transaction.atomic():
            return LedgerEntry.objects.create(
                account=account,
                kind=kind,
                amount=amount,
                balance_after=account.balance,
                idempotency_key=idempotency_key,
                reason=reason,
                created_by=actor,
                request_id=request_id,
                ticket_id=ticket_id,
            )
    except IntegrityError as exc:  # the same key, committed meanwhile for another account
        raise IdempotencyConflict() from exc


def hold_reserve(
    *,
    account_id: int,
    request_id: str,
    amount: Decimal,
    api_key_id: int | None = None,
    ttl_seconds: int | None = None,
) -> int:
    """Reserve `amount` for one request; returns the hold id or raises InsufficientBalance."""
    amount = money.usd(amount)
    if amount < 0:
        raise InvalidRequest("a hold cannot be negative", param="amount")
    params = ledger.reserve_params(
        account_id=account_id,
        api_key_id=api_key_id,
        request_id=request_id,
        amount=amount,
        ttl_seconds=ttl_seconds or settings.OPENBILI_HOLD_TTL_SECONDS,
    )
    with connection.cursor() as cursor:
        cursor.execute(ledger.RESERVE, params)
        row = cursor.fetchone()
    if row is None:
        raise InsufficientBalance()
    return row[0]


def hold_settle(*, hold_id: int, cost: Decimal) -> ledger.SettleResult:
    """Charge the actual cost (at most the held amount) and free the rest. Resolved at most once."""
    cost = money.usd(cost)
    if cost < 0:
        raise InvalidRequest("a cost cannot be negative", param="cost")
    with connection.cursor() as cursor:
        cursor.execute(ledger.SETTLE, {"hold_id": hold_id, "cost": cost})
        return ledger.settle_result(cursor.fetchone())


def hold_release(*, hold_id: int) -> ledger.SettleResult:
    return hold_settle(hold_id=hold_id, cost=Decimal(0))


# --- API keys ------------------------------------------------------------------------------------

# What an owner may change on a key, as the audit trail names it. Never the hash or the secret.
KEY_SETTINGS = ("name", "all_models", "allowed_models", "rpm_limit", "tpm_limit", "expires_at")


def _audit_value(value):
    return value.isoformat() if isinstance(value, datetime) else value


def _key_audit(*, key: ApiKey, action: str, actor=None, changes: dict | None = None) -> KeyAudit:
    """The audit entry of one change: `changes` is {field: (old, new)}, stored as JSON [old, new]."""
    return KeyAudit.objects.create(
        account_id=key.account_id,
        key=key,
        key_prefix=key.prefix,
        actor=actor,
        action=action,
        changes={field: [_audit_value(old), _audit_value(new)] for field, (old, new) in (changes or {}).items()},
    )


def _key_settings(key: ApiKey) -> dict:
    return {field: getattr(key, field) for field in KEY_SETTINGS}


def _key_locked(key: ApiKey) -> ApiKey:
    """The key's row, locked for the change, refusing a deleted key: every change of one key is
    serialised, so each audit entry's `old` values are what the change really replaced."""
    locked = ApiKey.objects.select_for_update().get(pk=key.pk)
    if locked.deleted_at is not None:
        raise InvalidRequest("this key was deleted", code="key_deleted", status=409, param="key")
    return locked


@transaction.atomic
def key_create(
    *,
    account: Account,
    name: str,
    models: list[str] | None = None,
    all_models: bool | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    expires_at: datetime | None = None,
    actor=None,
) -> tuple[ApiKey, str]:
    """Create a key; returns it with the full secret, which is never stored or shown again.

    The scope is every model when `models` is empty, unless `all_models=False` says none.
    """
    key, secret = _key_insert(
        account=account,
        name=name,
        all_models=not models if all_models is None else all_models,
        allowed_models=[] if all_models else sorted(set(models or [])),
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        expires_at=expires_at,
        actor=actor,
    )
    _key_audit(
        key=key,
        action=KeyAudit.Action.CREATED,
        actor=actor,
        changes={field: (None, value) for field, value in _key_settings(key).items()},
    )
    return key, secret


def _key_insert(
    *,
    account: Account,
    name: str,
    all_models: bool,
    allowed_models: list[str],
    rpm_limit: int | None,
    tpm_limit: int | None,
    expires_at: datetime | None,
    actor=None,
) -> tuple[ApiKey, str]:
    secret = keys.key_generate()
    key = ApiKey.objects.create(
        account=account,
        name=name,
        prefix=keys.key_prefix(secret),
        key_hash=keys.key_hash(secret),
        all_models=all_models,
        allowed_models=allowed_models,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        expires_at=expires_at,
        created_by=actor,
    )
    return key, secret


def _key_set_status(key: ApiKey, status: str, *, actor=None, action: str | None = None) -> bool:
    """Disable or re-enable a locked key, with its audit entry; False when it already was."""
    if key.status == status:
        return False
    if status == ApiKey.Status.ACTIVE and key.replaced_by_id is not None:
        # A rotated key stays off: the point of rotating is that the old secret never works again.
        raise InvalidRequest(
            "this key was rotated; use the key that replaced it", code="key_rotated", status=409, param="active"
        )
    old = key.status
    key.status = status
    key.disabled_at = timezone.now() if status == ApiKey.Status.DISABLED else None
    key.save(update_fields=["status", "disabled_at"])
    if action is None:
        action = KeyAudit.Action.DISABLED if status == ApiKey.Status.DISABLED else KeyAudit.Action.ENABLED
    _key_audit(key=key, action=action, actor=actor, changes={"status": (old, status)})
    return True


@transaction.atomic
def key_disable(*, key: ApiKey, actor=None) -> ApiKey:
    """Refuse the key from now on (the gateways' caches are told on commit). Idempotent."""
    key = _key_locked(key)
    _key_set_status(key, ApiKey.Status.DISABLED, actor=actor)
    return key


@transaction.atomic
def key_enable(*, key: ApiKey, actor=None) -> ApiKey:
    """Accept a disabled key again; a rotated key cannot be (409 key_rotated). Idempotent."""
    key = _key_locked(key)
    _key_set_status(key, ApiKey.Status.ACTIVE, actor=actor)
    return key


@transaction.atomic
def key_update(*, key: ApiKey, actor=None, **values) -> ApiKey:
    """Change a key's name, scope, limits, expiry and (`active`) status, with one audit entry for
    the settings that changed and one for a status change. Fields left out keep their value.

    Scope: `all_models=True` clears `allowed_models`; `allowed_models` alone restricts the key to
    that list (all_models off); `all_models=False` alone keeps the list, even an empty one (a key
    that may call no model).
    """
    unknown = set(values) - {*KEY_SETTINGS, "active"}
    if unknown:
        raise InvalidRequest(f"unknown key fields: {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
    if values.get("all_models") is True:
        if values.get("allowed_models"):
            raise InvalidRequest("must be empty when all_models is true", param="allowed_models")
        values["allowed_models"] = []
    elif "allowed_models" in values:
        values.setdefault("all_models", False)
    if "allowed_models" in values:
        values["allowed_models"] = sorted(set(values["allowed_models"]))
    active = values.pop("active", None)
    key = _key_locked(key)
    before = _key_settings(key)
    changes = {field: (before[field], value) for field, value in values.items() if before[field] != value}
    if changes:
        for field, (_, value) in changes.items():
            setattr(key, field, value)
        key.save(update_fields=list(changes))
        _key_audit(key=key, action=KeyAudit.Action.UPDATED, actor=actor, changes=changes)
    if active is not None:
        _key_set_status(key, ApiKey.Status.ACTIVE if active else ApiKey.Status.DISABLED, actor=actor)
    return key


@transaction.atomic
def key_rotate(*, key: ApiKey, actor=None) -> tuple[ApiKey, str]:
    """Replace a key by a new one with the same settings; the old one is disabled at once."""
    key = _key_locked(key)
    if key.replaced_by_id is not None:
        raise InvalidRequest("this key was already rotated", code="key_rotated", status=409, param="key")
    # The scope is copied as is: going through key_create's `models` would turn a key restricted
    # to no model (all_models off, empty list) into an all-models key.
    new_key, secret = _key_insert(
        account=key.account,
        name=key.name,
        all_models=key.all_models,
        allowed_models=list(key.allowed_models),
        rpm_limit=key.rpm_limit,
        tpm_limit=key.tpm_limit,
        expires_at=key.expires_at,
        actor=actor,
    )
    old_status = key.status
    key.status = ApiKey.Status.DISABLED
    key.disabled_at = key.disabled_at or timezone.now()
    key.replaced_by = new_key
    key.save(update_fields=["status", "disabled_at", "replaced_by"])
    rotated: dict = {"replaced_by": (None, new_key.pk)}
    if old_status != key.status:
        rotated["status"] = (old_status, key.status)
    _key_audit(key=key, action=KeyAudit.Action.ROTATED, actor=actor, changes=rotated)
    created = {field: (None, value) for field, value in _key_settings(new_key).items()}
    _key_audit(key=new_key, action=KeyAudit.Action.CREATED, actor=actor, changes=created | {"replaces": (None, key.pk)})
    return new_key, secret


@transaction.atomic
def key_delete(*, key: ApiKey, actor=None) -> ApiKey:
    """Delete a key for its owner: disabled for good and hidden, but the row stays.

    A soft delete, because usage rows and holds reference the key (ON DELETE SET NULL): a real
    DELETE would strip the key from the account's usage history, its per-key summaries and the
    audit trail. Deleting a deleted key changes nothing.
    """
    locked = ApiKey.objects.select_for_update().get(pk=key.pk)
    if locked.deleted_at is not None:
        return locked
    changes: dict = {}
    if locked.status != ApiKey.Status.DISABLED:
        changes["status"] = (locked.status, ApiKey.Status.DISABLED)
        locked.status = ApiKey.Status.DISABLED
        locked.disabled_at = timezone.now()
    locked.deleted_at = timezone.now()
    changes["deleted_at"] = (None, locked.deleted_at)
    locked.save(update_fields=["status", "disabled_at", "deleted_at"])
    _key_audit(key=locked, action=KeyAudit.Action.DELETED, actor=actor, changes=changes)
    return locked


# --- catalog -------------------------------------------------------------------------------------


def route_secret_set(*, route: Route, secret: str) -> Route:
    """Store an upstream secret encrypted; an empty string clears it."""
    route.secret_encrypted = crypto.encrypt(secret) if secret else ""
    route.save(update_fields=["secret_encrypted", "updated_at"])
    return route


def route_secret(route: Route) -> str:
    """The upstream secret: from the named env var if set, else the encrypted column. Never log it."""
    if route.secret_env:
        return os.environ.get(route.secret_env, "")
    if route.secret_encrypted:
        return crypto.decrypt(route.secret_encrypted)
    return ""


def _prices_of(values: dict) -> dict[str, Decimal]:
    unknown = set(values) - set(PriceVersion.PRICE_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown price fields: {', '.join(sorted(unknown))}", param="prices")
    prices = {field: money.usd(values.get(field, 0)) for field in PriceVersion.PRICE_FIELDS}
    if any(value < 0 for value in prices.values()):
        raise InvalidRequest("prices cannot be negative", param="prices")
    return prices


@transaction.atomic
def price_version_publish(
    *,
    model: CatalogModel,
    prices: dict,
    effective_from: datetime | None = None,
    note: str = "",
    actor=None,
) -> tuple[PriceVersion, bool]:
    """Publish new prices for a model. Identical to the newest version: nothing changes.

    Returns (version, created). Versions are never edited; requests already in flight keep the
    snapshot they froze at their start.
    """
    new_prices = _prices_of(prices)
    # Lock the model row so two publishers cannot both decide "changed" and race.
    CatalogModel.objects.select_for_update().filter(pk=model.pk).first()
    latest = PriceVersion.objects.filter(model=model).order_by("-effective_from").first()
    if latest is not None and {f: getattr(latest, f) for f in PriceVersion.PRICE_FIELDS} == new_prices:
        return latest, False
    version = PriceVersion.objects.create(
        model=model,
        effective_from=effective_from or timezone.now(),
        note=note,
        created_by=actor,
        **new_prices,
    )
    price_snapshot_for(version)
    return version, True


def _snapshot_digest(model_name: str, prices: dict[str, Decimal]) -> str:
    canonical = {"model": model_name, "currency": "USD"} | {
        field: format(value.normalize(), "f") for field, value in prices.items()
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def price_snapshot_for(version: PriceVersion) -> PriceSnapshot:
    """The immutable snapshot of a version's prices, shared by every version with equal prices."""
    prices = {field: getattr(version, field) for field in PriceVersion.PRICE_FIELDS}
    digest = _snapshot_digest(version.model.name, prices)
    existing = PriceSnapshot.objects.filter(digest=digest).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            return PriceSnapshot.objects.create(
                digest=digest, model_name=version.model.name, price_version=version, **prices
            )
    except IntegrityError:  # a concurrent publisher created it first
        return PriceSnapshot.objects.get(digest=digest)


def probe_record(
    *,
    route: Route,
    ok: bool,
    status_code: int | None = None,
    latency_ms: int | None = None,
    error: str = "",
) -> Probe:
    metrics.PROBES.labels(str(route.pk), route.provider, "ok" if ok else "failed").inc()
    return Probe.objects.create(
        route=route,
        ok=ok,
        status_code=status_code,
        latency_ms=latency_ms,
        error=error[:500],
        checked_at=timezone.now(),
    )
