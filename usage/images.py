"""Stored images behind capability URLs (`POST /v1/images/generations`, CONTRACT §2).

When an upstream answers with image bytes (`b64_json`, inline data), the gateway keeps them in the
Django storage alias `openbili_images` (settings.STORAGES) and returns
`{base_url}/v1/images/files/{token}.{ext}`: whoever holds that URL may download the image until it
expires (OPENBILI_IMAGE_TTL_SECONDS), like a signed URL.

- The token is 256 random bits. The database keeps only its SHA-256, so a dump of it (or an
  operator in the admin) has no working URL; the file's storage name is a separate random id under
  a date prefix, so a listing of the bucket or directory has none either.
- Every way of not finding an image (unknown, altered, malformed, wrong extension, expired, the
  file gone) is the same 404, so probing teaches nothing.
- A local backend (one with `path()`, FileSystemStorage) is streamed by the gateway; any other is
  answered with a 302 to the backend's own `url()`, signed for no longer than the time left where
  the backend takes an expiry (django-storages' S3 and Azure do).
- `expire_images()` (Celery beat, `manage.py images_expire`, the run command's loop) deletes the
  expired files, then their rows.

Storage APIs block: they run in worker threads. The metadata row goes through the gateway's async
pool, one statement for all the images of a request, before any file is written, so a crash
leaves at worst a row without a file (a 404, swept on expiry), never a file nobody can delete.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages
from django.db import transaction
from django.utils import timezone

from openbili.core.errors import OpenbiliError, UpstreamError
from usage.gateway.context import JSON, Ctx, MethodNotAllowed, dumps, error_headers
from usage.gateway.errors import openai_error_body
from usage.gateway.state import GatewayState
from usage.models import StoredImage

log = logging.getLogger("openbili.images")

STORAGE_ALIAS = "openbili_images"
URL_PREFIX = "/v1/images/files/"
# content type → the one extension its URLs carry
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
# secrets.token_urlsafe(32): 32 random bytes, 43 URL-safe base64 characters without padding.
TOKEN_BYTES = 32
_FILE_NAME = re.compile(r"([A-Za-z0-9_-]{43})\.(png|jpg|webp|gif)")
CHUNK_BYTES = 256 * 1024
SWEEP_BATCH = 500


class InvalidImage(UpstreamError):
    """The upstream's image cannot be stored (not png/jpeg/webp/gif, empty, too large): the
    request failed upstream-side, nothing was stored."""

    message = "The upstream returned an image that cannot be stored."


class ImageNotFound(OpenbiliError):
    """The one answer for every URL that does not lead to a live image."""

    status = 404
    code = "image_not_found"
    error_class = "invalid_request"
    openai_type = "invalid_request_error"
    message = "No image at this URL: it is unknown or has expired."


def image_storage() -> Storage:
    return storages[STORAGE_ALIAS]


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def sniff(data: bytes) -> str | None:
    """The content type the bytes themselves say, of the four we store; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def checked_type(data: bytes, content_type: str) -> str:
    """The content type an image is stored and served as, or InvalidImage.

    The declared type must be one of the four; the bytes must be an image of one of them too, and
    when the two disagree the bytes win (an upstream that labels a PNG as JPEG still yields a URL
    that renders, and nothing is ever served under a type its bytes are not)."""
    declared = content_type.split(";", 1)[0].strip().lower()
    declared = ALIASES.get(declared, declared)
    if declared not in EXTENSIONS:
        raise InvalidImage(f"The upstream's image type {declared[:50]!r} is not png, jpeg, webp or gif.")
    if not data:
        raise InvalidImage("The upstream returned an empty image.")
    limit = settings.OPENBILI_IMAGE_MAX_BYTES
    if len(data) > limit:
        raise InvalidImage(f"The upstream's image is larger than {limit} bytes.")
    actual = sniff(data)
    if actual is None:
        raise InvalidImage("The upstream's image is not a png, jpeg, webp or gif file.")
    if actual != declared:
        log.info("image declared %s is %s: stored as %s", declared, actual, actual)
    return actual


def public_base_url(scope: dict) -> str:
    """The scheme and host image URLs start with: OPENBILI_PUBLIC_BASE_URL when set (behind a
    proxy), else the request's own (its Host header; X-Forwarded-Proto only with OPENBILI_HTTPS,
    as Django trusts it)."""
    if settings.OPENBILI_PUBLIC_BASE_URL:
        return settings.OPENBILI_PUBLIC_BASE_URL
    headers = {name.lower(): value for name, value in scope.get("headers", [])}
    scheme = scope.get("scheme", "http")
    if settings.HTTPS and headers.get(b"x-forwarded-proto", b"").strip().lower() == b"https":
        scheme = "https"
    host = headers.get(b"host", b"").decode("latin-1").strip()
    if not host:
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] in (None, 80, 443) else f"{server[0]}:{server[1]}"
    return f"{scheme}://{host}"


