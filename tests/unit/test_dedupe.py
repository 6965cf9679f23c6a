"""Dedupe: repeated event ids count once within the TTL; state round-trips."""

from hypothesis import given, strategies as st

from daemon.pipeline.dedupe import DedupeFilter


def test_repeats_are_dropped_within_and_across_batches():
    """The first occurrence wins, in the batch and in later batches."""
    d = DedupeFilter(ttl_ms=3_600_000, max_ids=100)
    assert d.keep(["a", "b", "a"], [1, 2, 3], range(3)) == [0, 1]
    assert d.keep(["b", "c"], [4, 5], range(2)) == [1]
    assert d.statistics().duplicates == 2


def test_ids_expire_after_the_ttl_passes_the_watermark():
    """Once the watermark passes ts + ttl (bucketed by minute), the id is forgotten."""
    d = DedupeFilter(ttl_ms=60_000, max_ids=100)
    d.keep(["a"], [0], [0])
    d.expire(60_000)
    assert d.keep(["a"], [1], [0]) == []
    d.expire(10 * 60_000)
    assert d.keep(["a"], [700_000], [0]) == [0]


def test_changes_restore_the_same_filter():
    """take_changes() → restore() rebuilds a filter that rejects the same ids."""
    d = DedupeFilter(ttl_ms=3_600_000, max_ids=100)
    d.keep(["a", "b"], [1, 2], range(2))
    added, _ = d.take_changes()
    d2 = DedupeFilter(ttl_ms=3_600_000, max_ids=100)
    d2.restore(added)
    assert d2.keep(["a", "b", "c"], [1, 2, 3], range(3)) == [2]


@given(st.lists(st.text(min_size=1, max_size=3), max_size=200))
def test_memory_is_bounded(ids):
    """The filter never holds more than max_ids ids (plus one bucket being filled)."""
    d = DedupeFilter(ttl_ms=60_000, max_ids=20)
    for i, eid in enumerate(ids):
        d.keep([eid], [i * 30_000], [0])
        assert d.statistics().ids <= 20 + 2
