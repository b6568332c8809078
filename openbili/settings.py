"""Settings, read from the environment. Every variable and its default is listed in the README."""

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("OPENBILI_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def private_storage(name: str, directory: Path) -> tuple[str, dict]:
    """OPENBILI_<name>_STORAGE_BACKEND and _OPTIONS (a JSON object): any Django storage; the
    default keeps files on local disk in `directory`, readable by this user only."""
    backend = os.environ.get(f"OPENBILI_{name}_STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage")
    options = json.loads(os.environ.get(f"OPENBILI_{name}_STORAGE_OPTIONS") or "{}")
    if backend == "django.core.files.storage.FileSystemStorage":
        options = {"location": directory, "file_permissions_mode": 0o600, "directory_permissions_mode": 0o700} | options
    return backend, options


def _embedded_database_url() -> str:
    # Written by `scripts/run` (openbili.launch) once the embedded PostgreSQL server is up.
    marker = VAR_DIR / "embedded.url"
    if marker.exists():
        return marker.read_text().strip()
    return "postgres://postgres@127.0.0.1:5432/openbili"


DEBUG = env_bool("DEBUG", False)
# Production must set SECRET_KEY: sessions, signing and (unless OPENBILI_ENCRYPTION_KEYS is set)
# the Fernet key of the upstream secrets derive from it, so the built-in default is a public key.
# A checkout the run command has used keeps a random key of its own in var/secret-key. Without
# either, settings still load (makemigrations, check and other tooling need no secret), but what
# the key protects refuses to run on the public one — serving (openbili/asgi.py), Celery workers,
# encrypting route secrets — and `check --deploy` fails (openbili/core/checks.py), unless the
# process opts out explicitly: DEBUG=1, or OPENBILI_INSECURE_DEV_SECRET=1 as the test suite does.
DEV_SECRET_KEY = "openbili-dev-only-insecure-secret-key-change-me"  # noqa: S105 - public on purpose
SECRET_KEY = os.environ.get("SECRET_KEY", "")
LOCAL_SECRET_KEY_FILE = VAR_DIR / "secret-key"
if not SECRET_KEY and LOCAL_SECRET_KEY_FILE.exists():
    SECRET_KEY = LOCAL_SECRET_KEY_FILE.read_text().strip()
SECRET_KEY = SECRET_KEY or DEV_SECRET_KEY
ALLOW_DEV_SECRET_KEY = DEBUG or env_bool("OPENBILI_INSECURE_DEV_SECRET", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "*")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# Served over HTTPS (production; `manage.py check --deploy` is clean with it): redirect plain HTTP,
# HSTS, cookies only over TLS. Behind a TLS-terminating proxy, it must set X-Forwarded-Proto. The
# /v1 gateway is not Django: the redirect concerns the admin and the dashboard API only.
HTTPS = env_bool("OPENBILI_HTTPS", False)
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = int(os.environ.get("OPENBILI_HSTS_SECONDS", "31536000")) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS and env_bool("OPENBILI_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = HTTPS and env_bool("OPENBILI_HSTS_PRELOAD", True)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None

# Fernet keys (comma separated, newest first) that encrypt upstream secrets at rest.
# Unset: one key derived from SECRET_KEY.
OPENBILI_ENCRYPTION_KEYS = env_list("OPENBILI_ENCRYPTION_KEYS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # the docs page's assets, served locally (no CDN)
    "django_celery_beat",  # beat's schedule in the database, editable in the admin
    "corsheaders",
    "openbili.core",
    "openbili.api",
    "billing",
    "usage",
    "tickets",
    "openbili.console",  # the customer console at /console/
    "axes",  # failed admin logins: lockout (after the project's apps, as its docs ask)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",  # before CommonMiddleware, as its docs ask
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: answers a locked-out login
]

# Admin logins are throttled (django-axes): after AXES_FAILURE_LIMIT wrong passwords for one
# username from one address, that pair is locked out for the cool-off (429), so a password cannot
# be guessed, and a stranger cannot lock the real operator out from another address.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = int(os.environ.get("OPENBILI_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("OPENBILI_LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_IPWARE_PROXY_COUNT = int(os.environ.get("OPENBILI_PROXY_COUNT", "0"))  # proxies in front: trust X-Forwarded-For

ROOT_URLCONF = "openbili.urls"
ASGI_APPLICATION = "openbili.asgi.application"
WSGI_APPLICATION = "openbili.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "openbili" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL") or _embedded_database_url()
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "0")),
        conn_health_checks=True,
    )
}
# A read replica of it (streaming replication) for the dashboard's usage pages and summaries and
# the export jobs' reads (usage/selectors.py: reads()); everything that writes, and every read a
# write depends on, stays on the primary. Replication lag shows as rows appearing late there.
OPENBILI_REPLICA_DATABASE_URL = os.environ.get("OPENBILI_REPLICA_DATABASE_URL", "")
if OPENBILI_REPLICA_DATABASE_URL:
    DATABASES["replica"] = dj_database_url.parse(
        OPENBILI_REPLICA_DATABASE_URL,
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "0")),
        conn_health_checks=True,
    )
