"""The declarative catalog file (TOML): parse and validate it, then load it idempotently.

The file lists models, their routes and their prices (see fixtures/catalog.toml for the format).
Loading is one transaction: the whole file is validated before anything is written, so a bad file
changes nothing. Loading the same file twice changes nothing the second time:

- a model or route (matched by name, routes by (model, name)) is created, or its fields that the
  file sets are updated in place; fields the file omits get the model default on create and are
  left alone on update (so an operator's switch in the admin survives a reload unless the file
  sets it);
- prices go through `services.price_version_publish`: unchanged prices publish nothing, changed
  prices publish a new version (versions are never edited);
- models and routes that are not in the file are left alone (`deactivate_missing` sets the file's
  models' other routes inactive).

Secrets are never in the file, only `secret_env`, the name of the environment variable holding
the upstream key.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction

from billing import crypto, money, services
from billing.models import CatalogModel, PriceVersion, Route

DEFAULT_CATALOG_PATH = Path(settings.BASE_DIR) / "fixtures" / "catalog.toml"

DEMO_ROUTE_NAME = "demo"
DEMO_SECRET = "demo"  # the offline demo upstream accepts any key  # noqa: S105 - not a secret
# Wire formats the demo upstream speaks that the gateway has a provider for: a model keeps its file
# routes' provider in the demo (Claude on /v1/messages, Gemini on generateContent), so that a
# newcomer offline exercises the same translations as production; any other provider would go
# through the OpenAI-compatible format.
DEMO_NATIVE_PROVIDERS = ("openai", "anthropic", "gemini")

_PG_INT_MAX = 2_147_483_647  # PositiveIntegerField is a PostgreSQL integer
_DECIMAL_RE = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
_SECRET_LIKE_FIELDS = {"secret", "api_key", "key", "secret_encrypted", "token", "password"}
_url_valid = URLValidator(schemes=["http", "https"])


class CatalogFileError(ValueError):
    """A catalog file that cannot be loaded; `where` is the offending entry, e.g. models[2](gpt-5).prices."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


# --- the parsed file ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteSpec:
    name: str
    where: str
    fields: dict[str, Any]  # only the fields the file sets


@dataclass(frozen=True)
class ModelSpec:
    name: str
    where: str
    fields: dict[str, Any]  # only the fields the file sets (besides name)
    prices: dict[str, Decimal]  # complete: every PriceVersion.PRICE_FIELDS key
    routes: tuple[RouteSpec, ...]


# Field name -> (required, parser). Parsers take (value, where) and return the clean value.


