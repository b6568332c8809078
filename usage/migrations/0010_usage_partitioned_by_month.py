"""The usage table, partitioned by calendar month (UTC) of started_at (issue 15).

The table is rebuilt as `PARTITION BY RANGE (started_at)`: one partition per month,
usage_usagerecord_pYYYY_MM, and usage_usagerecord_default for a row no month partition takes (a
safety net that stays empty: partitions are made months ahead by usage_partition_ensure, which
moves such rows into their month when it makes it). Old months are archived and dropped whole
(usage/archive.py) instead of deleted row by row.

PostgreSQL only enforces a unique index on a partitioned table if it includes the partition key:
- the primary key is (id, started_at); id still comes from the identity column, so it is unique
  in fact, and Django still sees `id` as the primary key;
- request_id: UNIQUE (request_id, started_at), plus the CHECK usage_request_id_time, which binds a
  time-carrying id (usage/gateway/ids.py) to its started_at, so that the same id can only come
  with the same started_at and the unique index refuses it wherever it would land. The uuid4 ids
  written before this migration are left alone by the CHECK; they were unique when copied here
  (the old unique index) and nothing makes them any more;
- hold_id: the one-to-one's unique index becomes a plain index (the sweeper's lookup); a hold
  belongs to one request (billing_hold.request_id), and the request to one row.

The conversion copies the rows once, with the indexes built after the copy, in this migration's
transaction: the table is locked for its duration (bench figures: docs/operations.md), so the
gateway is stopped or drained while it runs.
"""

from django.db import migrations, models

# Returns the id's start for a time-carrying id (usage/gateway/ids.py), NULL for any other. Exact:
# bigint microseconds, and interval arithmetic is exact below 2^53 µs.
FUNCTIONS = r"""
CREATE FUNCTION usage_request_started(request_id text) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT CASE WHEN request_id ~ '^req_[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}$' THEN
    timestamptz 'epoch' + (('x' || lpad(substr(request_id, 5, 12), 16, '0'))::bit(64)::bigint * 1000
                           + ('x' || substr(request_id, 18, 3))::bit(12)::int) * interval '1 microsecond'
  END
$$;

-- A partition's indexes are named after the parent's (usage_time_p2026_12, not an abbreviation of
-- their columns), so that a plan says which index of which month it reads.
CREATE FUNCTION usage_partition_name_indexes(part regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  suffix text := substring(part::text from '_(p\d{4}_\d{2}|default)$');
  found record;
BEGIN
  FOR found IN
    SELECT child.relname AS child, parent.relname || '_' || suffix AS wanted
      FROM pg_index i
      JOIN pg_class child ON child.oid = i.indexrelid
      JOIN pg_inherits inh ON inh.inhrelid = i.indexrelid
      JOIN pg_class parent ON parent.oid = inh.inhparent
     WHERE i.indrelid = part AND child.relname <> parent.relname || '_' || suffix
  LOOP
    EXECUTE format('ALTER INDEX %I RENAME TO %I', found.child, found.wanted);
  END LOOP;
END
$$;

-- The partition of the UTC month that contains `moment`, made if missing; returns its name. A
-- row of that month already in the DEFAULT partition (none in normal operation) is moved into the
-- new partition in the same transaction: PostgreSQL refuses to make a partition while DEFAULT
-- holds rows it would take. The caller sets a lock_timeout (usage/partitions.py): making a
-- partition locks the parent table, and must not queue the gateway's writes behind a long read.
CREATE FUNCTION usage_partition_ensure(moment timestamptz) RETURNS text
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
  EXECUTE format('CREATE TABLE %I PARTITION OF usage_usagerecord FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
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

CONVERT = r"""
-- The index builds after the copy sort every row: in memory rather than on disk where they can.
SET LOCAL maintenance_work_mem = '512MB';

ALTER TABLE usage_usagerecord RENAME TO usage_usagerecord_unpartitioned;

CREATE TABLE usage_usagerecord (
    LIKE usage_usagerecord_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY
) PARTITION BY RANGE (started_at);
CREATE TABLE usage_usagerecord_default PARTITION OF usage_usagerecord DEFAULT;