OPENBILI_REPLICA_READS = bool(OPENBILI_REPLICA_DATABASE_URL)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "")
# Django's cache (the dashboard API's sign-in throttle) is shared by every process through Redis;
# without Redis (the embedded run command: one process) it stays in memory.
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL, "KEY_PREFIX": "openbili"}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "") or None
# Without a broker (the embedded run command) tasks run in-process.
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", CELERY_BROKER_URL == "memory://")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The queue tasks go to and workers read (one per deployment; the test suite's worker has its own).
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
# On Redis, a task a dead worker had taken (acks_late) is handed out again after this many seconds;
# longer than any task's time limit, so a slow task is never run twice at once.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "3600"))}
CELERY_TASK_SEND_SENT_EVENT = False
# Beat reads its schedule from the database (django-celery-beat), editable in the admin's
# "Periodic tasks"; each entry of CELERY_BEAT_SCHEDULE below is installed there once, as a default
# an operator may then change (openbili/beat.py).
CELERY_BEAT_SCHEDULER = "openbili.beat:Scheduler"
CELERY_TIMEZONE = "UTC"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# The customer console speaks English and Simplified Chinese (openbili/console/locale); the
# visitor picks one (a cookie) or the browser's Accept-Language does. The API stays English.
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
STORAGES: dict[str, dict[str, object]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve the admin's static files straight from the installed apps: no collectstatic step needed.
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # A script's personal token (Authorization: Bearer obt_…) or a browser's session (CSRF on writes).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "openbili.api.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "openbili.api.pagination.Cursor",
    "EXCEPTION_HANDLER": "openbili.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.ScopedRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "login": os.environ.get("OPENBILI_API_LOGIN_RATE", "30/min"),
        # New diagnostic tickets per account (tickets/api.py), e.g. 30/hour.
        "ticket_create": os.environ.get("OPENBILI_TICKET_CREATE_RATE", "30/hour"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Openbili dashboard API",
    "DESCRIPTION": "Per-account REST API for the Openbili console and customers' scripts, under /api/v1/. "
    "Sign in with a session (POST /api/v1/auth/login, CSRF on writes) or a personal token "
    "(Authorization: Bearer obt_…). The /v1 gateway follows the OpenAI and Anthropic wire formats and is "
    "documented in the README.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Two `status` fields with different choices: each its own named enum in the schema.
    "ENUM_NAME_OVERRIDES": {
        "ModelStatusEnum": "billing.selectors.PLAZA_STATUSES",
        "KeyStatusEnum": ("active", "disabled", "expired"),
        "TicketStatusEnum": "tickets.models.Ticket.Status",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "openbili.api.schema.add_error_responses",
    ],
}
# Dashboards on another origin (the console, a customer's own): they may call /api/ with the
# session cookie. The same origins are trusted for CSRF.
CONSOLE_ORIGINS = env_list("OPENBILI_CONSOLE_ORIGINS", "")
CSRF_FAILURE_VIEW = "openbili.api.errors.csrf_failure"  # the API's error body under /api/
CORS_ALLOWED_ORIGINS = CONSOLE_ORIGINS
CORS_ALLOW_CREDENTIALS = True
CORS_URLS_REGEX = r"^/api/.*$"
CSRF_TRUSTED_ORIGINS = [*CSRF_TRUSTED_ORIGINS, *CONSOLE_ORIGINS]

# Billing
# A hold that was never settled (its request died) is released by the sweeper after this many seconds.
OPENBILI_HOLD_TTL_SECONDS = int(os.environ.get("OPENBILI_HOLD_TTL_SECONDS", "900"))
# The hourly usage roll-up (usage/rollup.py) stays this far behind now, besides every open hold.
OPENBILI_USAGE_ROLLUP_MARGIN_SECONDS = int(os.environ.get("OPENBILI_USAGE_ROLLUP_MARGIN_SECONDS", "300"))

# Diagnostic tickets (tickets/); their creation rate per account is REST_FRAMEWORK's "ticket_create".
# Ticket e-mails (tickets/notify.py): support's address for new tickets and customer replies
# (empty: none), and whether the customer who opened a ticket hears of support's replies.
OPENBILI_SUPPORT_EMAIL = os.environ.get("OPENBILI_SUPPORT_EMAIL", "")
OPENBILI_TICKET_CUSTOMER_EMAILS = env_bool("OPENBILI_TICKET_CUSTOMER_EMAILS", True)
# Django's e-mail settings, from the environment; the console backend (mail printed to the
# process's output) until a real one is configured, e.g. django.core.mail.backends.smtp.EmailBackend.
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Openbili <noreply@localhost>")

# Stored images (POST /v1/images/generations, usage/images.py). An image an upstream returns as
# bytes is kept in the storage alias "openbili_images" and handed out as a capability URL,
# {OPENBILI_PUBLIC_BASE_URL}/v1/images/files/<token>.<ext>, served by the gateway until it expires.
# The default keeps the files on local disk under var/images, which nothing else serves (not the
# static files, not MEDIA_URL); any Django storage backend can replace it, e.g. django-storages'
# S3 (`pip install openbili[s3]`): OPENBILI_IMAGE_STORAGE_BACKEND=storages.backends.s3.S3Storage
# and OPENBILI_IMAGE_STORAGE_OPTIONS='{"bucket_name": "…", "querystring_auth": true}'. A backend
# without a local path() is answered with a 302 to its url(), signed for at most the time left.
OPENBILI_IMAGE_STORAGE_BACKEND, OPENBILI_IMAGE_STORAGE_OPTIONS = private_storage("IMAGE", VAR_DIR / "images")
STORAGES["openbili_images"] = {"BACKEND": OPENBILI_IMAGE_STORAGE_BACKEND, "OPTIONS": OPENBILI_IMAGE_STORAGE_OPTIONS}
# Usage exports (usage/exports.py): files in the storage alias "openbili_exports" (local disk under
# var/exports by default; any Django storage, as for images), downloadable by the account's members
# until they expire; then `exports_expire` (beat, hourly) deletes the file.
OPENBILI_EXPORT_STORAGE_BACKEND, OPENBILI_EXPORT_STORAGE_OPTIONS = private_storage("EXPORT", VAR_DIR / "exports")
STORAGES["openbili_exports"] = {"BACKEND": OPENBILI_EXPORT_STORAGE_BACKEND, "OPTIONS": OPENBILI_EXPORT_STORAGE_OPTIONS}
OPENBILI_EXPORT_TTL_SECONDS = int(os.environ.get("OPENBILI_EXPORT_TTL_SECONDS", str(7 * 86400)))
# How long an image URL works; the sweeper (`manage.py images_expire`, every 10 minutes) then
# deletes the file and its row.
OPENBILI_IMAGE_TTL_SECONDS = int(os.environ.get("OPENBILI_IMAGE_TTL_SECONDS", "86400"))
# An upstream image larger than this is refused (502 upstream_error), not stored.
OPENBILI_IMAGE_MAX_BYTES = int(os.environ.get("OPENBILI_IMAGE_MAX_BYTES", str(50 * 1024 * 1024)))
# The scheme and host of image URLs, e.g. https://api.example.com, when the gateway sits behind a
# proxy; empty: taken from each request (its Host header, and X-Forwarded-Proto with OPENBILI_HTTPS).
OPENBILI_PUBLIC_BASE_URL = os.environ.get("OPENBILI_PUBLIC_BASE_URL", "").rstrip("/")

# Operations (openbili/ops/, docs/operations.md). Logs: one JSON object per line on stderr, the
# gateway's one line per request among them (logger openbili.access); `text` for a terminal.
OPENBILI_LOG_FORMAT = os.environ.get("OPENBILI_LOG_FORMAT", "json")
if OPENBILI_LOG_FORMAT not in ("json", "text"):
    raise ImproperlyConfigured(f"OPENBILI_LOG_FORMAT must be json or text, not {OPENBILI_LOG_FORMAT!r}")
OPENBILI_ACCESS_LOG = env_bool("OPENBILI_ACCESS_LOG", True)
# /metrics on the service's own port answers only this bearer token; unset, it does not exist there
# (`manage.py metrics_serve` serves the metrics on a port of its own).
OPENBILI_METRICS_TOKEN = os.environ.get("OPENBILI_METRICS_TOKEN", "")
_LOG_HANDLER = {"handlers": ["console"], "propagate": False}
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "openbili.ops.logs.JsonFormatter"},
        "text": {"()": "openbili.ops.logs.TextFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": OPENBILI_LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        # uvicorn's own lines (startup, errors) in the same format. Its access log stays off, with
        # or without --no-access-log (uvicorn writes it only to a logger with handlers): the
        # gateway's line per /v1 request says more, and a second line per request costs CPU.
        "uvicorn": _LOG_HANDLER,
        "uvicorn.error": _LOG_HANDLER,
        "uvicorn.access": {"handlers": [], "propagate": False},
        "openbili.access": {"level": "INFO" if OPENBILI_ACCESS_LOG else "WARNING"},
    },
}
# Workers log through LOGGING above (JSON), not through a root handler of Celery's own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

