"""The gateway writes usage rows with hand-written SQL; it must name every column of the model."""

from usage.gateway import sql
from usage.models import UsageRecord


def test_gateway_sql_names_every_usage_column():
    model_columns = {field.column for field in UsageRecord._meta.concrete_fields} - {"id", "hold_id"}
    assert set(sql.COLUMNS) == model_columns
    assert set(sql.STARTING_COLUMNS) | set(sql.PENDING_CONSTANTS) == model_columns
    assert set(sql.FINAL_COLUMNS) <= model_columns
