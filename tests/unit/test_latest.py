"""A commit's latest-window entries: the same bytes as one JSON dump per key and per row."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from daemon import jsonbytes
from daemon.events import WindowResult
from daemon.pipeline.latest import latest_entries, window_row

_tricky_text = st.text(alphabet=st.sampled_from('ab",\\[]{}\n\u00e9\U0001f600 '), max_size=8)
_key_values = st.one_of(_tricky_text, st.integers(-5, 5), st.none(), st.floats(allow_nan=False, allow_infinity=False))
_metrics = st.dictionaries(st.sampled_from(("n", "sum", "top", "window_start")),
                           st.one_of(st.integers(0, 9), st.floats(0, 1e6), _tricky_text,
                                     st.lists(st.fixed_dictionaries({"value": _tricky_text, "count": st.integers(1, 3)}),
                                              max_size=2)), max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(((), ("category",), ("item_id",), ("category", "type"))),
       st.lists(st.tuples(st.integers(0, 10**13), st.lists(_key_values, max_size=3), _metrics), max_size=20),
       st.booleans())
def test_entries_equal_one_dump_per_key_and_row(group_by, drawn, fit_keys):
    """For any keys and metrics (quotes, commas, backslashes in strings), the entries are the per-row dumps."""
    results = [WindowResult("agg", start, start + 60_000, tuple(key[:len(group_by)] if fit_keys else key), metrics)
               for start, key, metrics in drawn]
    expected = [("agg", jsonbytes.dumps(list(r.key)), r.window_end_ms, jsonbytes.dumps(window_row(r, group_by)))
                for r in results]
    assert latest_entries("agg", results, group_by) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_tricky_text, _metrics), max_size=20))
def test_one_string_keys_equal_one_dump_per_key(drawn):
    """Keys of one string each (cut from one orjson call) are the per-key dumps, whatever the string holds."""
    results = [WindowResult("agg", 0, 60_000, (key,), metrics) for key, metrics in drawn]
    assert [e[1] for e in latest_entries("agg", results, ("category",))] == [jsonbytes.dumps([k]) for k, _ in drawn]
