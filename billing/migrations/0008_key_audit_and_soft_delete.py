"""API keys are soft-deleted (deleted_at) and every change to one writes a KeyAudit row.

Audit rows are append-only like the ledger: a trigger refuses DELETE, and any UPDATE except the
one Django's ON DELETE SET NULL makes (key_id or actor_id to null, nothing else changed), so a
deleted user or key leaves its entries in place.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

AUDIT_FUNCTION = """
CREATE OR REPLACE FUNCTION openbili_key_audit_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND (NEW.key_id IS NULL OR NEW.key_id IS NOT DISTINCT FROM OLD.key_id)
       AND (NEW.actor_id IS NULL OR NEW.actor_id IS NOT DISTINCT FROM OLD.actor_id)
       AND (to_jsonb(NEW) - 'key_id' - 'actor_id') = (to_jsonb(OLD) - 'key_id' - 'actor_id') THEN
        RETURN NEW;  -- ON DELETE SET NULL of the key or the actor
    END IF;
    RAISE EXCEPTION 'rows of % are append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;
"""
AUDIT_TRIGGER = (
    "CREATE TRIGGER billing_keyaudit_append_only BEFORE UPDATE OR DELETE ON billing_keyaudit "
    "FOR EACH ROW EXECUTE FUNCTION openbili_key_audit_append_only();"
)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0007_hold_index_by_resolved_at"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="deleted_at",
            field=models.DateTimeField(
                blank=True,
                help_text="Deleted by its owner: disabled for good and hidden from the console and the API, but kept so that usage rows, holds and the audit trail still say which key they were.",
                null=True,
            ),
        ),
        migrations.CreateModel(
            name="KeyAudit",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("key_prefix", models.CharField(help_text="The key's non-secret prefix.", max_length=16)),
                (
                    "action",
                    models.CharField(
                        choices=[
                            ("created", "Created"),
                            ("updated", "Updated"),
                            ("disabled", "Disabled"),
                            ("enabled", "Enabled"),
                            ("rotated", "Rotated"),
                            ("deleted", "Deleted"),
                        ],
                        max_length=16,
                    ),
                ),
                ("changes", models.JSONField(blank=True, default=dict, help_text="What changed: field → [old, new].")),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "account",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="key_audits",
                        to="billing.account",
                    ),
                ),
                (
                    "actor",
                    models.ForeignKey(
                        blank=True,
                        db_index=False,
                        help_text="Who made the change; empty: an operator's tool or the system.",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "key",
                    models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="audits",
                        to="billing.apikey",
                    ),
                ),
            ],
            options={
                "verbose_name": "key audit entry",
                "verbose_name_plural": "key audit entries",
                "indexes": [
                    models.Index(fields=["account", "-created_at", "-id"], name="keyaudit_account_time"),
                    models.Index(fields=["key", "-created_at", "-id"], name="keyaudit_key_time"),
                ],
            },
        ),
        migrations.RunSQL(AUDIT_FUNCTION, "DROP FUNCTION IF EXISTS openbili_key_audit_append_only() CASCADE;"),
        migrations.RunSQL(AUDIT_TRIGGER, "DROP TRIGGER IF EXISTS billing_keyaudit_append_only ON billing_keyaudit;"),
    ]