# --- saving ---------------------------------------------------------------------------------------

# All of one request's images in one statement; times from the database's clock, the one that
# serving compares against.
INSERT_IMAGES = """
INSERT INTO usage_storedimage
    (account_id, request_id, token_sha256, storage_name, content_type, size_bytes, created_at, expires_at)
SELECT %(account_id)s, %(request_id)s, i.token_sha256, i.storage_name, i.content_type, i.size_bytes,
       now(), now() + %(ttl)s::integer * interval '1 second'
FROM unnest(%(hashes)s::bytea[], %(names)s::text[], %(types)s::text[], %(sizes)s::bigint[])
     AS i(token_sha256, storage_name, content_type, size_bytes)
"""
DELETE_IMAGES = "DELETE FROM usage_storedimage WHERE token_sha256 = ANY(%(hashes)s::bytea[])"

# The live image of a token hash, with the whole seconds it has left (at least 1).
LOOKUP_IMAGE = """
SELECT storage_name, content_type, size_bytes,
       greatest(1, floor(extract(epoch FROM expires_at - now())))::bigint
FROM usage_storedimage
WHERE token_sha256 = %(hash)s AND expires_at > now()
"""


def _storage_name(content_type: str, now: datetime) -> str:
    """`YYYY/MM/DD/<128 random bits>.<ext>`: nothing of the token; the date prefix keeps
    directories small and lets an operator see the age of what a bucket holds."""
    return f"{now:%Y/%m/%d}/{secrets.token_hex(16)}.{EXTENSIONS[content_type]}"


def _write(name: str, data: bytes) -> None:
    storage = image_storage()
    saved = storage.save(name, ContentFile(data))
    if saved != name:  # the backend renamed it (a clash of 128 random bits): the row would miss it
        storage.delete(saved)
        raise OSError(f"storage saved {name!r} as {saved!r}")


def _delete_files(names: Sequence[str]) -> None:
    storage = image_storage()
    for name in names:
        try:
            storage.delete(name)
        except Exception:  # the row is gone; the sweeper cannot find this file again
            log.exception("could not delete stored image %s", name)


async def save_images(
    state: GatewayState,
    *,
    account_id: int,
    request_id: str,
    images: Sequence[tuple[bytes, str]],
    base_url: str,
) -> list[str]:
    """Store one request's images, `(bytes, content type)` each; their URLs, in the same order.

    All or nothing: InvalidImage (nothing stored) if any image is refused; if a write fails, the
    rows and files of this call are removed again and the error propagates. The rows go in one
    statement on the gateway pool (PlatformUnavailable while the database is away)."""
    if not images:
        return []
    types = [checked_type(data, content_type) for data, content_type in images]
    now = datetime.now(UTC)
    tokens = [secrets.token_urlsafe(TOKEN_BYTES) for _ in images]
    hashes = [token_hash(token) for token in tokens]
    names = [_storage_name(content_type, now) for content_type in types]
    params = {
        "account_id": account_id,
        "request_id": request_id,
        "ttl": max(1, settings.OPENBILI_IMAGE_TTL_SECONDS),
        "hashes": hashes,
        "names": names,
        "types": types,
        "sizes": [len(data) for data, _ in images],
    }
    await state.on_db(_run, (INSERT_IMAGES, params))
    results = await asyncio.gather(
        *(asyncio.to_thread(_write, name, data) for name, (data, _) in zip(names, images, strict=True)),
        return_exceptions=True,
    )
    failure = next((result for result in results if isinstance(result, BaseException)), None)
    if failure is not None:
        written = [name for name, result in zip(names, results, strict=True) if not isinstance(result, BaseException)]
        await asyncio.to_thread(_delete_files, written)
        try:
            await state.on_db(_run, (DELETE_IMAGES, {"hashes": hashes}))
        except Exception:  # left to the sweeper: a row without a file is a 404 until it expires
            log.exception("request_id=%s: rows of unstored images left to expire", request_id)
        raise failure
    base = base_url.rstrip("/")
    return [f"{base}{URL_PREFIX}{token}.{EXTENSIONS[t]}" for token, t in zip(tokens, types, strict=True)]


async def save_image(
    state: GatewayState, *, account_id: int, request_id: str, data: bytes, content_type: str, base_url: str
) -> str:
    """Store one image; its capability URL. See save_images."""
    (url,) = await save_images(
        state, account_id=account_id, request_id=request_id, images=[(data, content_type)], base_url=base_url
    )
    return url


async def _run(pool, item: tuple[str, dict]) -> tuple | None:
    statement, params = item
    async with pool.connection() as conn:
        cursor = await conn.execute(statement, params)
        return await cursor.fetchone() if cursor.description else None


# --- serving --------------------------------------------------------------------------------------


def _open_local(name: str, size: int):
    """The open file of a local backend, or None when the backend has no local path (serve a
    redirect) — raises FileNotFoundError when the file is gone or not the size stored."""
    storage = image_storage()
    try:
        storage.path(name)
    except NotImplementedError:
        return None
    handle = storage.open(name, "rb")
    if handle.size != size:
        handle.close()
        raise FileNotFoundError(f"stored image {name} is {handle.size} bytes, not {size}")
    return handle


