"""Setup commands: account_create, key_create, catalog_load (issue "Foundation" §6)."""

from __future__ import annotations

import json
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from billing import keys, money, selectors, services
from billing.catalog_file import DEFAULT_CATALOG_PATH
from billing.models import Account, ApiKey, CatalogModel, LedgerEntry, PriceSnapshot, PriceVersion, Route
from tests.factories import AccountFactory, CatalogModelFactory

pytestmark = pytest.mark.django_db

LAUNCH_MODELS = {
    "claude-opus-4-7",
    "claude-sonnet-4-6",
    "gpt-5",
    "gpt-5.4",
    "gpt-4.1",
    "gemini-3-pro-image-preview",
    "gemini-3.1-flash-image-preview",
    "gpt-image-2",
    "gpt-image-1.5",
}


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def catalog_copy(tmp_path: Path, old: str = "", new: str = "") -> Path:
    """The launch catalog with one exact, unique text replaced."""
    text = DEFAULT_CATALOG_PATH.read_text()
    if old:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return path


def catalog_counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in (CatalogModel, Route, PriceVersion, PriceSnapshot)}


# --- account_create ------------------------------------------------------------------------------


def test_account_create_with_credit_posts_one_opening_topup():
    out, _ = run("account_create", "Acme", "--owner-email", "ops@acme.test", "--credit", "25.00")

    account = Account.objects.get(name="Acme")
    assert f"account {account.pk} 'Acme'" in out
    assert "balance: 25.00 USD" in out
    assert account.balance == Decimal("25.00")
    entry = LedgerEntry.objects.get(account=account)
    assert (entry.kind, entry.amount, entry.balance_after) == ("topup", Decimal("25.00"), Decimal("25.00"))
    assert selectors.ledger_sum(account_id=account.pk) == account.balance
    owner = get_user_model().objects.get(email="ops@acme.test")
    assert not owner.has_usable_password()
    assert account.memberships.get().user == owner


def test_account_create_without_credit_writes_no_ledger_entry_and_reuses_owner():
    owner = get_user_model().objects.create(username="ops", email="ops@acme.test")
    run("account_create", "Acme", "--owner-email", "OPS@acme.test", "--credit-limit", "5.5")

    account = Account.objects.get(name="Acme")
    assert account.balance == 0
    assert account.credit_limit == Decimal("5.5")
    assert not LedgerEntry.objects.exists()
    assert account.memberships.get().user == owner
    assert get_user_model().objects.count() == 1


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--credit", "1e400"),
        ("--credit", "nan"),
        ("--credit", "inf"),
        ("--credit", "-5"),
        ("--credit", "abc"),
        ("--credit", "0.0000000000001"),  # 13 places: more than a ledger amount holds
        ("--credit", "1000000000000"),  # does not fit NUMERIC(24, 12)
        ("--credit-limit", "-1"),
    ],
)
def test_account_create_refuses_bad_amounts_and_creates_nothing(option, value):
    with pytest.raises(CommandError, match=option):
        run("account_create", "Acme", option, value)
    assert not Account.objects.exists()
    assert not LedgerEntry.objects.exists()


def test_account_create_refuses_bad_owner_email_and_creates_nothing():
    with pytest.raises(CommandError, match="--owner-email"):
        run("account_create", "Acme", "--owner-email", "not-an-email", "--credit", "5")
    assert not Account.objects.exists()
    assert not get_user_model().objects.exists()


def test_account_create_existing_name_is_an_error_unless_if_missing():
    run("account_create", "Acme", "--credit", "10")

    with pytest.raises(CommandError, match="already exists"):
        run("account_create", "Acme", "--credit", "10")
    out, _ = run("account_create", "Acme", "--credit", "10", "--if-missing")

    account = Account.objects.get()
    assert "exists, unchanged" in out
    assert account.balance == Decimal("10")
    assert LedgerEntry.objects.count() == 1


# --- key_create ----------------------------------------------------------------------------------


