"""Tell every gateway process when keys or the catalog change (PostgreSQL LISTEN/NOTIFY).

Gateway processes cache keys and the catalog in memory (the request path must not query them).
Statement-level triggers send `NOTIFY openbili_cache, '<what>'` on any change, whatever made it
(services, admin, a shell, a migration), and NOTIFY is delivered only on commit. Account rows
notify only when a column the key cache holds changes, not on every balance movement.
"""

from django.db import migrations

FUNCTION = """
CREATE OR REPLACE FUNCTION openbili_notify_cache() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('openbili_cache', TG_ARGV[0]);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""

TRIGGERS = [
    ("billing_apikey", "INSERT OR UPDATE OR DELETE", "keys"),
    ("billing_account", "UPDATE OF status, credit_limit", "keys"),
    ("billing_catalogmodel", "INSERT OR UPDATE OR DELETE", "catalog"),
    ("billing_route", "INSERT OR UPDATE OR DELETE", "catalog"),
    ("billing_priceversion", "INSERT", "catalog"),
    ("billing_probe", "INSERT", "catalog"),
]


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_immutable_ledger_and_prices")]

    operations = [
        migrations.RunSQL(FUNCTION, "DROP FUNCTION IF EXISTS openbili_notify_cache() CASCADE;"),
        *[
            migrations.RunSQL(
                f"CREATE TRIGGER {table}_notify_cache AFTER {events} ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION openbili_notify_cache('{what}');",
                f"DROP TRIGGER IF EXISTS {table}_notify_cache ON {table};",
            )
            for table, events, what in TRIGGERS
        ],
    ]