CELERY_BEAT_SCHEDULE = {
    "requests-sweep": {"task": "usage.tasks.requests_sweep", "schedule": 60.0},
    "images-expire": {"task": "usage.tasks.images_expire", "schedule": 600.0},
    # The summaries' hourly roll-up (usage/rollup.py): a no-op but once an hour or after a late write.
    "usage-rollup": {"task": "usage.tasks.usage_rollup", "schedule": 300.0},
    # Background responses are billed when they finish (usage/gateway/deferred.py).
    "responses-poll": {"task": "usage.tasks.responses_poll", "schedule": 15.0},
    "routes-probe": {
        "task": "usage.tasks.routes_probe",
        "schedule": float(os.environ.get("OPENBILI_PROBE_INTERVAL_SECONDS", "300")),
    },
    # Every account's invoice for the month before, on the 1st at 00:15 UTC (billing/invoices.py);
    # a charge committed after the build goes to the next month's invoice.
    "invoices-monthly": {
        "task": "billing.tasks.invoices_monthly",
        "schedule": crontab(minute=15, hour=0, day_of_month=1),
    },
    # Nightly reconciliation (billing/reconcile.py): every difference is logged as an error.
    "ledger-reconcile": {"task": "billing.tasks.ledger_reconcile", "schedule": crontab(minute=30, hour=2)},
    # Expired usage exports' files are deleted (usage/exports.py).
    "exports-expire": {"task": "usage.tasks.exports_expire", "schedule": 3600.0},
    # The usage table's monthly partitions, made three months ahead (usage/partitions.py).
    "usage-partitions": {"task": "usage.tasks.usage_partitions", "schedule": crontab(minute=45, hour=0)},
}
