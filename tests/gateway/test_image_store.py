"""Stored images behind capability URLs (usage/images.py): saved through the gateway's pool and the
`openbili_images` storage, served over real HTTP by a test-only ASGI app that routes
/v1/images/files/ to serve_image the way the gateway's router does, and swept by expire_images."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import zlib
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.conf import settings as django_settings
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from tests.factories import AccountFactory
from tests.live import LiveServer
from usage import images, tasks
from usage.gateway.context import Ctx
from usage.gateway.state import GatewayState
from usage.models import StoredImage

TTL = django_settings.OPENBILI_IMAGE_TTL_SECONDS


def png(width: int = 1, seed: int = 0) -> bytes:
    """A real PNG (one row of `width` grey pixels of shade `seed`)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + bytes([seed % 256]) * width)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x11" * 64 + b"\xff\xd9"
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00/\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00"


class ImageApp:
    """The gateway's router reduced to the one route: /v1/images/files/… → serve_image."""

    def __init__(self) -> None:
        self.state = GatewayState()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.state.start()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await self.state.stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        # The whole path: serve_image takes it with or without the /v1/images/files/ prefix.
        await images.serve_image(self.state, Ctx(scope), send, scope["path"], method=scope["method"])


class MemoryStorage(Storage):
    """A storage that is not local (no path()): served by a redirect to its url()."""

    files: dict[str, bytes] = {}
    expiries: list[int | None] = []

    def _save(self, name, content):
        self.files[name] = content.read()
        return name

    def _open(self, name, mode="rb"):
        return ContentFile(self.files[name], name=name)

    def exists(self, name):
        return name in self.files

    def delete(self, name):
        self.files.pop(name, None)

    def size(self, name):
        return len(self.files[name])

    def url(self, name, expire=None):
        self.expiries.append(expire)
        return f"https://bucket.example/{name}?X-Amz-Expires={expire}&X-Amz-Signature=sig"


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    live = LiveServer(ImageApp()).start()
    yield live
    live.stop()


@pytest.fixture
def store(settings, tmp_path):
    """The default (local) backend, in a directory of this test's own."""
    location = tmp_path / "images"
    settings.STORAGES = {
        **settings.STORAGES,
        "openbili_images": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": location},
        },
    }
    return location


@pytest.fixture
def account(transactional_db):
    return AccountFactory()


def run(server: LiveServer, coro):
    """Run a coroutine on the live server's loop (where the gateway state's pool lives)."""
    assert server.loop is not None
    return asyncio.run_coroutine_threadsafe(coro, server.loop).result(timeout=20)


def save(server, account, data: bytes, content_type: str = "image/png", request_id: str = "req_test") -> str:
    return run(
        server,
        images.save_image(
            server.app.state,
            account_id=account.pk,
            request_id=request_id,
            data=data,
            content_type=content_type,
            base_url=server.url,
        ),
    )


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1].split(".")[0]


def assert_not_found(response: httpx.Response) -> dict:
    """The one 404 of every URL without a live image: the OpenAI error body with the request's ids.
    Returns the body without its ids, to compare with other 404s."""
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body["error"]) == {"message", "type", "code", "param", "request_id", "trace_id"}
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    assert body["error"]["trace_id"] == response.headers["x-trace-id"]
    return {k: v for k, v in body["error"].items() if k not in ("request_id", "trace_id")}


@pytest.mark.parametrize(
    ("data", "content_type", "ext"),
    [(png(), "image/png", "png"), (JPEG, "image/jpeg", "jpg"), (WEBP, "image/webp", "webp"), (GIF, "image/gif", "gif")],
    ids=["png", "jpeg", "webp", "gif"],
)
def test_the_url_downloads_the_exact_bytes_with_their_type(server, store, account, data, content_type, ext):
    url = save(server, account, data, content_type)

    assert url.startswith(server.url + "/v1/images/files/") and url.endswith("." + ext)
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == content_type
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"].startswith('inline; filename="')
    assert response.headers["x-request-id"].startswith("req_")
    cache, max_age = response.headers["cache-control"].split(", max-age=")
    assert cache == "private" and TTL - 60 < int(max_age) <= TTL


