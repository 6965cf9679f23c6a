"""Which `date=` partitions of the Arrow tables have outlived `[storage.retention]` (pure).

A partition holds the rows whose time column (`schemas.time_column`) falls on one UTC date. It is
expired once the whole of that date lies further back than the table's retention: with `events =
"7d"`, `date=2026-11-01` goes at 2026-11-09 00:00 UTC, when its newest possible row is 7 days old.
The null partition (rows without a time) has no date and is never expired.

"Now" is the pipeline's watermark, never later than the wall clock (`archive_time`): a wall clock
set a year ahead by mistake deletes nothing, and a replay of last month's events keeps them until
the events themselves have moved on past the retention.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

DAY_MS = 86_400_000
_EPOCH = dt.date(1970, 1, 1)


def table_kind(table: str) -> str:
    """The retention setting that covers an Arrow table: "windows/<aggregation>" → "windows"."""
    return table.partition("/")[0]


def partition_day(folder_name: str) -> dt.date | None:
    """The date of a `date=YYYY-MM-DD` folder name; None for any other name (the null partition too)."""
    key, sep, value = folder_name.partition("=")
    if key != "date" or not sep:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def day_end_ms(day: dt.date) -> int:
    """Epoch ms at which `day` (UTC) ends."""
    return ((day - _EPOCH).days + 1) * DAY_MS


def is_expired(day: dt.date, now_ms: int, keep_ms: int) -> bool:
    """Whether every row a partition of `day` can hold is older than `keep_ms` at `now_ms`."""
    return day_end_ms(day) <= now_ms - keep_ms


def expired_days(days: Iterable[dt.date], now_ms: int, keep_ms: int) -> list[dt.date]:
    """The expired ones of `days`, oldest first."""
    return sorted(d for d in days if is_expired(d, now_ms, keep_ms))


def archive_time(wall_ms: int, watermark_ms: int | None) -> int | None:
    """The time retention and compaction go by: the watermark (event time, which nothing that is
    still to come can precede by more than the allowed lateness), capped by the wall clock; None
    before the first event, when nothing is old yet."""
    if watermark_ms is None:
        return None
    return min(wall_ms, watermark_ms)