def test_key_create_prints_a_working_secret_once_and_stores_only_its_hash():
    account = AccountFactory(name="Acme")
    CatalogModelFactory(name="gpt-5")
    CatalogModelFactory(name="gpt-4.1")

    out, err = run(
        "key_create", "--account", "Acme", "--name", "ci", "--models", "gpt-5, gpt-4.1",
        "--rpm", "60", "--tpm", "100000", "--expires-days", "90",
    )  # fmt: skip

    secret = out.splitlines()[0].removeprefix("key: ")
    assert keys.key_well_formed(secret)
    assert out.count(secret) == 1
    assert secret not in err
    key = selectors.key_lookup(secret)
    assert key is not None
    assert key.account == account
    assert f"prefix: {key.prefix}" in out
    assert "scope: gpt-4.1, gpt-5" in out
    assert (key.all_models, key.allowed_models) == (False, ["gpt-4.1", "gpt-5"])
    assert (key.rpm_limit, key.tpm_limit) == (60, 100000)
    assert key.expires_at is not None
    assert key.key_hash == keys.key_hash(secret)
    stored = ApiKey.objects.filter(pk=key.pk).values().get()
    assert secret not in {str(value) for value in stored.values()}
    assert selectors.key_allows_model(key, "gpt-5")
    assert not selectors.key_allows_model(key, "claude-opus-4-7")


def test_key_create_quiet_prints_only_the_secret_and_accepts_an_account_id():
    account = AccountFactory(name="Acme")

    out, _ = run("key_create", "--account", str(account.pk), "--name", "script", "--quiet")

    assert out.count("\n") == 1
    key = selectors.key_lookup(out.strip())
    assert key is not None
    assert key.account == account
    assert key.all_models


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--account", "Nobody", "--name", "x"], "no account"),
        (["--account", "Acme", "--name", "x", "--models", "gpt-6"], "unknown model"),
        (["--account", "Acme", "--name", "x", "--models", ","], "empty"),
        (["--account", "Acme", "--name", " "], "--name"),
    ],
)
def test_key_create_refuses_bad_input_and_creates_no_key(args, message):
    AccountFactory(name="Acme")
    with pytest.raises(CommandError, match=message):
        run("key_create", *args)
    assert not ApiKey.objects.exists()


# --- catalog_load --------------------------------------------------------------------------------


def test_catalog_load_creates_the_launch_catalog():
    out, _ = run("catalog_load", str(DEFAULT_CATALOG_PATH))

    assert set(CatalogModel.objects.values_list("name", flat=True)) == LAUNCH_MODELS
    assert catalog_counts() == {"CatalogModel": 9, "Route": 9, "PriceVersion": 9, "PriceSnapshot": 9}
    assert "models: 9 created, 0 updated, 0 unchanged" in out
    assert "prices: 9 new versions" in out
    gpt5 = CatalogModel.objects.get(name="gpt-5")
    assert (gpt5.kind, gpt5.owned_by, gpt5.context_window, gpt5.max_output_tokens) == ("chat", "openai", 400000, 128000)
    price = selectors.price_current(gpt5)
    assert price.prices() == money.Prices(
        input_per_mtok=Decimal("1.25"), output_per_mtok=Decimal("10"), cached_input_per_mtok=Decimal("0.125")
    )
    opus = selectors.price_current(CatalogModel.objects.get(name="claude-opus-4-7"))
    assert (opus.cache_write_per_mtok, opus.cached_input_per_mtok) == (Decimal("6.25"), Decimal("0.5"))
    assert selectors.price_current(CatalogModel.objects.get(name="gpt-image-2")).per_image == Decimal("0.04")
    route = Route.objects.get(model__name="claude-sonnet-4-6")
    assert (route.provider, route.base_url, route.upstream_model) == (
        "anthropic",
        "https://api.anthropic.com",
        "claude-sonnet-4-6",
    )
    assert route.secret_env == "ANTHROPIC_API_KEY"
    assert route.secret_encrypted == ""  # secrets never come from the file
    assert set(Route.objects.values_list("provider", "secret_env")) == {
        ("openai", "OPENAI_API_KEY"),
        ("anthropic", "ANTHROPIC_API_KEY"),
        ("gemini", "GEMINI_API_KEY"),
    }
    assert set(CatalogModel.objects.filter(kind="image").values_list("name", flat=True)) == {
        "gemini-3-pro-image-preview",
        "gemini-3.1-flash-image-preview",
        "gpt-image-2",
        "gpt-image-1.5",
    }