def test_tokens_carry_256_random_bits_and_differ_per_image(server, store, account):
    urls = [save(server, account, png()) for _ in range(3)]  # the same bytes three times

    tokens = [token_of(url) for url in urls]
    assert len(set(tokens)) == 3
    for token in tokens:
        assert len(base64.urlsafe_b64decode(token + "=")) == 32  # 256 bits ≥ 128
    names = list(StoredImage.objects.values_list("storage_name", flat=True))
    assert len(set(names)) == 3
    for url in urls:
        assert httpx.get(url).content == png()


def test_an_altered_or_unknown_token_is_the_same_404(server, store, account):
    url = save(server, account, png())
    token = token_of(url)
    flipped = ("A" if token[0] != "A" else "B") + token[1:]
    base = server.url + "/v1/images/files/"

    answers = [
        httpx.get(base + flipped + ".png"),  # one character changed
        httpx.get(base + token[:-1] + ".png"),  # one short
        httpx.get(base + token + "A.png"),  # one long
        httpx.get(base + token + ".jpg"),  # the right token, the wrong extension
        httpx.get(base + token + ".PNG"),
        httpx.get(base + token),  # no extension
        httpx.get(base + token + ".png.png"),
        httpx.get(base + images.token_hash(token).hex() + ".png"),  # the hash the database holds
        httpx.get(base + "x" * 43 + ".png"),
    ]
    bodies = [assert_not_found(answer) for answer in answers]
    assert all(body == bodies[0] for body in bodies)
    assert httpx.get(url).content == png()  # the real one still works


def test_an_expired_image_is_404_and_the_sweep_deletes_file_and_row(server, store, account):
    old_url = save(server, account, png(seed=1), request_id="req_old")
    live_url = save(server, account, png(seed=2), request_id="req_live")
    old = StoredImage.objects.get(request_id="req_old")
    old_file = store / old.storage_name
    assert old_file.read_bytes() == png(seed=1)
    past = timezone.now() - timedelta(seconds=5)
    StoredImage.objects.filter(pk=old.pk).update(created_at=past - timedelta(seconds=TTL), expires_at=past)

    expired_body = assert_not_found(httpx.get(old_url))
    assert expired_body == assert_not_found(httpx.get(server.url + "/v1/images/files/" + "x" * 43 + ".png"))
    assert images.expire_images() == 1

    assert not old_file.exists()
    assert not StoredImage.objects.filter(pk=old.pk).exists()
    assert httpx.get(live_url).content == png(seed=2)  # what has not expired stays
    assert images.expire_images() == 0
    assert images.expire_images(now=timezone.now() + timedelta(seconds=TTL + 1)) == 1
    assert not StoredImage.objects.exists()
    assert not [path for path in store.rglob("*") if path.is_file()]
    assert_not_found(httpx.get(live_url))


def test_the_sweep_works_in_batches(server, store, account):
    run(
        server,
        images.save_images(
            server.app.state,
            account_id=account.pk,
            request_id="req_many",
            images=[(png(seed=n), "image/png") for n in range(5)],
            base_url=server.url,
        ),
    )
    later = timezone.now() + timedelta(seconds=TTL + 1)

    assert images.expire_images(now=later, batch=2) == 5
    assert not StoredImage.objects.exists()
    assert not [path for path in store.rglob("*") if path.is_file()]


def test_the_directory_is_not_listable(server, store, account):
    url = save(server, account, png())
    name = StoredImage.objects.get().storage_name
    base = server.url + "/v1/images/files"

    paths = ["/", "", "/" + name.split("/")[0] + "/", "/" + name, "/" + name.rsplit("/", 1)[1], "/*"]
    paths += ["/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2f" + name, "/" + token_of(url) + ".png/"]
    bodies = [assert_not_found(httpx.get(base + path)) for path in paths]
    assert all(body == bodies[0] for body in bodies)
    assert httpx.get(url).status_code == 200


