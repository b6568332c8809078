"""Members of an account (issue 11, Deliver 1: owners manage members): everyone reads, owners add,
change roles and remove; an account always keeps an owner; another account's members are 404."""

from __future__ import annotations

import pytest

from billing.models import Membership
from tests.api.conftest import Caller, make_user
from tests.api.test_auth import assert_error


@pytest.fixture
def member(alice) -> Caller:
    return Caller("mallory", role=Membership.Role.MEMBER, account=alice.account)


def test_everyone_sees_the_members_and_roles(alice, member):
    listed = member.client.get(alice.url("/members")).json()["results"]
    assert sorted((m["username"], m["role"]) for m in listed) == [("alice", "owner"), ("mallory", "member")]
    assert all("password" not in m for m in listed)


def test_an_owner_adds_by_username_or_email_and_changes_roles(alice):
    make_user("carol")
    make_user("dan")
    added = alice.client.post(alice.url("/members"), {"user": "carol"}, format="json")
    assert added.status_code == 201 and added.json()["role"] == "member"
    by_email = alice.client.post(alice.url("/members"), {"user": "DAN@example.com", "role": "owner"}, format="json")
    assert by_email.status_code == 201 and by_email.json()["role"] == "owner"
    assert_error(alice.client.post(alice.url("/members"), {"user": "carol"}, format="json"), 409, "conflict")
    assert_error(
        alice.client.post(alice.url("/members"), {"user": "nobody"}, format="json"), 400, "invalid_request", {"user"}
    )
    carol = added.json()["id"]
    promoted = alice.client.patch(alice.url(f"/members/{carol}"), {"role": "owner"}, format="json")
    assert promoted.status_code == 200 and promoted.json()["role"] == "owner"
    assert alice.client.delete(alice.url(f"/members/{carol}")).status_code == 204
    assert not Membership.objects.filter(pk=carol).exists()


def test_the_last_owner_can_be_neither_demoted_nor_removed(alice):
    own = Membership.objects.get(user=alice.user)
    assert_error(
        alice.client.patch(alice.url(f"/members/{own.pk}"), {"role": "member"}, format="json"), 409, "conflict"
    )
    assert_error(alice.client.delete(alice.url(f"/members/{own.pk}")), 409, "conflict")
    assert Membership.objects.get(pk=own.pk).role == "owner"


def test_a_member_cannot_manage_members(alice, member):
    make_user("erin")
    assert_error(member.client.post(alice.url("/members"), {"user": "erin"}, format="json"), 403, "permission_denied")
    own = Membership.objects.get(user=alice.user)
    assert_error(member.client.delete(alice.url(f"/members/{own.pk}")), 403, "permission_denied")
    mine = Membership.objects.get(user=member.user)
    assert_error(
        member.client.patch(alice.url(f"/members/{mine.pk}"), {"role": "owner"}, format="json"),
        403,
        "permission_denied",
    )


def test_another_accounts_members_are_not_found(alice, bob):
    theirs = Membership.objects.get(user=bob.user)
    assert_error(alice.client.get(bob.url("/members")), 404, "not_found")
    assert_error(alice.client.get(alice.url(f"/members/{theirs.pk}")), 404, "not_found")
    assert_error(alice.client.delete(alice.url(f"/members/{theirs.pk}")), 404, "not_found")
    assert_error(
        alice.client.patch(alice.url(f"/members/{theirs.pk}"), {"role": "member"}, format="json"), 404, "not_found"
    )
    assert Membership.objects.filter(pk=theirs.pk).exists()
