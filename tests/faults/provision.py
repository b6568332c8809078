"""Provisions the fault tests' private database, in a process of its own: migrate, the catalog
routed to the fake upstream, and funded accounts with one key each.

`python -m tests.faults.provision '<spec json>'` with DATABASE_URL pointing at the private
cluster (harness.Stack runs it); prints {account name: {account_id, key_id, secret}} as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from decimal import Decimal


def main(spec: dict) -> dict:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "openbili.settings")
    django.setup()

    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)

    from billing import services
    from tests.factories import CatalogModelFactory, make_visible_model

    for model in spec["models"]:
        catalog = CatalogModelFactory(
            name=model["name"],
            owned_by=model["owned_by"],
            context_window=model["context_window"],
            max_output_tokens=model["max_output_tokens"],
        )
        make_visible_model(
            catalog,
            prices={name: Decimal(value) for name, value in model["prices"].items()},
            base_url=model["base_url"],
            provider=model["provider"],
            upstream_model=model["upstream_model"],
        )
    out = {}
    for account in spec["accounts"]:
        created = services.account_create(name=account["name"], credit=Decimal(account["credit"]))
        key, secret = services.key_create(account=created, name="faults", rpm_limit=account.get("rpm"))
        out[account["name"]] = {"account_id": created.pk, "key_id": key.pk, "secret": secret}
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
