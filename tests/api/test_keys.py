"""API keys and their audit trail (issue 11, Deliver 2): list, create (secret once), change, disable,
rotate (the old secret refused by the live gateway at once), delete (soft); owners change, members
read; another account's keys are 404 on every route; no answer ever holds a secret or a hash."""

from __future__ import annotations

import itertools
import time
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone
from psycopg import errors as pg_errors
from rest_framework.test import APIClient

from billing import selectors, services
from billing.models import ApiKey, KeyAudit, Membership
from tests.api.conftest import Caller
from tests.api.test_auth import assert_error
from tests.factories import CatalogModelFactory
from usage.models import UsageRecord

_seq = itertools.count(1)


@pytest.fixture
def models(db):
    return [CatalogModelFactory(name=name) for name in ("gpt-5", "gpt-4.1", "claude-sonnet-4-6")]


@pytest.fixture
def member(alice) -> Caller:
    return Caller("mia", role=Membership.Role.MEMBER, account=alice.account)


def create(caller: Caller, **body) -> dict:
    response = caller.client.post(caller.url("/keys"), {"name": "ci"} | body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def audit_of(key_id: int) -> list[tuple[str, dict]]:
    return [(a.action, a.changes) for a in KeyAudit.objects.filter(key_id=key_id).order_by("id")]


def assert_clean(response, *secrets: str, creating: bool = False) -> None:
    """No secret and no hash of any key in the body; a creating answer holds its own secret only."""
    body = response.content.decode()
    for secret in secrets:
        assert secret not in body
    for key_hash in ApiKey.objects.values_list("key_hash", flat=True):
        assert key_hash not in body
    assert "key_hash" not in body
    assert ('"secret"' in body) == creating


def usage_row(key: ApiKey, started_at):
    n = next(_seq)
    return UsageRecord.objects.create(
        request_id=f"req_{n:032x}",
        trace_id=f"trace_{n:032x}",
        account_id=key.account_id,
        api_key=key,
        key_prefix=key.prefix,
        endpoint="/v1/chat/completions",
        model_requested="gpt-5",
        status=200,
        started_at=started_at,
    )


# --- create -------------------------------------------------------------------------------------


def test_an_owner_creates_a_key_and_sees_its_secret_once(alice, models):
    created = create(alice, name="ci", rpm_limit=60)

    secret = created.pop("secret")
    assert secret.startswith("sk-ob-") and created["prefix"] == secret[:12]
    assert created["name"] == "ci" and created["status"] == "active"
    assert (created["all_models"], created["allowed_models"], created["rpm_limit"], created["tpm_limit"]) == (
        True,
        [],
        60,
        None,
    )
    assert created["created_by"] == {"id": alice.user.pk, "username": "alice"}
    assert created["last_used_at"] is None and created["expires_at"] is None and created["replaced_by"] is None
    key = ApiKey.objects.get(pk=created["id"])
    assert selectors.key_lookup(secret).pk == key.pk  # the gateway finds it by the secret
    assert key.key_hash not in str(created)
    entry = KeyAudit.objects.get(key=key)
    assert (entry.action, entry.actor, entry.key_prefix, entry.account_id) == (
        "created",
        alice.user,
        key.prefix,
        alice.account.pk,
    )
    assert entry.changes == {
        "name": [None, "ci"],
        "all_models": [None, True],
        "allowed_models": [None, []],
        "rpm_limit": [None, 60],
        "tpm_limit": [None, None],
        "expires_at": [None, None],
    }
    assert secret not in str(entry.changes)
    listed = alice.client.get(alice.url("/keys"))
    assert listed.status_code == 200 and [k["id"] for k in listed.json()["results"]] == [key.pk]
    assert_clean(listed, secret)
    assert_clean(alice.client.get(alice.url(f"/keys/{key.pk}")), secret)


def test_a_key_scope_is_all_models_a_list_or_none(alice, models):
    everything = create(alice, name="all")
    listed = create(alice, name="two", allowed_models=["gpt-5", "gpt-4.1", "gpt-5"])
    nothing = create(alice, name="none", all_models=False)
    also_nothing = create(alice, name="empty list", allowed_models=[])

    assert (everything["all_models"], everything["allowed_models"]) == (True, [])
    assert (listed["all_models"], listed["allowed_models"]) == (False, ["gpt-4.1", "gpt-5"])
    assert (nothing["all_models"], nothing["allowed_models"]) == (False, [])
    assert (also_nothing["all_models"], also_nothing["allowed_models"]) == (False, [])
    restricted = selectors.key_lookup(listed["secret"])
    assert selectors.key_allows_model(restricted, "gpt-5") and not selectors.key_allows_model(restricted, "claude")


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"name": ""}, {"name"}),
        ({"name": "x" * 65}, {"name"}),
        ({"name": "a\x00b"}, {"name"}),
        ({"allowed_models": ["gpt-5", "no-such-model"]}, {"allowed_models"}),
        ({"all_models": True, "allowed_models": ["gpt-5"]}, {"allowed_models"}),
        ({"rpm_limit": 0}, {"rpm_limit"}),
        ({"tpm_limit": -5}, {"tpm_limit"}),
        ({"rpm_limit": 2**31}, {"rpm_limit"}),
        ({"expires_at": "2001-01-01T00:00:00Z"}, {"expires_at"}),
        ({"expires_at": "tomorrow"}, {"expires_at"}),
    ],
)
def test_a_bad_key_is_refused_naming_the_field_and_nothing_is_made(alice, models, body, fields):
    response = alice.client.post(alice.url("/keys"), {"name": "ci"} | body, format="json")

    assert_error(response, 400, "invalid_request", fields)
    assert not ApiKey.objects.exists() and not KeyAudit.objects.exists()