def test_catalog_load_twice_changes_nothing_the_second_time():
    run("catalog_load", str(DEFAULT_CATALOG_PATH))
    before = catalog_counts()
    stamps = dict(Route.objects.values_list("pk", "updated_at"))

    out, _ = run("catalog_load", str(DEFAULT_CATALOG_PATH))

    assert catalog_counts() == before
    assert dict(Route.objects.values_list("pk", "updated_at")) == stamps
    assert "models: 0 created, 0 updated, 9 unchanged" in out
    assert "routes: 0 created, 0 updated, 9 unchanged" in out
    assert "prices: 0 new versions, 9 unchanged" in out
    assert "no changes" in out


def test_catalog_load_changed_price_publishes_exactly_one_new_version(tmp_path):
    run("catalog_load", str(DEFAULT_CATALOG_PATH))
    before = dict(PriceVersion.objects.values_list("model__name", "pk"))
    path = catalog_copy(
        tmp_path,
        'input_per_mtok = "2.00"\noutput_per_mtok = "8.00"',
        'input_per_mtok = "1.80"\noutput_per_mtok = "8.00"',
    )

    out, _ = run("catalog_load", str(path))

    assert "prices: 1 new versions (gpt-4.1), 8 unchanged" in out
    assert PriceVersion.objects.count() == 10
    assert PriceVersion.objects.filter(model__name="gpt-4.1").count() == 2
    assert set(PriceVersion.objects.exclude(model__name="gpt-4.1").values_list("pk", flat=True)) == {
        pk for name, pk in before.items() if name != "gpt-4.1"
    }
    assert selectors.price_current(CatalogModel.objects.get(name="gpt-4.1")).input_per_mtok == Decimal("1.80")
    assert PriceVersion.objects.get(pk=before["gpt-4.1"]).input_per_mtok == Decimal("2.00")  # never edited


def test_catalog_load_updates_model_and_route_fields_in_place(tmp_path):
    run("catalog_load", str(DEFAULT_CATALOG_PATH))
    route_pk = Route.objects.get(model__name="gpt-5").pk
    path = catalog_copy(
        tmp_path,
        'upstream_model = "gpt-5"\nsecret_env = "OPENAI_API_KEY"\npriority = 10',
        'upstream_model = "gpt-5-2025-08-07"\nsecret_env = "OPENAI_API_KEY"\npriority = 20',
    )

    out, _ = run("catalog_load", str(path))

    route = Route.objects.get(model__name="gpt-5")
    assert route.pk == route_pk
    assert (route.upstream_model, route.priority) == ("gpt-5-2025-08-07", 20)
    assert "routes: 0 created, 1 updated, 8 unchanged" in out
    assert PriceVersion.objects.count() == 9


def test_catalog_load_leaves_models_and_routes_not_in_the_file_alone_unless_asked():
    run("catalog_load", str(DEFAULT_CATALOG_PATH))
    gpt5 = CatalogModel.objects.get(name="gpt-5")
    extra = Route.objects.create(
        model=gpt5, name="azure", provider="openai", base_url="https://example.test/v1", upstream_model="gpt-5"
    )
    other = CatalogModelFactory(name="legacy-model")

    run("catalog_load", str(DEFAULT_CATALOG_PATH))
    extra.refresh_from_db()
    assert extra.active
    assert CatalogModel.objects.filter(pk=other.pk).exists()

    out, _ = run("catalog_load", str(DEFAULT_CATALOG_PATH), "--deactivate-missing")
    extra.refresh_from_db()
    assert not extra.active
    assert "1 deactivated" in out
    assert Route.objects.filter(active=True).count() == 9


def test_catalog_load_keeps_an_operator_switch_the_file_does_not_set():
    run("catalog_load", str(DEFAULT_CATALOG_PATH))
    CatalogModel.objects.filter(name="gpt-5").update(enabled=False)
    Route.objects.filter(model__name="gpt-4.1").update(active=False)

    run("catalog_load", str(DEFAULT_CATALOG_PATH))

    assert not CatalogModel.objects.get(name="gpt-5").enabled
    assert not Route.objects.get(model__name="gpt-4.1").active


