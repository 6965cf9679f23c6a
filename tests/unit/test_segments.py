"""State segments (stores/segments.py): packing, and a chain's merge as successive dict updates."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.native import NO_EXTENSIONS_ENV
from daemon.stores import segments

# The builder as the daemon uses it (its `put` compiled when built) and with the Python `put`.
BUILDERS = pytest.mark.parametrize("builder_cls", [segments.SegmentBuilder, segments.PySegmentBuilder],
                                   ids=["as built", "python"])

records = st.dictionaries(st.binary(max_size=30), st.none() | st.binary(max_size=60), max_size=40)


@given(records)
def test_a_segment_unpacks_to_its_records_in_order(recs):
    assert segments.unpack(segments.pack(recs)) == list(recs.items())


@given(st.lists(records, max_size=6))
def test_a_chain_merges_as_successive_updates(chain):
    model: dict[bytes, bytes | None] = {}
    for recs in chain:
        model.update(recs)
    merged = segments.merge(segments.pack(r) for r in chain)
    assert merged == model
    assert segments.live(merged) == {k: v for k, v in model.items() if v is not None}


@BUILDERS
@given(recs=records)
def test_a_builder_partitions_the_records_into_buckets(builder_cls, recs):
    """Each record once, in the bucket of its key, buckets ascending, the records' order kept, each
    bucket's segment the `pack` of its records."""
    built = list(builder_cls.of(recs).segments())
    assert [b for b, _ in built] == sorted({segments.bucket_of(k) for k in recs})
    for b, seg in built:
        mine = {k: v for k, v in recs.items() if segments.bucket_of(k) == b}
        assert seg == segments.pack(mine) and segments.unpack(seg) == list(mine.items())
    assert sum(len(segments.unpack(seg)) for _, seg in built) == len(recs)


@BUILDERS
@given(puts=st.lists(st.tuples(st.binary(max_size=8), st.none() | st.binary(max_size=20)), max_size=60))
def test_a_key_put_twice_in_a_builder_reads_as_its_last_record(builder_cls, puts):
    builder = builder_cls()
    for k, v in puts:
        builder.put(k, v)
    assert len(builder) == len(puts) and bool(builder) == bool(puts)
    assert segments.merge(seg for _, seg in builder.segments()) == dict(puts)


@BUILDERS
@given(puts=st.lists(st.tuples(st.binary(max_size=8), st.none() | st.binary(max_size=40)), max_size=80),
       spill_bytes=st.integers(min_value=1, max_value=400), refuse_at=st.integers(min_value=0, max_value=6))
def test_a_spilling_builder_hands_over_rounds_that_chain_to_its_records(builder_cls, puts, spill_bytes, refuse_at):
    """With `spill`, a builder holds about `spill_bytes` (it spills once past them): its rounds, in
    order, then what it holds at the end, merge per bucket to the records put (the later wins). A
    spill that is refused keeps the records, and every later one, in the builder."""
    rounds: list[list[tuple[int, bytes]]] = []
    refused = []

    def spill(rnd: int, pieces: list[tuple[int, bytes]]) -> bool:
        assert rnd == len(rounds) + 1 and pieces and not refused
        if rnd == refuse_at:
            refused.append(rnd)
            return False
        rounds.append(pieces)
        return True

    built = builder_cls(spill, spill_bytes=spill_bytes)
    for k, v in puts:
        built.put(k, v)
        assert built._bytes < spill_bytes or built._spill is None
    assert len(built) == len(puts)
    assert built.rounds == len(rounds) and [r for r, _, _ in built.spilled] == [
        n for n, pieces in enumerate(rounds, 1) for _ in pieces]
    assert [(b, len(seg)) for pieces in rounds for b, seg in pieces] == [(b, n) for _, b, n in built.spilled]
    assert (built._spill is None) == bool(refused)
    if refused:
        assert built.rounds == refuse_at - 1
    chains: dict[int, list[bytes]] = {}
    for pieces in [*rounds, list(built.segments())]:
        for b, seg in pieces:
            chains.setdefault(b, []).append(seg)
    model: dict[bytes, bytes | None] = {}
    for k, v in puts:
        model.pop(k, None)
        model[k] = v
    merged: dict[bytes, bytes | None] = {}
    for b in sorted(chains):
        merged.update(segments.merge(chains[b]))
    assert merged == model


@given(puts=st.lists(st.tuples(st.binary(max_size=12), st.none() | st.binary(max_size=40)), max_size=80),
       spill_bytes=st.integers(min_value=1, max_value=600), views=st.booleans())
def test_the_compiled_put_builds_what_the_python_put_builds(puts, spill_bytes, views):
    """Same segments, same spilled rounds, same counts, for bytes or bytearray/memoryview values."""
    if segments._compiled is None:
        if os.environ.get(NO_EXTENSIONS_ENV):
            pytest.skip(f"{NO_EXTENSIONS_ENV} is set")
        pytest.fail("daemon.stores._segments was not built: `pip install -e .` needs gcc and the Python headers")
    assert isinstance(segments.SegmentBuilder(), segments._compiled.Buffers)
    out = []
    for cls in (segments.SegmentBuilder, segments.PySegmentBuilder):
        rounds: list = []
        built = cls(lambda rnd, pieces: rounds.append((rnd, pieces)) or True, spill_bytes=spill_bytes)
        for k, v in puts:
            built.put(bytearray(k) if views else k, v if v is None or not views else memoryview(v))
        out.append((rounds, built.spilled, len(built), built._bytes, list(built.take_segments()), len(built)))
    assert out[0] == out[1]


def test_bucket_of_is_fixed_by_the_layout():
    """Stored chains are found by it: it must not change between versions or processes."""
    assert [segments.bucket_of(k) for k in (b"", b"u:alice", b"s[\"bob\"]")] == [0, 35, 53]


def test_a_truncated_segment_is_refused():
    blob = segments.pack({b"k": b"value"})
    with pytest.raises(ValueError, match="segment"):
        segments.unpack(blob[:-1])