def test_a_key_needs_a_name(alice):
    assert_error(alice.client.post(alice.url("/keys"), {}, format="json"), 400, "invalid_request", {"name"})


# --- list and read ------------------------------------------------------------------------------


def test_the_list_filters_by_status_and_name(alice, models):
    live = create(alice, name="Prod backend")
    later = create(alice, name="prod cron", expires_at=(timezone.now() + timedelta(days=1)).isoformat())
    off = create(alice, name="staging")
    expired = create(alice, name="old PROD")
    gone = create(alice, name="prod deleted")
    services.key_disable(key=ApiKey.objects.get(pk=off["id"]))
    ApiKey.objects.filter(pk=expired["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    services.key_delete(key=ApiKey.objects.get(pk=gone["id"]))

    def ids(query: str) -> list[int]:
        response = alice.client.get(alice.url("/keys") + query)
        assert response.status_code == 200, response.content
        return [key["id"] for key in response.json()["results"]]

    assert ids("") == [expired["id"], off["id"], later["id"], live["id"]]  # newest first, deleted hidden
    assert ids("?status=active") == [later["id"], live["id"]]
    assert ids("?status=disabled") == [off["id"]]
    assert ids("?status=expired") == [expired["id"]]
    assert ids("?name=prod") == [expired["id"], later["id"], live["id"]]
    assert ids("?name=PROD&status=active") == [later["id"], live["id"]]
    assert ids("?name=nothing") == []
    statuses = {key["id"]: key["status"] for key in alice.client.get(alice.url("/keys")).json()["results"]}
    assert statuses == {live["id"]: "active", later["id"]: "active", off["id"]: "disabled", expired["id"]: "expired"}


def test_the_list_is_cursor_paginated(alice):
    made = [create(alice, name=f"k{i}")["id"] for i in range(5)]
    first = alice.client.get(alice.url("/keys?page_size=2")).json()
    second = alice.client.get(first["next"]).json()
    third = alice.client.get(second["next"]).json()

    pages = [[k["id"] for k in page["results"]] for page in (first, second, third)]
    assert pages == [made[4:2:-1], made[2:0:-1], made[:1]]
    assert third["next"] is None


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("?status=broken", {"status"}),
        ("?name=" + "x" * 65, {"name"}),
        ("?owner=alice", {"owner"}),
        ("?page_size=0", {"page_size"}),
        ("?page_size=201", {"page_size"}),
        ("?cursor=garbage", {"cursor"}),
    ],
)
def test_bad_list_parameters_are_400s_naming_them(alice, query, fields):
    assert_error(alice.client.get(alice.url("/keys") + query), 400, "invalid_request", fields)