GEMINI_SECRET_ENV = 'upstream_model = "gemini-3-pro-image-preview"\nsecret_env = "GEMINI_API_KEY"'


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ('input_per_mtok = "5.00"\noutput_per_mtok = "25.00"', 'input_per_mtok = 5.0\noutput_per_mtok = "25.00"',
         r"models\[0\]\(claude-opus-4-7\)\.prices\.input_per_mtok"),
        ('provider = "gemini"\nbase_url = "https://generativelanguage.googleapis.com"\nupstream_model = "gemini-3-pro',
         'provider = "vertex"\nbase_url = "https://generativelanguage.googleapis.com"\nupstream_model = "gemini-3-pro',
         r"models\[5\]\(gemini-3-pro-image-preview\)\.routes\[0\]\(gemini\)\.provider"),
        ('upstream_model = "gpt-4.1"\n', "", r"models\[4\]\(gpt-4\.1\)\.routes\[0\]\(openai\): missing required field"),
        ("context_window = 400000\nmax_output_tokens = 128000\n\n[models.prices]\ninput_per_mtok = \"1.25\"",
         "max_output_tokens = 128000\n\n[models.prices]\ninput_per_mtok = \"1.25\"",
         r"models\[2\]\(gpt-5\): missing required field 'context_window'"),
        ('per_image = "0.04"', 'per_image = "-0.04"', r"models\[7\]\(gpt-image-2\)\.prices\.per_image: .*negative"),
        ('per_image = "0.04"', 'per_image = "4e-2"', r"models\[7\]\(gpt-image-2\)\.prices\.per_image"),
        ('display_name = "GPT-5"', 'display_name = "GPT-5"\ncolour = "blue"',
         r"models\[2\]\(gpt-5\)\.colour: unknown field"),
        (GEMINI_SECRET_ENV, 'upstream_model = "gemini-3-pro-image-preview"\napi_key = "AIza-not-a-real-key"',
         r"routes\[0\]\(gemini\)\.api_key: secrets never go"),
        (GEMINI_SECRET_ENV, 'upstream_model = "gemini-3-pro-image-preview"\nsecret_env = "AIza-not-a-real-key"',
         r"routes\[0\]\(gemini\)\.secret_env: must be the NAME"),
        ('name = "gpt-image-1.5"', 'name = "gpt-image-2"', r"models\[8\]\(gpt-image-2\)\.name: .*listed twice"),
        ('base_url = "https://api.anthropic.com"\nupstream_model = "claude-opus',
         'base_url = "not a url"\nupstream_model = "claude-opus', r"models\[0\]\(claude-opus-4-7\)\.routes\[0\]"),
    ],
)  # fmt: skip
def test_catalog_load_refuses_a_bad_file_naming_the_entry_and_writes_nothing(tmp_path, old, new, where):
    path = catalog_copy(tmp_path, old, new)

    with pytest.raises(CommandError, match=where) as excinfo:
        run("catalog_load", str(path))

    assert "AIza" not in str(excinfo.value)  # a secret pasted into the file is never echoed
    assert catalog_counts() == {"CatalogModel": 0, "Route": 0, "PriceVersion": 0, "PriceSnapshot": 0}


def test_catalog_load_bad_file_leaves_a_loaded_catalog_unchanged(tmp_path):
    run("catalog_load", str(DEFAULT_CATALOG_PATH))
    before = catalog_counts()
    # The first model's price changes (valid), a later entry is bad: the valid part is not applied.
    text = DEFAULT_CATALOG_PATH.read_text().replace(
        'input_per_mtok = "5.00"\noutput_per_mtok = "25.00"', 'input_per_mtok = "4.00"\noutput_per_mtok = "25.00"'
    )
    path = tmp_path / "catalog.toml"
    path.write_text(text.replace('per_image = "0.034"', "per_image = 0.034"))  # fmt: skip

    with pytest.raises(CommandError, match=r"gpt-image-1\.5\)\.prices\.per_image"):
        run("catalog_load", str(path))

    assert catalog_counts() == before
    assert selectors.price_current(CatalogModel.objects.get(name="claude-opus-4-7")).input_per_mtok == Decimal("5")


@pytest.mark.parametrize("content", ["models = [ {", "", 'other = "x"', "[[models]]\nname = 3"])
def test_catalog_load_refuses_unreadable_files(tmp_path, content):
    path = tmp_path / "catalog.toml"
    path.write_text(content)
    with pytest.raises(CommandError, match="nothing was written"):
        run("catalog_load", str(path))
    with pytest.raises(CommandError, match="cannot read"):
        run("catalog_load", str(tmp_path / "missing.toml"))
    assert catalog_counts()["CatalogModel"] == 0


