"""API keys (CONTRACT §2): `sk-ob-` + ≥128 random bits, stored only as a hash, shown once."""

import hashlib
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from billing import keys, selectors, services
from billing.models import Account, ApiKey
from openbili.core.errors import InvalidRequest
from tests.factories import AccountFactory

pytestmark = pytest.mark.django_db

KEY_FORMAT = re.compile(r"sk-ob-[A-Za-z0-9_-]{43}")


@pytest.fixture
def created(account):
    return services.key_create(account=account, name="ci", models=["gpt-5", "gpt-4.1", "gpt-5"], rpm_limit=60)


# --- format and storage --------------------------------------------------------------------------


def test_key_format_is_sk_ob_and_43_url_safe_characters(created):
    key, secret = created

    assert KEY_FORMAT.fullmatch(secret)
    assert 43 * 6 >= 128  # 43 base64url characters carry 258 bits (32 random bytes)
    assert key.prefix == secret[:12] == keys.key_prefix(secret)
    assert key.prefix.startswith("sk-ob-")


def test_keys_are_random(account):
    secrets = {services.key_create(account=account, name=f"k{n}")[1] for n in range(20)}

    assert len(secrets) == 20
    assert len({secret[6:12] for secret in secrets}) > 1  # the prefix is not a constant


def test_the_database_stores_only_the_sha256_hash(created):
    key, secret = created

    assert key.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM billing_apikey WHERE id = %s", [key.pk])
        raw_row = cursor.fetchone()
    secret_part = secret[len(key.prefix) :]
    for value in raw_row:
        assert secret not in str(value)
        assert secret_part not in str(value)


def test_create_sorts_and_deduplicates_the_scope(created):
    key, _ = created

    assert (key.all_models, key.allowed_models) == (False, ["gpt-4.1", "gpt-5"])


# --- lookup --------------------------------------------------------------------------------------


def test_lookup_finds_the_key_in_one_query(created, django_assert_num_queries):
    key, secret = created

    with django_assert_num_queries(1):
        found = selectors.key_lookup(secret)
        assert found.account.name == key.account.name  # account came with it: no second query

    assert found.pk == key.pk


def test_lookup_of_a_well_formed_unknown_key_returns_none(created):
    _, secret = created
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")

    assert keys.key_well_formed(wrong)
    assert selectors.key_lookup(wrong) is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: "",
        lambda s: s[:12],  # the prefix alone
        lambda s: s[:-1],  # too short
        lambda s: s + "A",  # too long
        lambda s: s + "\n",  # a trailing newline must not pass the format check
        lambda s: " " + s,
        lambda s: s.replace("sk-ob-", "sk-xx-"),
        lambda s: s[:20] + "+" + s[21:],  # not URL-safe base64
        lambda s: s.upper(),  # different characters: unknown, or malformed
    ],
)
def test_lookup_of_a_malformed_or_wrong_key_returns_none(created, mangle, django_assert_max_num_queries):
    _, secret = created
    presented = mangle(secret)

    with django_assert_max_num_queries(0 if not keys.key_well_formed(presented) else 1):
        assert selectors.key_lookup(presented) is None


def test_the_format_check_matches_the_whole_string(created):
    _, secret = created

    assert keys.key_well_formed(secret) is True
    assert keys.key_well_formed(secret + "\n") is False
    assert keys.key_well_formed("x" + secret) is False


# --- usability -----------------------------------------------------------------------------------


def test_an_active_key_is_usable(created):
    _, secret = created

    assert selectors.key_is_usable(selectors.key_lookup(secret)) is True


def test_a_disabled_key_is_found_but_not_usable(created):
    key, secret = created

    services.key_disable(key=key)

    found = selectors.key_lookup(secret)
    assert found.status == "disabled"
    assert found.disabled_at is not None
    assert selectors.key_is_usable(found) is False


def test_expiry_is_checked_against_now(account):
    now = timezone.now()
    _, expired = services.key_create(account=account, name="old", expires_at=now - timedelta(seconds=1))
    _, later = services.key_create(account=account, name="later", expires_at=now + timedelta(hours=1))

    assert selectors.key_is_usable(selectors.key_lookup(expired)) is False
    assert selectors.key_is_usable(selectors.key_lookup(later)) is True
    assert selectors.key_is_usable(selectors.key_lookup(later), now=now + timedelta(hours=2)) is False


def test_keys_of_a_suspended_account_are_not_usable(created):
    key, secret = created

    Account.objects.filter(pk=key.account_id).update(status=Account.Status.SUSPENDED)

    found = selectors.key_lookup(secret)
    assert found.status == "active"
    assert selectors.key_is_usable(found) is False


# --- rotation ------------------------------------------------------------------------------------


def test_rotate_disables_the_old_key_and_keeps_its_settings(account):
    expires = timezone.now() + timedelta(days=30)
    old, old_secret = services.key_create(
        account=account, name="prod", models=["gpt-5"], rpm_limit=60, tpm_limit=100_000, expires_at=expires
    )

    new, new_secret = services.key_rotate(key=old)

    old.refresh_from_db()
    assert (old.status, old.replaced_by_id) == ("disabled", new.pk)
    assert old.disabled_at is not None
    assert new.pk != old.pk
    assert new_secret != old_secret
    assert new.status == "active"
    assert (new.account_id, new.name, new.all_models, new.allowed_models) == (account.pk, "prod", False, ["gpt-5"])
    assert (new.rpm_limit, new.tpm_limit, new.expires_at) == (60, 100_000, expires)
    assert selectors.key_lookup(new_secret).pk == new.pk
    assert selectors.key_is_usable(selectors.key_lookup(new_secret)) is True
    assert selectors.key_is_usable(selectors.key_lookup(old_secret)) is False


def test_rotate_keeps_an_all_models_scope(account):
    old, _ = services.key_create(account=account, name="all")

    new, _ = services.key_rotate(key=old)

    assert (new.all_models, new.allowed_models) == (True, [])


def test_rotate_never_widens_a_scope_restricted_to_no_model(account):
    old, _ = services.key_create(account=account, name="locked", models=["gpt-5"])
    ApiKey.objects.filter(pk=old.pk).update(allowed_models=[])  # an operator emptied the list
    old.refresh_from_db()

    new, _ = services.key_rotate(key=old)

    assert (new.all_models, new.allowed_models) == (False, [])
    assert selectors.key_allows_model(new, "gpt-5") is False


def test_rotating_a_rotated_key_is_refused_and_creates_nothing(created):
    key, _ = created
    services.key_rotate(key=key)
    count = ApiKey.objects.count()

    with pytest.raises(InvalidRequest):
        services.key_rotate(key=key)

    assert ApiKey.objects.count() == count


# --- scope ---------------------------------------------------------------------------------------


def test_an_all_models_key_allows_any_model(account):
    key, _ = services.key_create(account=account, name="all")

    assert key.all_models is True
    assert selectors.key_allows_model(key, "gpt-5") is True
    assert selectors.key_allows_model(key, "anything-else") is True


def test_a_scoped_key_allows_only_its_list(created):
    key, _ = created

    assert selectors.key_allows_model(key, "gpt-5") is True
    assert selectors.key_allows_model(key, "gpt-4.1") is True
    assert selectors.key_allows_model(key, "claude-opus-4-7") is False
    assert selectors.key_allows_model(key, "gpt-5-mini") is False  # exact names, not prefixes


def test_keys_belong_to_their_account_only():
    first, second = AccountFactory(), AccountFactory()
    _, secret = services.key_create(account=first, name="k")

    assert selectors.key_lookup(secret).account_id == first.pk
    assert not ApiKey.objects.filter(account=second).exists()