def test_last_used_is_the_newest_usage_row(alice, models):
    used = create(alice, name="used")
    unused = create(alice, name="unused")
    key = ApiKey.objects.get(pk=used["id"])
    newest = timezone.now() - timedelta(minutes=5)
    usage_row(key, newest - timedelta(hours=1))
    usage_row(key, newest)

    listed = {k["id"]: k for k in alice.client.get(alice.url("/keys")).json()["results"]}
    assert listed[used["id"]]["last_used_at"] == newest.isoformat().replace("+00:00", "Z")
    assert listed[unused["id"]]["last_used_at"] is None
    detail = alice.client.get(alice.url(f"/keys/{used['id']}")).json()
    assert detail["last_used_at"] == listed[used["id"]]["last_used_at"]


def test_the_list_costs_the_same_few_queries_for_many_keys(alice, models, django_assert_max_num_queries):
    for i in range(30):
        key, _ = services.key_create(account=alice.account, name=f"k{i}", models=["gpt-5"], actor=alice.user)
        usage_row(key, timezone.now())
    # auth (token lookup, touch), membership, the keys page: never one query per key
    with django_assert_max_num_queries(4):
        response = alice.client.get(alice.url("/keys?page_size=200"))
    assert len(response.json()["results"]) == 30
    assert all(k["last_used_at"] and k["created_by"]["username"] == "alice" for k in response.json()["results"])


def test_reading_one_key(alice, models):
    made = create(alice, name="one", allowed_models=["gpt-5"], tpm_limit=1000)
    response = alice.client.get(alice.url(f"/keys/{made['id']}"))

    assert response.status_code == 200
    assert response.json() == {k: v for k, v in made.items() if k != "secret"}
    assert_clean(response, made["secret"])
    assert_error(alice.client.get(alice.url(f"/keys/{made['id']}?verbose=1")), 400, "invalid_request", {"verbose"})
    assert_error(alice.client.get(alice.url("/keys/999999999")), 404, "not_found")


# --- change -------------------------------------------------------------------------------------


def patch(caller: Caller, key_id: int, body: dict):
    return caller.client.patch(caller.url(f"/keys/{key_id}"), body, format="json")


def test_an_owner_renames_rescopes_limits_and_expires_a_key_with_one_audit_entry(alice, models):
    made = create(alice, name="ci", rpm_limit=60)
    expires = (timezone.now() + timedelta(days=7)).replace(microsecond=0)

    response = patch(
        alice,
        made["id"],
        {"name": "ci-2", "allowed_models": ["gpt-5"], "rpm_limit": None, "tpm_limit": 5000, "expires_at": expires},
    )

    assert response.status_code == 200, response.content
    changed = response.json()
    assert (changed["name"], changed["all_models"], changed["allowed_models"]) == ("ci-2", False, ["gpt-5"])
    assert (changed["rpm_limit"], changed["tpm_limit"], changed["status"]) == (None, 5000, "active")
    assert changed["expires_at"] == expires.isoformat().replace("+00:00", "Z")
    assert_clean(response, made["secret"])
    assert audit_of(made["id"])[1:] == [
        (
            "updated",
            {
                "name": ["ci", "ci-2"],
                "all_models": [True, False],
                "allowed_models": [[], ["gpt-5"]],
                "rpm_limit": [60, None],
                "tpm_limit": [None, 5000],
                "expires_at": [None, expires.isoformat()],
            },
        )
    ]
    key = selectors.key_lookup(made["secret"])
    assert (key.name, key.allowed_models, key.tpm_limit, key.expires_at) == ("ci-2", ["gpt-5"], 5000, expires)
    assert KeyAudit.objects.filter(key_id=made["id"]).latest("id").actor == alice.user


