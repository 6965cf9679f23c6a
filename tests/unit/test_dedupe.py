"""Dedupe: repeated event ids count once within the TTL; state round-trips."""

import pytest
from hypothesis import given, strategies as st

from daemon.pipeline.dedupe import DedupeFilter, DedupeStats
from tests.native import LOOPS
from tests.native import loop as loop_of


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
    added, _ = _pairs(d.take_changes())
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


class _PerIdFilter:
    """The filter as it was written first, id by id (dict of id -> expiry): the reference for the batch one."""

    def __init__(self, ttl_ms: int, max_ids: int) -> None:
        self.ttl_ms, self.max_ids = ttl_ms, max_ids
        self.expiry: dict[str, int] = {}
        self.buckets: dict[int, list[str]] = {}
        self.added: list[tuple[bytes, int]] = []
        self.before: int | None = None
        self.duplicates = self.evicted = 0

    def keep(self, event_ids, ts_ms, candidates):
        kept = []
        for i in candidates:
            eid = event_ids[i]
            if eid in self.expiry:
                self.duplicates += 1
                continue
            self.expiry[eid] = expiry = ts_ms[i] + self.ttl_ms
            self.buckets.setdefault(expiry // 60_000, []).append(eid)
            self.added.append((eid.encode(), expiry))
            kept.append(i)
        while len(self.expiry) > self.max_ids and self.buckets:
            b = min(self.buckets)
            ids = self.buckets.pop(b)
            for eid in ids:
                self.expiry.pop(eid, None)
            self.evicted += len(ids)
            self.before = max(self.before or 0, (b + 1) * 60_000)
        return kept

    def expire(self, watermark_ms):
        old = [b for b in self.buckets if b < watermark_ms // 60_000]
        for b in old:
            for eid in self.buckets.pop(b):
                self.expiry.pop(eid, None)
        if old:
            self.before = watermark_ms // 60_000 * 60_000

    def take_changes(self):
        out = self.added, self.before
        self.added, self.before = [], None
        return out


def _pairs(changes):
    """take_changes' columns (ids, expiries, bound) as the reference gives them: ((id bytes, expiry) pairs, bound)."""
    ids, expiry_ms, before = changes
    assert expiry_ms.dtype.kind == "i" and len(expiry_ms) == len(ids)
    return list(zip(map(str.encode, ids), expiry_ms.tolist())), before


_steps = st.lists(st.one_of(
    st.tuples(st.just("keep"), st.lists(st.tuples(st.sampled_from("abcdefghij"), st.integers(0, 400_000)),
                                        max_size=12), st.booleans()),
    st.tuples(st.just("expire"), st.integers(0, 600_000)),
    st.tuples(st.just("take"),),
), max_size=25)


def _step_both(d, ref, step) -> bool:
    """A keep or expire step on the filter and the per-id reference (a keep: both keep the same rows,
    odd rows not candidates with skip_odd); False for the other steps, left to the caller."""
    if step[0] == "keep":
        rows, skip_odd = step[1], step[2]
        ids, ts = [r[0] for r in rows], [r[1] for r in rows]
        candidates = [i for i in range(len(rows)) if not (skip_odd and i % 2)]
        assert d.keep(ids, ts, candidates) == ref.keep(ids, ts, candidates)
    elif step[0] == "expire":
        d.expire(step[1])
        ref.expire(step[1])
    else:
        return False
    return True


@given(_steps, st.sampled_from((1, 60_000, 90_000)), st.sampled_from((3, 8, 100)))
def test_batch_filter_equals_the_per_id_reference(steps, ttl_ms, max_ids):
    """keep, expire and take_changes give what the per-id filter gives, on any sequence with repeats."""
    d, ref = DedupeFilter(ttl_ms, max_ids), _PerIdFilter(ttl_ms, max_ids)
    for step in steps:
        if not _step_both(d, ref, step):
            assert _pairs(d.take_changes()) == ref.take_changes()
        assert d.statistics() == DedupeStats(len(ref.expiry), ref.duplicates, ref.evicted)


_big_steps = st.lists(st.one_of(
    st.tuples(st.just("keep"), st.lists(st.tuples(st.integers(0, 400).map(lambda n: f"id-{n}"),
                                                   st.integers(0, 400_000)), max_size=150), st.booleans()),
    st.tuples(st.just("expire"), st.integers(0, 600_000)),
    st.tuples(st.just("take"),),
    st.tuples(st.just("restart"),),
), max_size=25)


@pytest.mark.parametrize("loop", LOOPS)
@given(steps=_big_steps, ttl_ms=st.sampled_from((60_000, 90_000)), max_ids=st.sampled_from((50, 300, 10_000)),
       numpy_min=st.sampled_from((0, 64, 10**9)))
def test_hash_table_equals_the_per_id_reference_on_any_path(loop, steps, ttl_ms, max_ids, numpy_min):
    """The hashed table (probed with numpy for batches of any size, or id by id, or by the compiled
    probe; rebuilt as it grows, after forgetting, and from take_changes after a restart) keeps exactly
    what the per-id filter keeps."""
    import daemon.pipeline.dedupe as dedupe

    saved = dedupe._NUMPY_MIN
    dedupe._NUMPY_MIN = numpy_min
    try:
        with loop_of(dedupe, loop):
            d, ref = DedupeFilter(ttl_ms, max_ids), _PerIdFilter(ttl_ms, max_ids)
            stored: dict[bytes, int] = {}
            for step in steps:
                if step[0] in ("keep", "expire"):
                    _step_both(d, ref, step)
                elif step[0] == "take":
                    got = _pairs(d.take_changes())
                    assert got == ref.take_changes()
                    stored.update(got[0])
                    if got[1] is not None:   # the checkpoint drops what expired
                        stored = {k: v for k, v in stored.items() if v >= got[1]}
                else:   # a restart from what the checkpoint holds
                    got = _pairs(d.take_changes())
                    assert got == ref.take_changes()
                    stored.update(got[0])
                    d = DedupeFilter(ttl_ms, max_ids)
                    d.restore(stored.items())
                    ref = _PerIdFilter(ttl_ms, max_ids)
                    for eid, expiry in stored.items():
                        ref.expiry[eid.decode()] = expiry
                        ref.buckets.setdefault(expiry // 60_000, []).append(eid.decode())
                assert d.statistics() == DedupeStats(len(ref.expiry), ref.duplicates, ref.evicted)
    finally:
        dedupe._NUMPY_MIN = saved


@given(st.lists(st.integers(-2**63, 2**63 - 1) | st.sampled_from([1, 2, 1024, -1024]), max_size=300),
       st.integers(0, 2))
def test_compiled_probe_lays_out_the_table_as_the_python_loop(hashes, grow):
    """The compiled probe and `_insert_each`'s Python loop add the same hashes to the same cells."""
    import numpy as np

    import daemon.pipeline.dedupe as dedupe

    hashes = [h if h not in (0, -1) else 1 for h in hashes]
    tables, masks = {}, {}
    for loop in LOOPS:
        d = DedupeFilter(60_000, 10**6)
        d._rebuild(len(hashes) << grow)
        with loop_of(dedupe, loop):
            masks[loop] = d._insert_each(np.array(hashes, dtype=np.int64)).tolist()
        tables[loop] = d._table.tolist()
        assert d.statistics().ids == sum(masks[loop]) == len(set(hashes))
    assert masks["compiled"] == masks["python"]
    assert tables["compiled"] == tables["python"]


def test_compiled_probe_refuses_a_full_table():
    import numpy as np

    import daemon.pipeline.dedupe as dedupe

    if dedupe._compiled is None:
        pytest.skip("not built (tests/native.py fails the compiled variants for that)")
    table = np.array([5, 6], dtype=np.int64)
    with pytest.raises(ValueError, match="full"):
        dedupe._compiled.insert_each(table, np.array([7], dtype=np.int64), np.zeros(1, dtype=np.uint8))
    with pytest.raises(ValueError, match="power of two"):
        dedupe._compiled.insert_each(np.zeros(3, dtype=np.int64), np.array([7], dtype=np.int64), np.zeros(1, dtype=np.uint8))


def test_restore_of_ids_stored_before_the_hash_table():
    """Ids stored as (UTF-8 bytes, expiry) by the set-based filter, non-ASCII too, restore and are recognised."""
    d = DedupeFilter(ttl_ms=3_600_000, max_ids=100)
    d.restore([("é-1".encode(), 3_600_001), (b"plain", 3_600_002), (memoryview(b"view"), 3_600_003)])
    assert d.statistics().ids == 3
    assert d.keep(["é-1", "plain", "view", "new"], [1, 2, 3, 4], range(4)) == [3]


def test_table_shrinks_once_a_burst_expires():
    """After most ids expire the table is rebuilt smaller, and still knows the ids that remain."""
    d = DedupeFilter(ttl_ms=60_000, max_ids=10**6)
    burst = [f"b{i}" for i in range(20_000)]
    d.keep(burst, [0] * len(burst), range(len(burst)))
    d.keep(["late"], [600_000], [0])
    big = d._table.nbytes
    d.expire(120_000)
    assert d.statistics().ids == 1 and d._table.nbytes * 16 <= big
    assert d.keep(["late", "b1"], [600_001, 600_001], range(2)) == [1]
