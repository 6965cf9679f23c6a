"""GcWatch counts and times real collections of CPython's cyclic GC while installed."""

import gc

from daemon.runtime.gcwatch import GcWatch


def test_counts_and_times_collections_only_while_installed():
    watch = GcWatch()
    watch.install()
    try:
        junk = [[i] for i in range(200_000)]   # something for a full collection to walk
        for _ in range(3):
            gc.collect()
        st = watch.statistics()
        assert st.collections >= 3 and st.full_collections >= 3
        assert st.seconds > 0 and 0 < st.max_pause_ms <= st.seconds * 1000
        del junk
    finally:
        watch.uninstall()
    gc.collect()
    assert watch.statistics().collections == st.collections
    assert watch._callback not in gc.callbacks