def test_a_patch_that_changes_nothing_writes_no_audit_entry(alice, models):
    made = create(alice, name="ci", allowed_models=["gpt-5"])

    assert patch(alice, made["id"], {"name": "ci", "allowed_models": ["gpt-5"], "active": True}).status_code == 200
    assert patch(alice, made["id"], {}).status_code == 200

    assert [action for action, _ in audit_of(made["id"])] == ["created"]


def test_back_to_all_models_clears_the_list(alice, models):
    made = create(alice, name="ci", allowed_models=["gpt-5", "gpt-4.1"])

    changed = patch(alice, made["id"], {"all_models": True}).json()

    assert (changed["all_models"], changed["allowed_models"]) == (True, [])
    assert audit_of(made["id"])[-1] == (
        "updated",
        {"all_models": [False, True], "allowed_models": [["gpt-4.1", "gpt-5"], []]},
    )


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"name": ""}, {"name"}),
        ({"allowed_models": ["nope"]}, {"allowed_models"}),
        ({"all_models": True, "allowed_models": ["gpt-5"]}, {"allowed_models"}),
        ({"rpm_limit": 0}, {"rpm_limit"}),
        ({"expires_at": "2001-01-01T00:00:00Z"}, {"expires_at"}),
        ({"active": "maybe"}, {"active"}),
    ],
)
def test_a_bad_change_is_refused_and_changes_nothing(alice, models, body, fields):
    made = create(alice, name="ci")

    assert_error(patch(alice, made["id"], body), 400, "invalid_request", fields)
    key = ApiKey.objects.get(pk=made["id"])
    assert (key.name, key.all_models, key.rpm_limit, key.expires_at, key.status) == ("ci", True, None, None, "active")
    assert len(audit_of(made["id"])) == 1


def test_disable_and_enable_are_audited_and_the_secret_stops_and_starts(alice, models):
    made = create(alice, name="ci")

    off = patch(alice, made["id"], {"active": False}).json()
    assert off["status"] == "disabled" and off["disabled_at"]
    assert selectors.key_is_usable(selectors.key_lookup(made["secret"])) is False
    on = patch(alice, made["id"], {"active": True}).json()
    assert on["status"] == "active" and on["disabled_at"] is None
    assert selectors.key_is_usable(selectors.key_lookup(made["secret"])) is True

    assert audit_of(made["id"])[1:] == [
        ("disabled", {"status": ["active", "disabled"]}),
        ("enabled", {"status": ["disabled", "active"]}),
    ]


def test_an_expired_key_comes_back_with_a_new_expiry(alice, models):
    made = create(alice, name="ci")
    ApiKey.objects.filter(pk=made["id"]).update(expires_at=timezone.now() - timedelta(hours=1))
    assert alice.client.get(alice.url(f"/keys/{made['id']}")).json()["status"] == "expired"

    later = timezone.now() + timedelta(days=1)
    assert patch(alice, made["id"], {"expires_at": later.isoformat()}).json()["status"] == "active"
    assert patch(alice, made["id"], {"expires_at": None}).json()["expires_at"] is None


# --- rotate -------------------------------------------------------------------------------------


