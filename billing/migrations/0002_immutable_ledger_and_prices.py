"""Make ledger entries, price versions and price snapshots append-only at the database level.

Admin and services already never update them; the triggers make sure a stray `.update()`, a
shell session or a bad migration cannot either. TRUNCATE (test teardown) is not affected.
"""

from django.db import migrations

FORBID_FUNCTION = """
CREATE OR REPLACE FUNCTION openbili_forbid_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'rows of % are append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;
"""

TABLES = ["billing_ledgerentry", "billing_priceversion", "billing_pricesnapshot"]


def trigger_sql(table: str) -> str:
    return (
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION openbili_forbid_change();"
    )


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [
        migrations.RunSQL(FORBID_FUNCTION, "DROP FUNCTION IF EXISTS openbili_forbid_change() CASCADE;"),
        *[
            migrations.RunSQL(trigger_sql(table), f"DROP TRIGGER IF EXISTS {table}_append_only ON {table};")
            for table in TABLES
        ],
    ]
