"""Request ids that carry their request's start, to the microsecond.

The usage table is partitioned by month of `started_at` (usage migration 0010), and PostgreSQL
can only enforce a unique index on a partitioned table if it includes the partition key: the
table has UNIQUE (request_id, started_at), not UNIQUE (request_id). What makes request_id unique
on its own is that an id says when its request started: a CHECK (usage_request_id_time) binds an
id of this shape to its row's started_at, so two rows with the same id have the same started_at
and the unique index refuses the second, whichever months they would fall in.

The shape is a UUIDv7 (RFC 9562) in hex after "req_": 48 bits of Unix milliseconds, the version
nibble 7, 12 bits of the microsecond within that millisecond (RFC 9562's "increased clock
precision", method 3, here the plain count 0–999), the variant bits and 62 random bits — the same
length as the uuid4 ids before it (whose version nibble is 4, so the CHECK leaves them alone).
Time-ordered ids also land at the right edge of the request_id index instead of at a random
page of it on every insert.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
SHAPE = re.compile(r"req_[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}")  # the CHECK's, in migration 0010


def request_id(started_at: datetime) -> str:
    """The id of a request that started at `started_at` (aware; its microseconds are kept)."""
    millis, micros = divmod((started_at - EPOCH) // MICROSECOND, 1000)
    value = millis << 80 | 0x7 << 76 | micros << 64 | 0b10 << 62 | secrets.randbits(62)
    return f"req_{value:032x}"


def started_at(request_id: str) -> datetime | None:
    """When the request of a time-carrying id started; None for any other id (uuid4 ids made
    before migration 0010, ids written by tests). SQL: usage_request_started(request_id)."""
    if not SHAPE.fullmatch(request_id):
        return None
    value = int(request_id[4:], 16)
    return EPOCH + ((value >> 80) * 1000 + (value >> 64 & 0xFFF)) * MICROSECOND