def test_rotating_gives_a_new_secret_once_and_disables_the_old_key(alice, models):
    old = create(alice, name="prod", allowed_models=["gpt-5"], rpm_limit=60)

    response = alice.client.post(alice.url(f"/keys/{old['id']}/rotate"))

    assert response.status_code == 201, response.content
    new = response.json()
    assert new["secret"].startswith("sk-ob-") and new["secret"] != old["secret"]
    assert new["prefix"] == new["secret"][:12] and new["id"] != old["id"]
    assert (new["name"], new["allowed_models"], new["rpm_limit"], new["status"]) == ("prod", ["gpt-5"], 60, "active")
    assert new["created_by"]["username"] == "alice"
    assert_clean(response, old["secret"], creating=True)
    was = alice.client.get(alice.url(f"/keys/{old['id']}")).json()
    assert (was["status"], was["replaced_by"]) == ("disabled", new["id"])
    assert selectors.key_is_usable(selectors.key_lookup(old["secret"])) is False
    assert selectors.key_is_usable(selectors.key_lookup(new["secret"])) is True
    assert audit_of(old["id"])[1:] == [
        ("rotated", {"replaced_by": [None, new["id"]], "status": ["active", "disabled"]})
    ]
    assert audit_of(new["id"]) == [
        (
            "created",
            {
                "name": [None, "prod"],
                "all_models": [None, False],
                "allowed_models": [None, ["gpt-5"]],
                "rpm_limit": [None, 60],
                "tpm_limit": [None, None],
                "expires_at": [None, None],
                "replaces": [None, old["id"]],
            },
        )
    ]


def test_a_rotated_key_is_not_rotated_again_nor_enabled(alice, models):
    old = create(alice, name="prod")
    assert alice.client.post(alice.url(f"/keys/{old['id']}/rotate")).status_code == 201
    count = ApiKey.objects.count()

    assert_error(alice.client.post(alice.url(f"/keys/{old['id']}/rotate")), 409, "conflict")
    assert_error(patch(alice, old["id"], {"active": True}), 409, "conflict")
    assert ApiKey.objects.count() == count
    assert ApiKey.objects.get(pk=old["id"]).status == "disabled"
    assert [action for action, _ in audit_of(old["id"])] == ["created", "rotated"]


def test_the_gateway_refuses_the_old_secret_right_after_rotation(gateway):
    """The gateway caches keys; the NOTIFY the rotation's commit sends drops the old one there."""
    owner = Caller("rita", account=gateway.account)
    old = owner.client.post(owner.url("/keys"), {"name": "live"}, format="json").json()
    assert gateway.get("/v1/models", key=old["secret"]).status_code == 200  # now cached by the gateway

    rotated = owner.client.post(owner.url(f"/keys/{old['id']}/rotate"))
    assert rotated.status_code == 201

    # The NOTIFY reaches the gateway's listener a moment after the commit, not before the next
    # request can: the old secret is refused within a second (not after the cache's 60 s TTL).
    refused = refused_soon(gateway, old["secret"])
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert gateway.get("/v1/models", key=rotated.json()["secret"]).status_code == 200
    # and disabling works the same way
    off = owner.client.patch(owner.url(f"/keys/{rotated.json()['id']}"), {"active": False}, format="json")
    assert off.status_code == 200
    assert refused_soon(gateway, rotated.json()["secret"]).status_code == 401


def refused_soon(gateway, secret: str, within: float = 1.0):
    deadline = time.monotonic() + within
    while True:
        answer = gateway.get("/v1/models", key=secret)
        if answer.status_code == 401 or time.monotonic() > deadline:
            return answer
        time.sleep(0.01)


# --- delete -------------------------------------------------------------------------------------


def test_deleting_a_key_hides_it_disables_it_and_keeps_its_history(alice, models):
    made = create(alice, name="gone")
    key = ApiKey.objects.get(pk=made["id"])
    row = usage_row(key, timezone.now())

    assert alice.client.delete(alice.url(f"/keys/{made['id']}")).status_code == 204

    assert alice.client.get(alice.url("/keys")).json()["results"] == []
    for response in (
        alice.client.get(alice.url(f"/keys/{made['id']}")),
        patch(alice, made["id"], {"name": "back"}),
        alice.client.post(alice.url(f"/keys/{made['id']}/rotate")),
        alice.client.delete(alice.url(f"/keys/{made['id']}")),
    ):
        assert_error(response, 404, "not_found")
    key.refresh_from_db()
    assert key.status == "disabled" and key.deleted_at is not None and key.name == "gone"
    assert selectors.key_is_usable(selectors.key_lookup(made["secret"])) is False
    row.refresh_from_db()
    assert row.api_key_id == key.pk  # the usage history still names its key
    (action, changes) = audit_of(key.pk)[-1]
    assert action == "deleted" and changes["status"] == ["active", "disabled"]
    assert changes["deleted_at"] == [None, key.deleted_at.isoformat()]
    audit = alice.client.get(alice.url(f"/audit?key={key.pk}")).json()["results"]
    assert [a["action"] for a in audit] == ["deleted", "created"]