-- A partition for every month of the rows copied, and this month and the next three.
SELECT usage_partition_ensure(month)
  FROM generate_series(
         date_trunc('month', least(now(), (SELECT min(started_at) FROM usage_usagerecord_unpartitioned)), 'UTC'),
         now() + interval '3 months', interval '1 month') AS month;

ALTER TABLE usage_usagerecord ADD CONSTRAINT usage_request_id_time
    CHECK (usage_request_started(request_id) IS NULL OR usage_request_started(request_id) = started_at);

INSERT INTO usage_usagerecord OVERRIDING SYSTEM VALUE SELECT * FROM usage_usagerecord_unpartitioned;
SELECT setval(pg_get_serial_sequence('usage_usagerecord', 'id'),
              coalesce((SELECT max(id) FROM usage_usagerecord), 0) + 1, false);
DROP TABLE usage_usagerecord_unpartitioned;

-- The indexes of migrations 0001–0007, on the parent (each partition gets its own), and the keys.
ALTER TABLE usage_usagerecord ADD CONSTRAINT usage_usagerecord_pkey PRIMARY KEY (id, started_at);
ALTER TABLE usage_usagerecord ADD CONSTRAINT usage_request_id_unique UNIQUE (request_id, started_at);
CREATE INDEX usage_hold ON usage_usagerecord (hold_id);
CREATE INDEX usage_trace_id ON usage_usagerecord (trace_id);
CREATE INDEX usage_response_id ON usage_usagerecord (account_id, response_id) WHERE NOT response_id = '';
CREATE INDEX usage_account_time ON usage_usagerecord (account_id, started_at DESC);
CREATE INDEX usage_key_time ON usage_usagerecord (api_key_id, started_at DESC);
CREATE INDEX usage_time ON usage_usagerecord (started_at DESC, id DESC);
CREATE INDEX usage_account_model_time ON usage_usagerecord (account_id, model_requested, started_at DESC);
CREATE INDEX usage_account_error_time ON usage_usagerecord (account_id, started_at DESC) WHERE NOT error_class = '';

ALTER TABLE usage_usagerecord
  ADD CONSTRAINT usage_usagerecord_account_id_dcd45f70_fk_billing_account_id
      FOREIGN KEY (account_id) REFERENCES billing_account (id) DEFERRABLE INITIALLY DEFERRED,
  ADD CONSTRAINT usage_usagerecord_api_key_id_93ec9f60_fk_billing_apikey_id
      FOREIGN KEY (api_key_id) REFERENCES billing_apikey (id) DEFERRABLE INITIALLY DEFERRED,
  ADD CONSTRAINT usage_usagerecord_hold_id_70037258_fk_billing_hold_id
      FOREIGN KEY (hold_id) REFERENCES billing_hold (id) DEFERRABLE INITIALLY DEFERRED,
  ADD CONSTRAINT usage_usagerecord_price_snapshot_id_ccad8dc7_fk_billing_p
      FOREIGN KEY (price_snapshot_id) REFERENCES billing_pricesnapshot (id) DEFERRABLE INITIALLY DEFERRED,
  ADD CONSTRAINT usage_usagerecord_route_id_6fc71940_fk_billing_route_id
      FOREIGN KEY (route_id) REFERENCES billing_route (id) DEFERRABLE INITIALLY DEFERRED;

SELECT usage_partition_name_indexes(inhrelid) FROM pg_inherits WHERE inhparent = 'usage_usagerecord'::regclass;

ANALYZE usage_usagerecord;
"""


class Migration(migrations.Migration):
    atomic = True

    dependencies = [
        ("billing", "0010_invoices"),
        ("usage", "0009_usage_exports"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(FUNCTIONS + CONVERT)],
            state_operations=[
                migrations.RemoveConstraint(model_name="usagerecord", name="usage_request_id_unique"),
                migrations.AddConstraint(
                    model_name="usagerecord",
                    constraint=models.UniqueConstraint(
                        fields=("request_id", "started_at"), name="usage_request_id_unique"
                    ),
                ),
                migrations.AlterField(
                    model_name="usagerecord",
                    name="hold",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=models.deletion.PROTECT,
                        related_name="usage_records",
                        to="billing.hold",
                    ),
                ),
                migrations.AddIndex(model_name="usagerecord", index=models.Index(fields=["hold"], name="usage_hold")),
            ],
        ),
    ]