def test_the_database_and_the_storage_hold_no_token(server, store, account):
    urls = [save(server, account, png(seed=n)) for n in range(2)]
    tokens = [token_of(url) for url in urls]

    with connection.cursor() as cursor:
        cursor.execute("SELECT row_to_json(i)::text FROM usage_storedimage i")
        dump = "\n".join(row[0] for row in cursor.fetchall())
    files = [str(path) for path in store.rglob("*")]
    for token in tokens:
        assert token not in dump and token.encode().hex() not in dump
        assert not any(token in path for path in files)
    stored = {bytes(row.token_sha256) for row in StoredImage.objects.all()}
    assert stored == {hashlib.sha256(token.encode()).digest() for token in tokens}


def test_one_image_is_never_served_for_another_url(server, store, account):
    a_url = save(server, account, png(seed=7))
    b_url = save(server, account, JPEG, "image/jpeg")

    assert httpx.get(a_url).content == png(seed=7)
    assert httpx.get(b_url).content == JPEG
    base = server.url + "/v1/images/files/"
    assert_not_found(httpx.get(base + token_of(a_url) + ".jpg"))  # a's token with b's extension
    assert_not_found(httpx.get(base + token_of(b_url) + ".png"))


def test_head_is_get_without_a_body_and_other_methods_are_405(server, store, account):
    url = save(server, account, png())

    head = httpx.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(png()))
    assert head.headers["content-type"] == "image/png"
    unknown = httpx.head(server.url + "/v1/images/files/" + "x" * 43 + ".png")
    assert unknown.status_code == 404 and unknown.content == b""
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response = httpx.request(method, url)
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
        assert response.json()["error"]["code"] == "method_not_allowed"
    assert httpx.get(url).content == png()  # DELETE did not delete it