def test_the_key_services_are_idempotent(alice, models):
    key, _ = services.key_create(account=alice.account, name="twice", actor=alice.user)

    services.key_disable(key=key, actor=alice.user)
    services.key_disable(key=key, actor=alice.user)
    services.key_enable(key=key, actor=alice.user)
    services.key_enable(key=key, actor=alice.user)
    services.key_update(key=key, name="again", actor=alice.user)
    services.key_update(key=key, name="again", actor=alice.user)
    services.key_delete(key=key, actor=alice.user)
    services.key_delete(key=key, actor=alice.user)

    assert [action for action, _ in audit_of(key.pk)] == ["created", "disabled", "enabled", "updated", "deleted"]


# --- the audit trail ------------------------------------------------------------------------------


def test_the_audit_trail_lists_every_change_newest_first_and_filters_by_key_and_action(alice, models):
    first = create(alice, name="first")
    second = create(alice, name="second")
    patch(alice, first["id"], {"name": "first-renamed"})
    patch(alice, second["id"], {"active": False})

    def entries(query: str = "") -> list[tuple[int, str]]:
        response = alice.client.get(alice.url("/audit") + query)
        assert response.status_code == 200, response.content
        assert_clean(response, first["secret"], second["secret"])
        return [(a["key"], a["action"]) for a in response.json()["results"]]

    assert entries() == [
        (second["id"], "disabled"),
        (first["id"], "updated"),
        (second["id"], "created"),
        (first["id"], "created"),
    ]
    assert entries(f"?key={first['id']}") == [(first["id"], "updated"), (first["id"], "created")]
    assert entries("?action=created") == [(second["id"], "created"), (first["id"], "created")]
    assert entries(f"?key={second['id']}&action=updated") == []
    newest = alice.client.get(alice.url("/audit?page_size=1")).json()
    assert newest["results"][0] == {
        "id": KeyAudit.objects.latest("id").pk,
        "key": second["id"],
        "key_prefix": second["prefix"],
        "action": "disabled",
        "actor": {"id": alice.user.pk, "username": "alice"},
        "changes": {"status": ["active", "disabled"]},
        "created_at": newest["results"][0]["created_at"],
    }
    assert newest["next"] and alice.client.get(newest["next"]).json()["results"][0]["action"] == "updated"


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("?key=abc", {"key"}),
        ("?key=1.5", {"key"}),
        ("?key=0", {"key"}),
        ("?key=99999999999999999999", {"key"}),
        ("?action=exploded", {"action"}),
        ("?status=active", {"status"}),
        ("?page_size=500", {"page_size"}),
    ],
)
def test_bad_audit_parameters_are_400s_naming_them(alice, query, fields):
    assert_error(alice.client.get(alice.url("/audit") + query), 400, "invalid_request", fields)


def test_the_audit_trail_costs_the_same_few_queries_for_many_entries(alice, django_assert_max_num_queries):
    for i in range(20):
        key, _ = services.key_create(account=alice.account, name=f"k{i}", actor=alice.user)
        services.key_disable(key=key, actor=alice.user)
    with django_assert_max_num_queries(4):
        response = alice.client.get(alice.url("/audit?page_size=200"))
    assert len(response.json()["results"]) == 40


