"""Every object of the API is reached through the caller's membership of its account.

Account-scoped URLs are `/api/v1/accounts/{account_id}/…`: `membership()` is the one gate. A
caller who is not a member of that account gets 404 — the same answer as for an account that
does not exist — whatever id they guess, so ids leak nothing; objects below it are then looked up
within that account only (`.filter(account=…)`), never by id alone. Owners manage keys and
members; members read (and, later, open tickets).
"""

from __future__ import annotations

from rest_framework import exceptions

from billing.models import Membership


def membership(request, account_id) -> Membership:
    try:
        account_id = int(account_id)
    except (TypeError, ValueError):
        raise exceptions.NotFound("No such account.") from None
    found = (
        Membership.objects.select_related("account")
        .filter(account_id=account_id, user=request.user, user__is_active=True)
        .first()
    )
    if found is None:
        raise exceptions.NotFound("No such account.")
    return found


def require_owner(member: Membership) -> None:
    if member.role != Membership.Role.OWNER:
        raise exceptions.PermissionDenied("Only an owner of this account may do this.")


class AccountScoped:
    """A view under /accounts/{account_id}/: `self.member` and `self.account` once initial() ran."""

    owner_methods: frozenset[str] = frozenset()  # methods only an owner may use

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # type: ignore[misc]  # authentication first
        self.member = membership(request, kwargs.get("account_id"))
        self.account = self.member.account
        if request.method in self.owner_methods:
            require_owner(self.member)