def _str(max_length: int, *, allow_empty: bool = True, pattern: re.Pattern | None = None, hint: str = ""):
    def parse(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise CatalogFileError(where, f"must be a string, not {type(value).__name__}")
        if not allow_empty and not value.strip():
            raise CatalogFileError(where, "must not be empty")
        if len(value) > max_length:
            raise CatalogFileError(where, f"longer than {max_length} characters")
        if value and pattern is not None and not pattern.match(value):
            raise CatalogFileError(where, hint or f"invalid value {value!r}")
        return value

    return parse


def _int(minimum: int):
    def parse(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CatalogFileError(where, f"must be an integer, not {type(value).__name__}")
        if not minimum <= value <= _PG_INT_MAX:
            raise CatalogFileError(where, f"must be between {minimum} and {_PG_INT_MAX}, not {value}")
        return value

    return parse


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise CatalogFileError(where, f"must be true or false, not {value!r}")
    return value


def _choice(choices: list[str]):
    def parse(value: Any, where: str) -> str:
        if value not in choices:
            raise CatalogFileError(where, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    return parse


def _url(value: Any, where: str) -> str:
    value = _str(300, allow_empty=False)(value, where)
    try:
        _url_valid(value)
    except ValidationError as exc:
        raise CatalogFileError(where, f"not an http(s) URL: {value!r}") from exc
    return value


def price_parse(value: Any, where: str) -> Decimal:
    """A price: a decimal string ("1.25") or an integer; never a float (it is not exact)."""
    if isinstance(value, float):
        raise CatalogFileError(where, f'a float is not exact; write the price as a decimal string, e.g. "{value}"')
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise CatalogFileError(where, f'must be a decimal string like "1.25", not {type(value).__name__}')
    text = str(value).strip()
    if text.startswith("-"):
        raise CatalogFileError(where, f"a price cannot be negative: {value!r}")
    if not _DECIMAL_RE.match(text):
        raise CatalogFileError(where, f'not a plain decimal number like "1.25": {value!r}')
    amount = Decimal(text)  # exact: the pattern above admits only plain decimal digits
    if -amount.as_tuple().exponent > money.PRICE_PLACES:  # type: ignore[operator]
        raise CatalogFileError(where, f"more than {money.PRICE_PLACES} decimal places: {value!r}")
    if amount >= Decimal(10) ** (money.PRICE_DIGITS - money.PRICE_PLACES):
        raise CatalogFileError(where, f"too large: {value!r}")
    return amount


MODEL_FIELDS: dict[str, tuple[bool, Any]] = {
    "name": (
        True,
        _str(100, allow_empty=False, pattern=_MODEL_NAME_RE, hint="a model id: letters, digits and . _ : / @ -"),
    ),
    "kind": (False, _choice(CatalogModel.Kind.values)),
    "owned_by": (False, _str(64)),
    "display_name": (False, _str(120)),
    "context_window": (True, _int(1)),
    "max_output_tokens": (True, _int(1)),
    "enabled": (False, _bool),
}
ROUTE_FIELDS: dict[str, tuple[bool, Any]] = {
    "name": (True, _str(64, allow_empty=False)),
    "provider": (True, _choice(Route.Provider.values)),
    "base_url": (True, _url),
    "upstream_model": (True, _str(120, allow_empty=False)),
    "secret_env": (
        False,
        _str(
            100,
            pattern=_ENV_NAME_RE,
            hint="must be the NAME of an environment variable (e.g. OPENAI_API_KEY), never the secret itself",
        ),
    ),
    "priority": (False, _int(0)),
    "active": (False, _bool),
    "timeout_seconds": (False, _int(1)),
}
# Every price field may be given; these must be (explicitly, "0" allowed) so a forgotten line
# cannot silently make tokens free. The others default to 0.
REQUIRED_PRICES = ("input_per_mtok", "output_per_mtok")


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise CatalogFileError(where, f"must be a table, not {type(value).__name__}")
    return value


def _fields(table: dict, spec: dict[str, tuple[bool, Any]], where: str, *, nested: set[str]) -> dict[str, Any]:
    for key in table:
        if key in spec or key in nested:
            continue
        if key in _SECRET_LIKE_FIELDS:
            raise CatalogFileError(
                f"{where}.{key}", "secrets never go in the catalog file; set secret_env to an environment variable name"
            )
        raise CatalogFileError(
            f"{where}.{key}", f"unknown field (known: {', '.join(sorted(spec | dict.fromkeys(nested)))})"
        )
    clean = {}
    for key, (required, parse) in spec.items():
        if key in table:
            clean[key] = parse(table[key], f"{where}.{key}")
        elif required:
            raise CatalogFileError(where, f"missing required field {key!r}")
    return clean


def _prices_parse(value: Any, where: str) -> dict[str, Decimal]:
    table = _table(value, where)
    for key in table:
        if key not in PriceVersion.PRICE_FIELDS:
            raise CatalogFileError(
                f"{where}.{key}", f"unknown price field (known: {', '.join(PriceVersion.PRICE_FIELDS)})"
            )
    for key in REQUIRED_PRICES:
        if key not in table:
            raise CatalogFileError(where, f'missing required price {key!r} (write "0" if it is free)')
    return {
        key: price_parse(table[key], f"{where}.{key}") if key in table else Decimal(0)
        for key in PriceVersion.PRICE_FIELDS
    }


def _label(index: int, table: Any) -> str:
    name = table.get("name") if isinstance(table, dict) else None
    return f"[{index}]({name})" if isinstance(name, str) and name else f"[{index}]"


def catalog_parse(data: dict) -> list[ModelSpec]:
    """Validate a decoded catalog file; raises CatalogFileError naming the offending entry."""
    for key in data:
        if key != "models":
            raise CatalogFileError(key, "unknown top-level field (a catalog file has only [[models]] entries)")
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise CatalogFileError("models", "no [[models]] entries")
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for index, raw in enumerate(models):
        where = f"models{_label(index, raw)}"
        table = _table(raw, where)
        model_fields = _fields(table, MODEL_FIELDS, where, nested={"prices", "routes"})
        name = model_fields.pop("name")
        if name in seen:
            raise CatalogFileError(f"{where}.name", f"model {name!r} is listed twice")
        seen.add(name)
        if model_fields["max_output_tokens"] > model_fields["context_window"]:
            raise CatalogFileError(f"{where}.max_output_tokens", "is larger than context_window")
        if "prices" not in table:
            raise CatalogFileError(where, "missing required table 'prices'")
        prices = _prices_parse(table["prices"], f"{where}.prices")
        raw_routes = table.get("routes", [])
        if not isinstance(raw_routes, list):
            raise CatalogFileError(f"{where}.routes", "must be a list of [[models.routes]] tables")
        routes: list[RouteSpec] = []
        route_names: set[str] = set()
        for route_index, raw_route in enumerate(raw_routes):
            route_where = f"{where}.routes{_label(route_index, raw_route)}"
            route_fields = _fields(_table(raw_route, route_where), ROUTE_FIELDS, route_where, nested=set())
            route_name = route_fields.pop("name")
            if route_name in route_names:
                raise CatalogFileError(f"{route_where}.name", f"route {route_name!r} is listed twice for this model")
            route_names.add(route_name)
            routes.append(RouteSpec(name=route_name, where=route_where, fields=route_fields))
        specs.append(ModelSpec(name=name, where=where, fields=model_fields, prices=prices, routes=tuple(routes)))
    return specs


def catalog_read(path: Path | str) -> list[ModelSpec]:
    """Read and validate a catalog file; every problem is a CatalogFileError."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise CatalogFileError("", f"cannot read the file: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogFileError("", f"not valid TOML: {exc}") from exc
    return catalog_parse(data)


def demo_base_url(url: str) -> str:
    """The base URL demo routes use for a demo upstream at `url` (its OpenAI-style /v1)."""
    url = url.rstrip("/")
    try:
        _url_valid(url)
    except ValidationError as exc:
        raise CatalogFileError("--demo-upstream", f"not an http(s) URL: {url!r}") from exc
    return f"{url}/v1"


# --- loading -----------------------------------------------------------------------------------


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass
class CatalogLoadResult:
    models: Counts = field(default_factory=Counts)
    routes: Counts = field(default_factory=Counts)
    routes_deactivated: int = 0
    prices_published: list[str] = field(default_factory=list)  # model names with a new version
    prices_unchanged: int = 0
    changes: list[str] = field(default_factory=list)  # one human-readable line per change; no secrets
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.changes)


class _DryRun(Exception):
    pass


def _apply(instance, wanted: dict[str, Any]) -> list[str]:
    """Set the wanted fields on an instance; returns the names of those that changed."""
    changed = [name for name, value in wanted.items() if getattr(instance, name) != value]
    for name in changed:
        setattr(instance, name, wanted[name])
    return changed


def _describe(instance, before: dict[str, Any], changed: list[str]) -> str:
    return ", ".join(f"{name} {before[name]!r} -> {getattr(instance, name)!r}" for name in changed)


def _full_clean(instance, where: str) -> None:
    # A backstop behind the file validation above (field lengths, URL format, choices).
    try:
        instance.full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        raise CatalogFileError(where, "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc


def _upsert(
    model_class,
    lookup: dict[str, Any],
    wanted: dict[str, Any],
    where: str,
    label: str,
    result_counts: Counts,
    changes: list[str],
):
    instance = model_class.objects.select_for_update().filter(**lookup).order_by("pk").first()
    if instance is None:
        instance = model_class(**lookup, **wanted)
        _full_clean(instance, where)
        instance.save()
        result_counts.created += 1
        changes.append(f"created {label}")
        return instance, True
    before = {name: getattr(instance, name) for name in wanted}
    changed = _apply(instance, wanted)
    if changed:
        _full_clean(instance, where)
        instance.save(update_fields=[*changed, "updated_at"])
        result_counts.updated += 1
        changes.append(f"updated {label}: {_describe(instance, before, changed)}")
    else:
        result_counts.unchanged += 1
    return instance, False


def _demo_secret_is_set(route: Route) -> bool:
    if not route.secret_encrypted:
        return False
    try:
        return crypto.decrypt(route.secret_encrypted) == DEMO_SECRET
    except crypto.SecretUnreadable:
        return False


def catalog_load(
    specs: list[ModelSpec],
    *,
    demo_upstream: str | None = None,
    deactivate_missing: bool = False,
    dry_run: bool = False,
    note: str = "",
) -> CatalogLoadResult:
    """Load parsed catalog entries in one transaction (see the module docstring).

    `demo_upstream`: instead of the file's routes, every model gets one active route "demo" to that
    upstream (the offline demo, which speaks every provider's format), in its file routes' format
    where the gateway has that provider, else OpenAI's; the model's other routes are left as they are.
    `dry_run`: do everything, report it, then roll it all back.
    """
    if demo_upstream is not None and deactivate_missing:
        raise CatalogFileError("--deactivate-missing", "cannot be combined with a demo upstream")
    demo_url = demo_base_url(demo_upstream) if demo_upstream is not None else None
    result = CatalogLoadResult(dry_run=dry_run)
    try:
        with transaction.atomic():
            for spec in specs:
                _load_model(spec, result, demo_url=demo_url, deactivate_missing=deactivate_missing, note=note)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return result


def _load_model(
    spec: ModelSpec, result: CatalogLoadResult, *, demo_url: str | None, deactivate_missing: bool, note: str
) -> None:
    model, _ = _upsert(
        CatalogModel, {"name": spec.name}, spec.fields, spec.where, f"model {spec.name}", result.models, result.changes
    )
    if demo_url is not None:
        provider = next((r.fields["provider"] for r in spec.routes if "provider" in r.fields), "openai")
        if provider not in DEMO_NATIVE_PROVIDERS:
            provider = Route.Provider.OPENAI.value
        demo = {
            "provider": provider,
            # Anthropic's and Google's base URLs have no /v1 (their providers add /v1/messages and
            # /v1beta/models/…), OpenAI's has.
            "base_url": demo_url if provider == "openai" else demo_url.removesuffix("/v1"),
            "upstream_model": spec.name,
            "secret_env": "",
            "priority": 1,
            "active": True,
        }
        route, created = _upsert(
            Route,
            {"model": model, "name": DEMO_ROUTE_NAME},
            demo,
            f"{spec.where}.routes(demo)",
            f"route {spec.name}/{DEMO_ROUTE_NAME}",
            result.routes,
            result.changes,
        )
        if not _demo_secret_is_set(route):
            services.route_secret_set(route=route, secret=DEMO_SECRET)
            if not created:
                result.changes.append(f"updated route {spec.name}/{DEMO_ROUTE_NAME}: demo secret set")
    else:
        for route_spec in spec.routes:
            _upsert(
                Route,
                {"model": model, "name": route_spec.name},
                route_spec.fields,
                route_spec.where,
                f"route {spec.name}/{route_spec.name}",
                result.routes,
                result.changes,
            )
        if deactivate_missing:
            stale = Route.objects.filter(model=model, active=True).exclude(name__in=[r.name for r in spec.routes])
            for route in stale.select_for_update().order_by("id"):
                route.active = False
                route.save(update_fields=["active", "updated_at"])
                result.routes_deactivated += 1
                result.changes.append(f"deactivated route {spec.name}/{route.name} (not in the file)")
    _, published = services.price_version_publish(model=model, prices=spec.prices, note=note[:200])
    if published:
        result.prices_published.append(spec.name)
        prices = ", ".join(f"{k}={v}" for k, v in spec.prices.items() if v)
        result.changes.append(f"published prices for {spec.name}: {prices or 'all zero'}")
    else:
        result.prices_unchanged += 1