def test_catalog_load_dry_run_reports_but_writes_nothing():
    out, _ = run("catalog_load", str(DEFAULT_CATALOG_PATH), "--dry-run")

    assert "models: 9 created" in out
    assert "dry run: nothing was written" in out
    assert catalog_counts() == {"CatalogModel": 0, "Route": 0, "PriceVersion": 0, "PriceSnapshot": 0}


def test_catalog_load_demo_upstream_adds_one_encrypted_demo_route_per_model_and_is_idempotent():
    run("catalog_load", str(DEFAULT_CATALOG_PATH))
    real = {route.pk: (route.base_url, route.active, route.priority) for route in Route.objects.all()}

    out, _ = run("catalog_load", str(DEFAULT_CATALOG_PATH), "--demo-upstream", "http://127.0.0.1:18181/")

    demo_routes = Route.objects.filter(name="demo")
    assert demo_routes.count() == 9
    for route in demo_routes.select_related("model"):
        # Each model keeps its provider's format (Claude on /v1/messages, Gemini on generateContent),
        # so the demo exercises the real pass-through and translation paths
        provider = route.model.owned_by.replace("google", "gemini")
        assert (route.provider, route.base_url, route.upstream_model) == (
            provider,
            "http://127.0.0.1:18181/v1" if provider == "openai" else "http://127.0.0.1:18181",
            route.model.name,
        )
        assert (route.priority, route.active, route.secret_env) == (1, True, "")
        assert route.secret_encrypted and "demo" not in route.secret_encrypted  # encrypted at rest
        assert services.route_secret(route) == "demo"
    assert {
        route.pk: (route.base_url, route.active, route.priority) for route in Route.objects.exclude(name="demo")
    } == real
    assert "routes: 9 created, 0 updated, 0 unchanged" in out
    before = catalog_counts()
    secrets_before = dict(demo_routes.values_list("pk", "secret_encrypted"))

    out, _ = run("catalog_load", str(DEFAULT_CATALOG_PATH), "--demo-upstream", "http://127.0.0.1:18181")

    assert "no changes" in out
    assert catalog_counts() == before
    assert dict(demo_routes.values_list("pk", "secret_encrypted")) == secrets_before


def test_catalog_load_demo_upstream_makes_every_launch_model_visible_once_probed():
    run("catalog_load", str(DEFAULT_CATALOG_PATH), "--demo-upstream", "http://127.0.0.1:18181")
    for route in Route.objects.all():
        services.probe_record(route=route, ok=True, status_code=200)

    assert {model.name for model in selectors.model_visible_list()} == LAUNCH_MODELS


def test_catalog_load_refuses_a_bad_demo_upstream_url():
    with pytest.raises(CommandError, match="--demo-upstream"):
        run("catalog_load", str(DEFAULT_CATALOG_PATH), "--demo-upstream", "ftp://127.0.0.1")
    assert catalog_counts()["CatalogModel"] == 0


def test_demo_setup_makes_the_admin_login_the_demo_accounts_owner_once(tmp_path):
    key_file = tmp_path / "demo-key"
    first = json.loads(run("demo_setup", "--key-file", str(key_file))[0])
    again = json.loads(run("demo_setup", "--key-file", str(key_file))[0])
    assert first == again  # the same key and login on every run
    admin = get_user_model().objects.get(username="admin")
    memberships = list(admin.memberships.values_list("account__name", "role"))
    assert len(memberships) == 1 and memberships[0][1] == "owner"
    assert selectors.key_lookup(first["key"]).account.name == memberships[0][0]


def test_demo_setup_makes_a_console_login_that_owns_the_demo_account_and_is_not_staff(tmp_path):
    key_file = tmp_path / "demo-key"
    first = json.loads(run("demo_setup", "--key-file", str(key_file))[0])
    again = json.loads(run("demo_setup", "--key-file", str(key_file))[0])
    assert (first["console_user"], first["console_password"]) == (again["console_user"], again["console_password"])
    customer = get_user_model().objects.get(username=first["console_user"])
    assert customer.check_password(first["console_password"]) and not customer.is_staff
    assert list(customer.memberships.values_list("account__name", "role")) == [("Demo", "owner")]