def _signed_url(name: str, seconds_left: int) -> str:
    storage = image_storage()
    if "expire" in inspect.signature(storage.url).parameters:  # django-storages: S3, Azure
        return storage.url(name, expire=seconds_left)  # type: ignore[call-arg]
    return storage.url(name)


async def serve_image(state: GatewayState, ctx: Ctx, send, token_path: str, *, method: str) -> None:
    """Answer `GET`/`HEAD /v1/images/files/{token}.{ext}`; no API key (the URL is the capability).

    `token_path` is the path after `/v1/images/files/` (the whole path is accepted too). GET and
    HEAD only (405 otherwise); every URL without a live image is the same 404."""
    head = method == "HEAD"
    try:
        if method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{method[:20]} is not allowed on {URL_PREFIX}.")
        match = _FILE_NAME.fullmatch(token_path.removeprefix(URL_PREFIX))
        if match is None:
            raise ImageNotFound()
        token, ext = match.groups()
        row = await state.on_db(_run, (LOOKUP_IMAGE, {"hash": token_hash(token)}))
        if row is None or EXTENSIONS.get(row[1]) != ext:
            raise ImageNotFound()
        name, content_type, size, seconds_left = row
        try:
            handle = await asyncio.to_thread(_open_local, name, size)
        except FileNotFoundError:
            log.warning("request_id=%s: the file of a live image is missing or truncated", ctx.request_id)
            raise ImageNotFound() from None
        location = await asyncio.to_thread(_signed_url, name, seconds_left) if handle is None else None
    except OpenbiliError as error:
        await _send_error(send, ctx, error, head=head)
        return
    except Exception:
        log.exception("request_id=%s trace_id=%s image serving failed", ctx.request_id, ctx.trace_id)
        await _send_error(send, ctx, OpenbiliError(), head=head)
        return
    if handle is None:
        assert location is not None
        headers = [(b"location", location.encode("latin-1")), (b"cache-control", b"no-store")]
        await _start(send, ctx, 302, [(b"content-length", b"0"), *headers])
        await send({"type": "http.response.body", "body": b""})
        return
    try:
        await _start(
            send,
            ctx,
            200,
            [
                (b"content-type", content_type.encode()),
                (b"content-length", str(size).encode()),
                (b"cache-control", f"private, max-age={seconds_left}".encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"content-disposition", f'inline; filename="{name.rsplit("/", 1)[-1]}"'.encode()),
            ],
        )
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        remaining = size
        while remaining > 0:
            chunk = await asyncio.to_thread(handle.read, min(CHUNK_BYTES, remaining))
            if not chunk:  # shrank under us: the client sees a short body, not other bytes
                log.warning("request_id=%s: stored image %s ended early", ctx.request_id, name)
                break
            remaining -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})
    finally:
        handle.close()


async def _start(send, ctx: Ctx, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    ctx.status = status
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *ctx.id_headers()]})


async def _send_error(send, ctx: Ctx, error: OpenbiliError, *, head: bool) -> None:
    body = dumps(openai_error_body(error, request_id=ctx.request_id, trace_id=ctx.trace_id))
    headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode()), *error_headers(ctx, error)]
    if error.status == 405:
        headers.append((b"allow", b"GET, HEAD"))
    await _start(send, ctx, error.status, headers)
    await send({"type": "http.response.body", "body": b"" if head else body})


# --- expiry ---------------------------------------------------------------------------------------


def expire_images(now: datetime | None = None, *, batch: int = SWEEP_BATCH) -> int:
    """Delete the images expired at `now` (default: now): each file from storage, then its row,
    in batches; the number of images deleted.

    Safe to run anywhere, concurrently: each batch locks its rows (SKIP LOCKED, so two sweepers
    share the work) and deletes the files before the rows, so a crash leaves rows to find again,
    never an orphan file. A file the backend fails to delete keeps its row for the next run."""
    now = now or timezone.now()
    storage = image_storage()
    deleted = 0
    failed: set[int] = set()
    while True:
        with transaction.atomic():
            rows = list(
                StoredImage.objects.select_for_update(skip_locked=True)
                .filter(expires_at__lte=now)
                .exclude(pk__in=failed)
                .order_by("expires_at")
                .values_list("pk", "storage_name")[:batch]
            )
            done = []
            for pk, name in rows:
                try:
                    storage.delete(name)
                except Exception:
                    log.exception("could not delete expired image %s; kept for the next sweep", name)
                    failed.add(pk)
                else:
                    done.append(pk)
            StoredImage.objects.filter(pk__in=done).delete()
        deleted += len(done)
        if len(rows) < batch or not done:
            break
    if deleted:
        log.info("deleted %d expired image(s)", deleted)
    return deleted