def test_size_and_type_limits(server, store, account, settings):
    settings.OPENBILI_IMAGE_MAX_BYTES = len(png(width=10))
    refused = [
        (png(width=10) + b"\x00", "image/png"),  # one byte over
        (b"", "image/png"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        (png(), "text/html"),
        (b"<html><script>alert(1)</script></html>", "image/png"),  # declared png, is not
    ]
    for data, content_type in refused:
        with pytest.raises(images.InvalidImage) as caught:
            save(server, account, data, content_type)
        assert caught.value.status == 502 and caught.value.code == "upstream_error"
    assert not StoredImage.objects.exists()
    assert not store.exists() or not [path for path in store.rglob("*") if path.is_file()]

    # A batch with one refused image stores none of them.
    with pytest.raises(images.InvalidImage):
        run(
            server,
            images.save_images(
                server.app.state,
                account_id=account.pk,
                request_id="req_batch",
                images=[(png(), "image/png"), (b"GIF", "image/gif")],
                base_url=server.url,
            ),
        )
    assert not StoredImage.objects.exists()

    # Exactly at the limit is fine; a mislabelled image is stored and served as what its bytes are.
    assert httpx.get(save(server, account, png(width=10))).content == png(width=10)
    url = save(server, account, png(seed=3), "image/jpeg; charset=binary")
    assert url.endswith(".png")
    assert httpx.get(url).headers["content-type"] == "image/png"


def test_a_batch_is_one_statement_and_keeps_the_order(server, store, account):
    data = [png(seed=1), JPEG, GIF]
    urls = run(
        server,
        images.save_images(
            server.app.state,
            account_id=account.pk,
            request_id="req_batch",
            images=[(data[0], "image/png"), (data[1], "image/jpeg"), (data[2], "image/gif")],
            base_url=server.url + "/",
        ),
    )

    assert [httpx.get(url).content for url in urls] == data
    assert "//v1" not in urls[0].removeprefix("http://")
    rows = list(StoredImage.objects.filter(request_id="req_batch", account=account))
    assert len(rows) == 3
    assert len({row.created_at for row in rows}) == 1  # now() of one statement
    assert {row.expires_at - row.created_at for row in rows} == {timedelta(seconds=TTL)}


def test_a_live_row_whose_file_is_gone_is_404(server, store, account):
    url = save(server, account, png())
    (store / StoredImage.objects.get().storage_name).unlink()

    assert_not_found(httpx.get(url))


def test_settings_switch_the_backend_to_one_served_by_redirect(server, account, settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "openbili_images": {"BACKEND": f"{__name__}.MemoryStorage"},
    }
    MemoryStorage.files.clear()
    MemoryStorage.expiries.clear()
    url = save(server, account, png(seed=9))
    name = StoredImage.objects.get().storage_name
    assert MemoryStorage.files == {name: png(seed=9)}

    response = httpx.get(url)
    assert response.status_code == 302
    assert response.headers["location"].startswith(f"https://bucket.example/{name}?")
    assert response.headers["cache-control"] == "no-store"
    (expire,) = MemoryStorage.expiries
    assert expire is not None and TTL - 60 < expire <= TTL  # signed for no longer than the time left
    assert httpx.head(url).status_code == 302
    assert_not_found(httpx.get(url.replace(".png", ".gif")))

    assert images.expire_images(now=timezone.now() + timedelta(seconds=TTL + 1)) == 1
    assert MemoryStorage.files == {}


def test_the_sweep_runs_as_a_command_a_task_and_on_the_schedules(server, store, account, capsys):
    save(server, account, png())
    StoredImage.objects.update(
        expires_at=timezone.now() - timedelta(seconds=1), created_at=timezone.now() - timedelta(days=2)
    )

    call_command("images_expire")
    assert "1 expired image(s) deleted" in capsys.readouterr().out
    assert tasks.images_expire.apply().get() == 0
    schedule = django_settings.CELERY_BEAT_SCHEDULE["images-expire"]
    assert schedule == {"task": "usage.tasks.images_expire", "schedule": 600.0}
    launch = (Path(django_settings.BASE_DIR) / "openbili" / "launch.py").read_text()
    assert '"images_expire": 600.0' in launch


def test_the_default_storage_is_private_and_not_served_as_static(settings):
    options = django_settings.STORAGES["openbili_images"]
    assert options["BACKEND"] == "django.core.files.storage.FileSystemStorage"
    location = Path(options["OPTIONS"]["location"])
    assert location == Path(django_settings.VAR_DIR) / "images"
    assert location != Path(django_settings.STATIC_ROOT)
    assert options["OPTIONS"]["file_permissions_mode"] == 0o600


def test_public_base_url(settings):
    scope = {"scheme": "http", "headers": [(b"host", b"gw.example:8000")], "server": ("10.0.0.1", 8000)}
    assert images.public_base_url(scope) == "http://gw.example:8000"
    settings.OPENBILI_PUBLIC_BASE_URL = "https://api.example.com"
    assert images.public_base_url(scope) == "https://api.example.com"
    settings.OPENBILI_PUBLIC_BASE_URL = ""
    settings.HTTPS = True
    forwarded = {**scope, "headers": [*scope["headers"], (b"x-forwarded-proto", b"https")]}
    assert images.public_base_url(forwarded) == "https://gw.example:8000"


def test_the_admin_shows_metadata_never_the_token_hash(admin_client, account):
    image = StoredImage.objects.create(
        account=account,
        request_id="req_admin",
        token_sha256=hashlib.sha256(b"token").digest(),
        storage_name="2026/01/01/0123456789abcdef0123456789abcdef.png",
        content_type="image/png",
        size_bytes=1234,
        created_at=timezone.now(),
        expires_at=timezone.now() + timedelta(days=1),
    )

    page = admin_client.get(f"/admin/usage/storedimage/{image.pk}/change/").content.decode()
    assert "req_admin" in page and "image/png" in page
    assert hashlib.sha256(b"token").hexdigest() not in page and "token_sha256" not in page
    listing = admin_client.get("/admin/usage/storedimage/", {"q": "req_admin"})
    assert listing.status_code == 200 and "req_admin" in listing.content.decode()
