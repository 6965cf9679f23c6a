"""Watermarks: minimum over non-idle sources, monotonic, wall clock when all idle."""

from hypothesis import given, strategies as st

from daemon.pipeline.watermark import NO_WATERMARK, Watermarks


def marks(**kw):
    return Watermarks(["a", "b"], allowed_lateness_ms=kw.get("lateness", 5000), idle_timeout_ms=10_000, start_mono=0.0)


def test_slow_source_holds_the_watermark_back():
    """The pipeline watermark is the minimum of the non-idle sources' watermarks."""
    w = marks()
    w.observe("a", 100_000, 1.0)
    assert w.advance(0, 1.0) == NO_WATERMARK       # b never delivered and is not idle yet
    w.observe("b", 50_000, 1.0)
    assert w.advance(0, 1.0) == 45_000


def test_idle_source_is_released():
    """A source silent for idle_timeout stops holding the watermark back."""
    w = marks()
    w.observe("a", 100_000, 1.0)
    w.observe("b", 50_000, 1.0)
    w.observe("a", 120_000, 9.0)
    assert w.advance(0, 12.0) == 115_000


def test_all_idle_follows_wall_clock():
    """When every source is idle the watermark is now - allowed lateness."""
    w = marks()
    assert w.advance(1_000_000, 20.0) == 995_000


def test_snapshot_restore():
    """A restored watermark keeps its value and per-source maxima."""
    w = marks()
    w.observe("a", 100_000, 1.0)
    w.observe("b", 80_000, 1.0)
    w.advance(0, 1.0)
    w2 = marks()
    w2.restore(w.snapshot(), 0.0)
    assert w2.value == 75_000 and w2.advance(0, 0.0) == 75_000


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 10**7), st.floats(0, 100)), max_size=50))
def test_watermark_never_moves_backwards(steps):
    """Whatever arrives, the pipeline watermark is monotonic."""
    w = marks()
    last = NO_WATERMARK
    mono = 0.0
    for source, ts, dt in steps:
        mono += dt
        w.observe(source, ts, mono)
        now = w.advance(ts, mono)
        assert now >= last
        last = now


def test_touched_source_stays_active():
    """A source with a backlog (touched) keeps holding the watermark back past idle_timeout."""
    w = marks()
    w.observe("a", 100_000, 1.0)
    w.observe("b", 50_000, 1.0)
    w.touch("b", 11.5)
    w.observe("a", 120_000, 11.5)
    assert w.advance(0, 12.0) == 45_000


def test_a_pause_is_not_silence_but_an_idle_source_stays_idle():
    """Time the pipeline spent not consuming (a long commit) does not count toward idle_timeout for a
    source that was active when it began; a source already idle then stays idle."""
    w = marks()
    w.observe("a", 50_000, 1.0)
    w.observe("b", 100_000, 8.0)
    assert w.advance(0, 12.0) == 95_000            # a is idle (11 s), b is not (4 s)
    w.pause(12.0, 18.0)                            # a 6 s commit
    assert w.statistics(19.0).idle_sources == ("a",)   # b: 11 s since its events, 5 s of them listening
    w.observe("b", 110_000, 19.0)
    assert w.advance(0, 19.0) == 105_000
    assert w.statistics(28.0).idle_sources == ("a",)
    assert w.statistics(29.0).idle_sources == ("a", "b")


def test_silence_counts_from_a_sources_start():
    """Before its task starts a source is never idle (the daemon's start-up is not its silence); after,
    idle_timeout counts from the start, restore included."""
    w = Watermarks(["a", "b"], allowed_lateness_ms=5000, idle_timeout_ms=10_000, start_mono=None)
    w.restore({"watermark": 40_000, "sources": {"a": 45_000, "b": 60_000}}, 0.0)
    assert w.advance(1_000_000, 100.0) == 40_000        # nothing started: no source idle, no wall clock
    assert w.statistics(100.0).idle_sources == ()
    w.started("a", 100.0)
    w.started("b", 103.0)
    w.observe("b", 500_000, 104.0)
    assert w.advance(1_000_000, 109.9) == 40_000        # a: 9.9 s since its start, still holds back
    assert w.advance(1_000_000, 110.0) == 495_000       # a idle now; b delivered 6 s ago
    assert w.statistics(114.0).idle_sources == ("a", "b")
