"""Migration 0002: ledger entries, price versions and price snapshots refuse UPDATE and DELETE in the
database itself (django.db.IntegrityError, SQLSTATE 23000), whatever path the write takes."""

from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from psycopg import errors as pg_errors

from billing import services
from billing.models import LedgerEntry, PriceSnapshot, PriceVersion
from tests.factories import CatalogModelFactory

pytestmark = pytest.mark.django_db


def refused(action) -> IntegrityError:
    """Run a write that the trigger must refuse; the savepoint keeps the test transaction usable."""
    with pytest.raises(IntegrityError) as caught, transaction.atomic():
        action()
    assert isinstance(caught.value.__cause__, pg_errors.IntegrityConstraintViolation)
    assert "append-only" in str(caught.value)
    return caught.value


def row_of(model, pk) -> dict:
    return model.objects.filter(pk=pk).values().get()


@pytest.fixture
def entry(account):
    return services.ledger_post(account_id=account.pk, kind="topup", amount="5", idempotency_key="pay:1")


@pytest.fixture
def published(db):
    model = CatalogModelFactory(name="append-only-model")
    version, _ = services.price_version_publish(model=model, prices={"input_per_mtok": Decimal("2.5")})
    return version, PriceSnapshot.objects.get(price_version=version)


def test_ledger_entry_queryset_update_is_refused_and_changes_nothing(entry):
    before = row_of(LedgerEntry, entry.pk)

    refused(lambda: LedgerEntry.objects.filter(pk=entry.pk).update(amount=Decimal("500")))

    assert row_of(LedgerEntry, entry.pk) == before


def test_ledger_entry_save_of_an_existing_row_is_refused(entry):
    entry.reason = "edited"

    refused(lambda: entry.save(update_fields=["reason"]))

    assert LedgerEntry.objects.get(pk=entry.pk).reason == ""


def test_ledger_entry_delete_is_refused_and_changes_nothing(account, entry):
    count = LedgerEntry.objects.filter(account=account).count()

    refused(lambda: LedgerEntry.objects.filter(pk=entry.pk).delete())
    refused(lambda: entry.delete())

    assert LedgerEntry.objects.filter(account=account).count() == count == 2
    account.refresh_from_db()
    assert account.balance == Decimal("105")


def test_raw_sql_update_of_the_ledger_is_refused(entry):
    def raw_update():
        with connection.cursor() as cursor:
            cursor.execute("UPDATE billing_ledgerentry SET amount = 0.01 WHERE id = %s", [entry.pk])

    refused(raw_update)

    assert LedgerEntry.objects.get(pk=entry.pk).amount == Decimal("5")


def test_price_version_update_is_refused_and_changes_nothing(published):
    version, _ = published
    before = row_of(PriceVersion, version.pk)

    refused(lambda: PriceVersion.objects.filter(pk=version.pk).update(input_per_mtok=Decimal("0.01")))
    refused(lambda: PriceVersion.objects.filter(pk=version.pk).update(effective_from=timezone.now()))

    assert row_of(PriceVersion, version.pk) == before


def test_price_version_delete_is_refused_by_the_database(db):
    # A version without a snapshot: no PROTECT foreign key stops the delete before the trigger.
    version = PriceVersion.objects.create(
        model=CatalogModelFactory(name="bare-version-model"), input_per_mtok=Decimal(1), effective_from=timezone.now()
    )

    refused(lambda: PriceVersion.objects.filter(pk=version.pk).delete())

    assert PriceVersion.objects.filter(pk=version.pk).exists()


def test_price_snapshot_update_and_delete_are_refused_and_change_nothing(published):
    _, snapshot = published
    before = row_of(PriceSnapshot, snapshot.pk)

    refused(lambda: PriceSnapshot.objects.filter(pk=snapshot.pk).update(input_per_mtok=Decimal("0.01")))
    refused(lambda: PriceSnapshot.objects.filter(pk=snapshot.pk).delete())

    assert row_of(PriceSnapshot, snapshot.pk) == before
