from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from billing.models import Membership
from openbili.api.models import PREFIX_LENGTH, PersonalToken, token_generate, token_hash
from tests.factories import AccountFactory

PASSWORD = "correct horse battery staple"


def make_user(username: str, account=None, role: str = Membership.Role.OWNER):
    user = get_user_model().objects.create_user(username=username, email=f"{username}@example.com", password=PASSWORD)
    if account is not None:
        Membership.objects.create(account=account, user=user, role=role)
    return user


def token_for(user, name: str = "script") -> str:
    secret = token_generate()
    PersonalToken.objects.create(user=user, name=name, prefix=secret[:PREFIX_LENGTH], token_hash=token_hash(secret))
    return secret


class Caller:
    """One user of the API with a personal token, on their own account."""

    def __init__(self, username: str, *, role: str = Membership.Role.OWNER, account=None) -> None:
        self.account = account or AccountFactory(name=f"{username}-co", credit=Decimal("100"))
        self.user = make_user(username, self.account, role)
        self.secret = token_for(self.user)
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.secret}")

    def url(self, tail: str = "") -> str:
        return f"/api/v1/accounts/{self.account.pk}{tail}"


@pytest.fixture
def alice(db) -> Caller:
    return Caller("alice")


@pytest.fixture
def bob(db) -> Caller:
    return Caller("bob")