def test_audit_entries_are_append_only_but_outlive_their_key(alice, models):
    key, _ = services.key_create(account=alice.account, name="doomed", actor=alice.user)
    entry = KeyAudit.objects.get(key=key)

    for action in (
        lambda: KeyAudit.objects.filter(pk=entry.pk).update(action="deleted"),
        lambda: KeyAudit.objects.filter(pk=entry.pk).update(changes={}),
        lambda: KeyAudit.objects.filter(pk=entry.pk).delete(),
    ):
        with pytest.raises(IntegrityError) as caught, transaction.atomic():
            action()
        assert isinstance(caught.value.__cause__, pg_errors.IntegrityConstraintViolation)
    # Should a key ever be deleted for real (ON DELETE SET NULL), its entries stay, naming its prefix.
    key.delete()
    entry.refresh_from_db()
    assert (entry.key_id, entry.key_prefix, entry.action) == (None, key.prefix, "created")


# --- roles and tenancy --------------------------------------------------------------------------


def test_a_member_reads_keys_but_cannot_change_them_or_read_the_audit(alice, member, models):
    made = create(alice, name="prod")

    assert [k["id"] for k in member.client.get(member.url("/keys")).json()["results"]] == [made["id"]]
    detail = member.client.get(member.url(f"/keys/{made['id']}"))
    assert detail.status_code == 200
    assert_clean(detail, made["secret"])
    for response in (
        member.client.post(member.url("/keys"), {"name": "mine"}, format="json"),
        patch(member, made["id"], {"name": "hijacked"}),
        patch(member, made["id"], {"active": False}),
        member.client.post(member.url(f"/keys/{made['id']}/rotate")),
        member.client.delete(member.url(f"/keys/{made['id']}")),
        member.client.get(member.url("/audit")),
    ):
        assert_error(response, 403, "permission_denied")
    key = ApiKey.objects.get()
    assert (key.name, key.status, key.deleted_at) == ("prod", "active", None)
    assert [action for action, _ in audit_of(key.pk)] == ["created"]


def test_another_accounts_keys_are_not_found_on_every_route(alice, bob, models):
    theirs = create(bob, name="bob's")

    # bob's account through alice's membership: no such account
    for response in (
        alice.client.get(bob.url("/keys")),
        alice.client.post(bob.url("/keys"), {"name": "intruder"}, format="json"),
        alice.client.get(bob.url(f"/keys/{theirs['id']}")),
        alice.client.patch(bob.url(f"/keys/{theirs['id']}"), {"name": "x"}, format="json"),
        alice.client.post(bob.url(f"/keys/{theirs['id']}/rotate")),
        alice.client.delete(bob.url(f"/keys/{theirs['id']}")),
        alice.client.get(bob.url("/audit")),
    ):
        assert_error(response, 404, "not_found")
    # bob's key id under alice's own account: no such key
    for response in (
        alice.client.get(alice.url(f"/keys/{theirs['id']}")),
        patch(alice, theirs["id"], {"name": "x"}),
        alice.client.post(alice.url(f"/keys/{theirs['id']}/rotate")),
        alice.client.delete(alice.url(f"/keys/{theirs['id']}")),
    ):
        assert_error(response, 404, "not_found")
    assert alice.client.get(alice.url(f"/audit?key={theirs['id']}")).json()["results"] == []
    key = ApiKey.objects.get(pk=theirs["id"])
    assert (key.name, key.status, key.deleted_at, key.replaced_by_id) == ("bob's", "active", None, None)
    assert not ApiKey.objects.filter(account=alice.account).exists()
    assert [action for action, _ in audit_of(key.pk)] == ["created"]


def test_nothing_without_signing_in(alice):
    assert_error(APIClient().get(alice.url("/keys")), 401, "not_authenticated")
    assert_error(APIClient().post(alice.url("/keys"), {"name": "x"}, format="json"), 401, "not_authenticated")
    assert_error(APIClient().get(alice.url("/audit")), 401, "not_authenticated")
