"""The usage partitions keep a fifth of each page free, as the table did before partitioning
(migration 0003): a settle changes no indexed column, and with room on the row's page it is a HOT
update, written without touching any index. A partitioned table has no storage parameters of its
own (PostgreSQL 15), so each partition gets it: the existing ones here (their pages written from
now on), the new ones from usage_partition_ensure."""

from django.db import migrations

ENSURE = r"""
CREATE OR REPLACE FUNCTION usage_partition_ensure(moment timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  lo timestamptz := date_trunc('month', moment, 'UTC');
  hi timestamptz := date_trunc('month', lo + interval '32 days', 'UTC');
  name text := 'usage_usagerecord_p' || to_char(lo AT TIME ZONE 'UTC', 'YYYY_MM');
  moved bigint := 0;
BEGIN
  IF to_regclass(name) IS NOT NULL THEN
    RETURN name;
  END IF;
  IF EXISTS (SELECT 1 FROM usage_usagerecord_default WHERE started_at >= lo AND started_at < hi) THEN
    LOCK TABLE usage_usagerecord IN SHARE ROW EXCLUSIVE MODE;  -- no row lands in DEFAULT meanwhile
    CREATE TEMP TABLE usage_partition_moving (LIKE usage_usagerecord) ON COMMIT DROP;
    WITH gone AS (
      DELETE FROM usage_usagerecord_default WHERE started_at >= lo AND started_at < hi RETURNING *
    )
    INSERT INTO usage_partition_moving SELECT * FROM gone;
    GET DIAGNOSTICS moved = ROW_COUNT;
  END IF;
  EXECUTE format('CREATE TABLE %I PARTITION OF usage_usagerecord FOR VALUES FROM (%L) TO (%L) WITH (fillfactor = 80)',
                 name, lo, hi);
  PERFORM usage_partition_name_indexes(name::regclass);
  IF moved > 0 THEN
    INSERT INTO usage_usagerecord SELECT * FROM usage_partition_moving;
    DROP TABLE usage_partition_moving;
    RAISE WARNING 'usage partition %: % row(s) moved in from the DEFAULT partition', name, moved;
  END IF;
  RETURN name;
END
$$;
"""

EXISTING = r"""
DO $$
DECLARE part regclass;
BEGIN
  FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'usage_usagerecord'::regclass LOOP
    EXECUTE format('ALTER TABLE %s SET (fillfactor = 80)', part);
  END LOOP;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("usage", "0011_usage_archive")]

    operations = [
        migrations.RunSQL(ENSURE, migrations.RunSQL.noop),
        migrations.RunSQL(EXISTING, migrations.RunSQL.noop),
    ]
