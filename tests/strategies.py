"""Hypothesis strategies shared by the tests: timestamps, events and EventBatches, window specs,
metric inputs and batch splits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hypothesis import strategies as st

from daemon.aggconfig import AggregationConfig, WindowSpec, parse_metric
from daemon.events import EVENT_TYPES, FIELDS, EventBatch

T0_MS = 1_700_000_000_000          # 2023-11-14, a realistic epoch-ms base
CATEGORIES = ("books", "games", "garden", "toys")
ITEMS = tuple(f"i{n}" for n in range(12))
USERS = tuple(f"u{n}" for n in range(8))


def timestamps(span_ms: int = 3_600_000, base_ms: int = T0_MS) -> st.SearchStrategy[int]:
    """Epoch milliseconds in [base_ms, base_ms + span_ms)."""
    return st.integers(min_value=base_ms, max_value=base_ms + span_ms - 1)


def prices() -> st.SearchStrategy[float]:
    """Non-negative prices: cents-like values and arbitrary finite floats (tests exact sums)."""
    cents = st.integers(min_value=0, max_value=100_000).map(lambda c: c / 100)
    return st.one_of(cents, st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False))


@st.composite
def event_rows(draw: st.DrawFn, ts: st.SearchStrategy[int] | None = None) -> dict[str, Any]:
    """One validated event as a dict of the canonical FIELDS (event_id filled in by batches)."""
    etype = draw(st.sampled_from(EVENT_TYPES))
    price = draw(prices()) if etype in ("cart", "purchase") else draw(st.none() | prices())
    quantity = draw(st.integers(min_value=1, max_value=5))
    return {
        "event_id": "",
        "ts": draw(ts if ts is not None else timestamps()),
        "type": etype,
        "user_id": draw(st.sampled_from(USERS)),
        "session_id": draw(st.none() | st.sampled_from(("s1", "s2", "s3"))),
        "item_id": None if etype == "search" else draw(st.sampled_from(ITEMS)),
        "category": draw(st.none() | st.sampled_from(CATEGORIES)),
        "price": price,
        "quantity": quantity,
        "revenue": price * quantity if etype == "purchase" and price is not None else 0.0,
    }


def batch_from_rows(rows: Iterable[Mapping[str, Any]], source: str = "test") -> EventBatch:
    """An EventBatch holding these rows (missing event_ids become e<n>)."""
    batch = EventBatch(source)
    for n, row in enumerate(rows):
        for name in FIELDS:
            value = row.get(name)
            if name == "event_id" and not value:
                value = f"e{n}"
            getattr(batch, name).append(value)
    return batch


def event_batches(min_size: int = 0, max_size: int = 60,
                  ts: st.SearchStrategy[int] | None = None) -> st.SearchStrategy[EventBatch]:
    """EventBatches of unique event ids."""
    return st.lists(event_rows(ts), min_size=min_size, max_size=max_size).map(batch_from_rows)


def splits(items: Sequence[Any]) -> st.SearchStrategy[list[list[Any]]]:
    """`items` cut into consecutive non-empty pieces at drawn positions."""
    n = len(items)
    cuts = st.sets(st.integers(min_value=1, max_value=max(n - 1, 1)), max_size=max(n - 1, 0))
    return cuts.map(lambda c: [list(items[a:b]) for a, b in zip([0, *sorted(c)], [*sorted(c), n]) if a < b])


def fixed_window_specs() -> st.SearchStrategy[WindowSpec]:
    """Tumbling and hopping specs (size a multiple of slide)."""
    slide = st.sampled_from((1_000, 5_000, 60_000, 300_000))
    tumbling = slide.map(lambda s: WindowSpec(type="tumbling", size_ms=s, slide_ms=s))
    hopping = st.tuples(slide, st.integers(min_value=1, max_value=6)).map(
        lambda p: WindowSpec(type="hopping", size_ms=p[0] * p[1], slide_ms=p[0]))
    return tumbling | hopping


def session_specs() -> st.SearchStrategy[WindowSpec]:
    """Session specs with gaps from 1 s to 30 min."""
    return st.sampled_from((1_000, 30_000, 60_000, 1_800_000)).map(lambda g: WindowSpec(type="session", gap_ms=g))


def window_specs() -> st.SearchStrategy[WindowSpec]:
    """Any window spec."""
    return fixed_window_specs() | session_specs()


def numeric_values(max_size: int = 50) -> st.SearchStrategy[list[float | None]]:
    """Metric inputs for numeric metrics (with None holes)."""
    return st.lists(st.none() | prices() | st.integers(min_value=0, max_value=10), max_size=max_size)


def label_values(max_size: int = 50) -> st.SearchStrategy[list[str | None]]:
    """Metric inputs for distinct/topk (few distinct labels, so counts repeat)."""
    return st.lists(st.none() | st.sampled_from(ITEMS + USERS), max_size=max_size)


ALL_METRICS = {
    "orders": "count", "revenue": "sum(revenue)", "avg_price": "mean(price)", "low": "min(price)",
    "high": "max(price)", "buyers": "distinct(user_id)", "p95_price": "p95(price)",
    "top_items": "topk(item_id, 3)",
}


def aggregation(window: WindowSpec, *, metrics: Mapping[str, str] | None = None, group_by: Sequence[str] = (),
                where: Sequence[tuple[str, tuple[Any, ...]]] = (), max_keys: int = 1_000_000,
                name: str = "agg") -> AggregationConfig:
    """An AggregationConfig built in code (metrics as TOML expressions)."""
    specs = tuple(parse_metric(k, v) for k, v in (metrics or ALL_METRICS).items())
    return AggregationConfig(name=name, where=tuple(where), group_by=tuple(group_by), window=window,
                             metrics=specs, max_keys=max_keys)


def group_bys() -> st.SearchStrategy[tuple[str, ...]]:
    """Group-by field lists: none, one (with None values) or two fields."""
    return st.sampled_from(((), ("category",), ("item_id",), ("category", "type"), ("user_id",)))


# Values a feed may put in a field: the valid kinds and every kind of wrong one, near each bound.
_ODD_VALUES = st.sampled_from((None, True, False, 0, -1, 1.5, float("nan"), float("inf"), "", "x" * 129, "x" * 257,
                               [], {}, "view", 2**63, -(2**63), 2**53, 10**9 + 1, 1e12 + 1, -0.0))
_FIELD_VALUES = {
    "event_id": st.text(min_size=1, max_size=4) | st.sampled_from(("x" * 128, "x" * 129, "", 7)),
    "ts": timestamps() | st.sampled_from(("2023-11-14T22:13:20Z", "2023-11-14T22:13:20.5+02:00",
                                          "2023-11-14T22:13:20", "yesterday", -1, 2**53, 1.7e12)),
    "type": st.sampled_from((*EVENT_TYPES, "buy", "View")),
    "user_id": st.sampled_from(USERS) | st.integers(min_value=-(2**64), max_value=2**64),
    "item_id": st.sampled_from(ITEMS) | st.integers(min_value=-10, max_value=10) | st.none(),
    "session_id": st.none() | st.sampled_from(("s1", "x" * 256)),
    "category": st.none() | st.sampled_from(CATEGORIES),
    "price": st.none() | prices() | st.integers(min_value=0, max_value=10**13),
    "quantity": st.none() | st.integers(min_value=-1, max_value=10**9 + 1),
    "seq": st.none() | st.integers(min_value=0, max_value=10**6),
}


@st.composite
def raw_events(draw: st.DrawFn, renames: Mapping[str, str] | None = None) -> object:
    """One decoded value as a feed sends it: mostly a valid event (ids as str or int, ts as epoch ms or
    RFC 3339), sometimes a field missing, mistyped or out of bounds, sometimes not an object at all."""
    if draw(st.integers(min_value=0, max_value=30)) == 0:
        return draw(_ODD_VALUES | st.lists(st.integers(), max_size=2))
    row = draw(event_rows())
    event = {k: v for k, v in row.items() if k != "revenue" and v is not None}
    event["event_id"] = draw(st.text(min_size=1, max_size=4))
    event["seq"] = draw(st.integers(min_value=0, max_value=10**6))
    for name in draw(st.lists(st.sampled_from(sorted(_FIELD_VALUES)), max_size=2)):
        if draw(st.booleans()):
            event.pop(name, None)
        else:
            event[name] = draw(_FIELD_VALUES[name] | _ODD_VALUES)
    names = renames or {}
    return {names.get(k, k): v for k, v in event.items()}
