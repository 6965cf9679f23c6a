"""Config keys every source shares: queue capacity, overflow policy, field renames."""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.events import FIELDS
from daemon.tomlreader import TableReader

OVERFLOW_POLICIES = ("block", "drop_oldest", "drop_newest")


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSettings:
    """The bounded queue in front of a source: capacity in events and what to do when full."""

    capacity: int = 10_000
    overflow: str = "block"


@dataclass(frozen=True, slots=True, kw_only=True)
class CommonSourceSettings:
    queue: QueueSettings = field(default_factory=QueueSettings)
    renames: tuple[tuple[str, str], ...] = ()   # (canonical field, name in the feed)

    @classmethod
    def from_reader(cls, r: TableReader) -> CommonSourceSettings:
        queue = QueueSettings(
            capacity=r.int("queue_capacity", 10_000, min_value=1, max_value=100_000_000),
            overflow=r.choice("overflow", "block", OVERFLOW_POLICIES),
        )
        renames = r.str_map("fields")
        for canonical in renames:
            if canonical not in FIELDS or canonical == "revenue":
                r.error(f"fields.{canonical}", f"not an event field (one of {', '.join(FIELDS[:-1])})")
        return cls(queue=queue, renames=tuple(sorted(renames.items())))


def check_url(r: TableReader, key: str, schemes: tuple[str, ...]) -> str:
    """Read a required URL and check its scheme."""
    url = r.str(key, required=True)
    if url and not url.startswith(tuple(f"{s}://" for s in schemes)):
        r.error(key, f"must start with {' or '.join(s + '://' for s in schemes)}, got {url!r}")
    return url
