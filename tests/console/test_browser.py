"""The console end to end in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
against the live app: sign in, create a key and call the gateway with it through the OpenAI SDK,
find the requests on the usage page, filter them, open the failed one, create its diagnostic
ticket (a second click shows the same ticket), export the usage and download the file. Each page's
screenshot is written to var/console-screenshots/ (OPENBILI_SCREENSHOT_DIR) for a person to check;
the test checks them too (a real PNG, of a page that rendered)."""

from __future__ import annotations

import csv
import io
import os
import re
import struct
from pathlib import Path

import openai
import pytest

from billing.models import ApiKey, Membership
from tests.api.conftest import PASSWORD, make_user
from tickets.models import Ticket
from usage.models import UsageRecord

CHROMIUM = os.environ.get("OPENBILI_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(
    os.environ.get("OPENBILI_SCREENSHOT_DIR", Path(__file__).resolve().parents[2] / "var" / "console-screenshots")
)

sync_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():  # scripts/test installs it; say so rather than pass silently
    pytest.fail(f"{CHROMIUM} is missing: run scripts/test, which installs Debian's chromium", pytrace=False)


@pytest.fixture
def browser_page(monkeypatch):
    # Playwright's sync API keeps an event loop on this thread; the test's own ORM reads are still
    # plain blocking calls (Django's documented switch for exactly this case).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True, locale="en-US")
        page = context.new_page()
        page.set_default_timeout(15_000)
        yield page
        context.close()
        browser.close()


def shoot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width == 1360 and height >= 300, (name, width, height)  # a laid-out page, not a blank one
    return path


def test_a_customer_in_the_console(gateway, browser_page):
    page = browser_page
    user = make_user("carol", gateway.account, Membership.Role.OWNER)
    base = gateway.url
    account = gateway.account.pk

    # Sign in (a wrong password first: the error is shown, nothing else happens).
    page.goto(f"{base}/console/login")
    page.fill("input[name=username]", "carol")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    assert "Wrong username or password" in page.inner_text("[role=alert]")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/console/{account}/")
    shoot(page, "01-overview")

    # Create a key: the secret is on the page once.
    page.click("nav.sections >> text=API keys")
    page.fill("input[name=name]", "browser key")
    page.fill("input[name=rpm_limit]", "600")
    page.click("form.grid-form button[type=submit]")
    secret = page.inner_text("[data-testid=secret]").strip()
    assert secret.startswith("sk-ob-") and "never put it in front-end code" in page.content()
    shoot(page, "02-key-created")
    key = ApiKey.objects.get(account=gateway.account, name="browser key")
    assert key.rpm_limit == 600 and secret.startswith(key.prefix)
    page.click("text=I have saved it")
    assert secret not in page.content() and key.prefix in page.content()
    shoot(page, "03-keys")

    # Use it through the OpenAI SDK: one success, one failure the upstream answers with a 429.
    gateway.refresh()
    sdk = openai.OpenAI(api_key=secret, base_url=f"{base}/v1", max_retries=0, timeout=20)
    ok = sdk.chat.completions.with_raw_response.create(model="gpt-5", messages=[{"role": "user", "content": "Hi"}])
    good_id = ok.headers["x-request-id"]
    gateway.upstream.script(status=429, retry_after=1, times=5)
    with pytest.raises(openai.APIStatusError) as failure:
        sdk.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "Hi again"}])
    bad_id = failure.value.response.headers["x-request-id"]
    gateway.upstream.reset()
    bad = gateway.row(bad_id)
    gateway.row(good_id)
    assert bad.error_class

    # Both are on the usage page, newest first; a filter narrows it to the failure.
    page.click("nav.sections >> text=Usage")
    rows = page.locator("[data-testid=usage-rows] tbody tr")
    assert rows.count() == 2 and rows.nth(0).get_attribute("data-request") == bad_id
    assert "Hi again" not in page.content()  # prompt text is never shown
    assert page.locator("svg.chart").count() == 3
    shoot(page, "04-usage")
    page.select_option("select[name=error_class]", bad.error_class)
    page.click("form.filters button[type=submit]")
    assert [r.get_attribute("data-request") for r in rows.all()] == [bad_id]

    # Open it, create its ticket; a second click shows the same ticket.
    page.click(f"tr[data-request={bad_id}] >> text=Create diagnostic ticket")
    assert bad.error_code in page.inner_text("[data-testid=bundle]")
    shoot(page, "05-ticket-new")
    page.fill("textarea[name=description]", "The first retry failed too.")
    page.click("[data-testid=ticket-form] button[type=submit]")
    ticket = Ticket.objects.get(request_id=bad_id)
    page.wait_for_url(f"{base}/console/{account}/tickets/{ticket.pk}")
    assert "The first retry failed too." in page.content()
    shoot(page, "06-ticket")
    page.goto(f"{base}/console/{account}/usage/{bad_id}")
    page.click("[data-testid=ticket-link]")
    page.wait_for_url(f"{base}/console/{account}/tickets/{ticket.pk}")
    page.goto(f"{base}/console/{account}/usage/{bad_id}/ticket")
    page.wait_for_url(f"{base}/console/{account}/tickets/{ticket.pk}")
    assert Ticket.objects.filter(request_id=bad_id).count() == 1

    # The model plaza, with its snippets.
    page.click("nav.sections >> text=Models")
    assert "gpt-5" in page.inner_text("[data-model=gpt-5]") and f"{base}/v1" in page.content()
    shoot(page, "07-models")

    # Export the usage as CSV and download it.
    page.click("nav.sections >> text=Usage")
    page.select_option("form.export-form select[name=format]", "csv")
    page.click("[data-testid=export]")
    page.wait_for_url(f"{base}/console/{account}/billing")
    download_link = page.locator("[data-testid=exports] [data-testid=download]").first
    download_link.wait_for()
    shoot(page, "08-billing")
    with page.expect_download() as info:
        download_link.click()
    text = Path(info.value.path()).read_text(encoding="utf-8-sig")
    ids = {row["request_id"] for row in csv.DictReader(io.StringIO(text))}
    assert (
        ids
        == {good_id, bad_id}
        == set(UsageRecord.objects.filter(account=gateway.account).values_list("request_id", flat=True))
    )
    assert secret not in text

    # The same page in Chinese.
    page.click("button[name=language][value=zh-hans]")
    page.wait_for_load_state()
    assert re.search("[\u4e00-\u9fff]", page.inner_text("nav.sections"))
    shoot(page, "09-billing-zh")
    assert user.is_active
