"""Dashboard API sign-in (issue 11, Deliver 1): sessions with CSRF, personal tokens, the caller's
accounts, the one error body, docs that work offline."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import Membership
from openbili.api.models import PersonalToken
from tests.api.conftest import PASSWORD, make_user
from tests.factories import AccountFactory


def assert_error(response, status: int, code: str, fields: set[str] | None = None) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"} and error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    if fields is not None:
        assert set(error["fields"]) == fields, error
    return error


def browser() -> APIClient:
    return APIClient(enforce_csrf_checks=True)


def csrf(client: APIClient) -> str:
    response = client.get("/api/v1/auth/csrf")
    assert response.status_code == 200
    return response.json()["csrf_token"]


@pytest.mark.django_db
def test_nothing_without_signing_in():
    assert_error(APIClient().get("/api/v1/me"), 401, "not_authenticated")
    assert APIClient().get("/api/v1/me").headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.django_db
def test_a_browser_signs_in_with_csrf_and_sees_its_accounts_and_roles():
    first, second = AccountFactory(name="Acme"), AccountFactory(name="Zeta")
    user = make_user("carol", first, Membership.Role.OWNER)
    Membership.objects.create(account=second, user=user, role=Membership.Role.MEMBER)
    client = browser()
    token = csrf(client)
    response = client.post("/api/v1/auth/login", {"username": "carol", "password": PASSWORD}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200, response.content
    me = client.get("/api/v1/me").json()
    assert me["username"] == "carol"
    assert [(a["name"], a["role"]) for a in me["accounts"]] == [("Acme", "owner"), ("Zeta", "member")]
    # a session write needs the CSRF token (the login rotated it)
    assert_error(client.post("/api/v1/me/tokens", {"name": "x"}), 403, "permission_denied")
    fresh = response.json()["csrf_token"]
    assert client.post("/api/v1/me/tokens", {"name": "x"}, HTTP_X_CSRFTOKEN=fresh).status_code == 201
    assert client.post("/api/v1/auth/logout", HTTP_X_CSRFTOKEN=fresh).status_code == 204
    assert_error(client.get("/api/v1/me"), 401, "not_authenticated")


@pytest.mark.django_db
def test_sign_in_itself_is_csrf_checked_and_wrong_passwords_are_401():
    make_user("dave", AccountFactory())
    client = browser()
    assert_error(
        client.post("/api/v1/auth/login", {"username": "dave", "password": PASSWORD}), 403, "permission_denied"
    )
    token = csrf(client)
    wrong = client.post("/api/v1/auth/login", {"username": "dave", "password": "nope"}, HTTP_X_CSRFTOKEN=token)
    assert_error(wrong, 401, "invalid_credentials")
    assert_error(
        client.post("/api/v1/auth/login", {}, HTTP_X_CSRFTOKEN=token), 400, "invalid_request", {"username", "password"}
    )


@pytest.mark.django_db
@override_settings(AXES_FAILURE_LIMIT=3)
def test_repeated_wrong_passwords_lock_the_sign_in_out():
    make_user("erin", AccountFactory())
    client = browser()
    token = csrf(client)
    for _ in range(3):
        client.post("/api/v1/auth/login", {"username": "erin", "password": "bad"}, HTTP_X_CSRFTOKEN=token)
    locked = client.post("/api/v1/auth/login", {"username": "erin", "password": PASSWORD}, HTTP_X_CSRFTOKEN=token)
    assert_error(locked, 429, "locked_out")
    assert int(locked.headers["Retry-After"]) > 0


@pytest.mark.django_db
def test_a_personal_token_is_shown_once_and_revoked_at_once(alice):
    created = alice.client.post("/api/v1/me/tokens", {"name": "ci"}, format="json")
    assert created.status_code == 201
    secret = created.json()["token"]
    assert secret.startswith("obt_") and created.json()["prefix"] == secret[:12]
    listed = alice.client.get("/api/v1/me/tokens")
    assert listed.status_code == 200
    body = listed.content.decode()
    assert secret not in body and PersonalToken.objects.get(name="ci").token_hash not in body
    assert all("token" not in item and "token_hash" not in item for item in listed.json()["results"])
    script = APIClient()
    script.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert script.get("/api/v1/me").status_code == 200
    token_id = created.json()["id"]
    assert alice.client.delete(f"/api/v1/me/tokens/{token_id}").status_code == 204
    assert_error(script.get("/api/v1/me"), 401, "not_authenticated")
    assert alice.client.get(f"/api/v1/me/tokens/{token_id}").json()["revoked_at"]


@pytest.mark.django_db
def test_an_expired_or_unknown_token_is_refused(alice):
    PersonalToken.objects.filter(user=alice.user).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert_error(alice.client.get("/api/v1/me"), 401, "not_authenticated")
    stranger = APIClient()
    stranger.credentials(HTTP_AUTHORIZATION="Bearer obt_" + "x" * 43)
    assert_error(stranger.get("/api/v1/me"), 401, "not_authenticated")


@pytest.mark.django_db
def test_another_users_token_is_not_found(alice, bob):
    theirs = PersonalToken.objects.get(user=bob.user)
    assert_error(alice.client.get(f"/api/v1/me/tokens/{theirs.pk}"), 404, "not_found")
    assert_error(alice.client.delete(f"/api/v1/me/tokens/{theirs.pk}"), 404, "not_found")
    assert PersonalToken.objects.get(pk=theirs.pk).revoked_at is None


@pytest.mark.django_db
def test_unknown_parameters_and_urls_are_errors_in_the_one_body(alice):
    assert_error(alice.client.get("/api/v1/me?verbose=1"), 400, "invalid_request", {"verbose"})
    assert_error(alice.client.get("/api/v1/me/tokens?page_size=0"), 400, "invalid_request", {"page_size"})
    assert_error(alice.client.get("/api/v1/me/tokens?cursor=garbage"), 400, "invalid_request", {"cursor"})
    assert_error(alice.client.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(alice.client.get("/api/"), 404, "not_found")
    assert_error(alice.client.put("/api/v1/me", {}), 405, "method_not_allowed")
    bad_json = alice.client.post("/api/v1/me/tokens", "{", content_type="application/json")
    assert_error(bad_json, 400, "invalid_json")
    # a Host header that is no host name (Django refuses it before any view; the paginated list
    # builds absolute links from it): the API's body, not Django's HTML page
    assert_error(alice.client.get("/api/v1/me/tokens", HTTP_HOST="vzuw!})+"), 400, "invalid_request")


@pytest.mark.django_db
def test_the_docs_page_and_its_assets_are_served_by_the_project(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "cdn." not in html and "unpkg" not in html  # offline: nothing from a CDN
    assets = [part.split('"')[0] for part in html.split('src="')[1:]] + [
        part.split('"')[0] for part in html.split('href="')[1:] if ".css" in part.split('"')[0]
    ]
    assert assets
    for asset in assets:
        if asset.startswith("/"):
            assert client.get(asset).status_code == 200, asset
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200 and "/api/v1/me" in schema.json()["paths"]


@pytest.mark.django_db
@override_settings(CORS_ALLOWED_ORIGINS=["https://console.example.com"])
def test_a_configured_console_origin_may_call_the_api_with_credentials(alice):
    response = alice.client.get("/api/v1/me", HTTP_ORIGIN="https://console.example.com")
    assert response.headers["Access-Control-Allow-Origin"] == "https://console.example.com"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    other = alice.client.get("/api/v1/me", HTTP_ORIGIN="https://evil.example.com")
    assert "Access-Control-Allow-Origin" not in other.headers
