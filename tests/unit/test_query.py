"""`storepulse query` over real Arrow files written by the store's ArrowFiles writer in tmp_path."""

from __future__ import annotations

import argparse
import datetime as dt
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import query
from daemon.stores import schemas
from daemon.stores.arrow_files import ArrowFiles

DAY_MS = 86_400_000
T0 = 1_714_521_600_000          # 2024-05-01T00:00:00Z


def event(i: int, *, typ: str, user: str, qty: int = 1, price: float | None = 10.0, category: str = "books",
          ts: int | None = None) -> dict:
    ts = T0 + i * 60_000 if ts is None else ts
    revenue = (price or 0.0) * qty if typ == "purchase" else 0.0
    return dict(event_id=f"e{i}", ts=ts, type=typ, user_id=user, session_id=None, item_id=f"i{i % 4}",
                category=category, price=price, quantity=qty, revenue=revenue, source="orders", received_at=ts + 5)


def write(data_dir: Path, table: str, rows: list[dict], schema: pa.Schema, seq: int = 1) -> None:
    ArrowFiles(data_dir).write(table, seq, pa.Table.from_pylist(rows, schema=schema))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="storepulse query")
    query.add_arguments(parser)
    return parser.parse_args(argv)


def run_json(data_dir: Path, argv: list[str], capfd: pytest.CaptureFixture[str]) -> list[dict]:
    code = query.run(parse([*argv, "--data-dir", str(data_dir), "--json"]))
    out, err = capfd.readouterr()
    assert code == 0, err
    return orjson.loads(out)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """Three users' events over two days, split across two files."""
    rows = [event(0, typ="purchase", user="alice", qty=2), event(1, typ="purchase", user="bob", qty=5),
            event(2, typ="view", user="alice", price=None), event(3, typ="purchase", user="alice", qty=4),
            event(4, typ="cart", user="carol", qty=1, category="toys")]
    later = [event(5, typ="purchase", user="carol", qty=1, price=99.5, category="toys", ts=T0 + DAY_MS + 1000),
             event(6, typ="purchase", user="bob", qty=3, ts=T0 + DAY_MS + 2000)]
    write(tmp_path, "events", rows, schemas.EVENTS, seq=1)
    write(tmp_path, "events", later, schemas.EVENTS, seq=2)
    return tmp_path


def test_issue_example_sums_quantity_per_buyer(shop: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """`events --where type=purchase --group-by user_id --sum quantity --top 10` ranks buyers by units."""
    rows = run_json(shop, ["events", "--where", "type=purchase", "--group-by", "user_id", "--sum", "quantity",
                           "--top", "10"], capfd)
    assert rows == [{"user_id": "bob", "sum_quantity": 8}, {"user_id": "alice", "sum_quantity": 6},
                    {"user_id": "carol", "sum_quantity": 1}]


def test_top_keeps_the_largest_groups(shop: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """--top N keeps the N rows with the largest first aggregate."""
    rows = run_json(shop, ["events", "--group-by", "user_id", "--top", "1"], capfd)
    assert rows == [{"user_id": "alice", "count": 3}]


def test_every_aggregate_function(shop: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """count, sum, mean, min, max and distinct per group, named <fn>_<field>."""
    rows = run_json(shop, ["events", "--where", "type=purchase", "--group-by", "category", "--count",
                           "--sum", "revenue", "--mean", "quantity", "--min", "price", "--max", "price",
                           "--distinct", "user_id"], capfd)
    assert rows == [
        {"category": "books", "count": 4, "sum_revenue": 140.0, "mean_quantity": 3.5, "min_price": 10.0,
         "max_price": 10.0, "distinct_user_id": 2},
        {"category": "toys", "count": 1, "sum_revenue": 99.5, "mean_quantity": 1.0, "min_price": 99.5,
         "max_price": 99.5, "distinct_user_id": 1},
    ]


def test_aggregate_without_group_by_is_one_row(shop: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Aggregates without --group-by answer one row over everything that matches."""
    assert run_json(shop, ["events", "--count", "--sum", "quantity"], capfd) == [{"count": 7, "sum_quantity": 17}]


@pytest.mark.parametrize(("cond", "expected"), [
    ("type!=purchase", 2),
    ("type=view,cart", 2),
    ("quantity>2", 3),
    ("quantity>=2", 4),
    ("quantity<2", 3),
    ("price<=10", 5),
    ("user_id~aro", 2),
    ("ts>=2024-05-02", 2),
])
def test_where_operators(shop: Path, capfd: pytest.CaptureFixture[str], cond: str, expected: int) -> None:
    """Each --where operator (= list, !=, >, >=, <, <=, ~) filters as written; values take the column's type."""
    assert run_json(shop, ["events", "--where", cond, "--count"], capfd) == [{"count": expected}]


def test_where_conditions_are_anded(shop: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Several --where options must all hold."""
    assert run_json(shop, ["events", "--where", "type=purchase", "--where", "user_id=bob", "--count"], capfd) == [{"count": 2}]


def test_since_until_select_by_time_column(shop: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """--since is inclusive and --until exclusive on the table's time column, in RFC 3339, dates or epoch ms."""
    assert run_json(shop, ["events", "--since", "2024-05-02", "--count"], capfd) == [{"count": 2}]
    assert run_json(shop, ["events", "--until", "2024-05-01T00:03:00Z", "--count"], capfd) == [{"count": 3}]
    assert run_json(shop, ["events", "--since", str(T0 + 60_000), "--until", str(T0 + 120_000), "--count"], capfd) == [{"count": 1}]


def test_relative_since_counts_back_from_now() -> None:
    """A duration as --since means that long before now."""
    spec = query.spec_from_args(parse(["events", "--since", "2h"]), now_ms=10_000_000)
    assert spec.since_ms == 10_000_000 - 7_200_000


def test_rows_listing_is_newest_first_and_limited(shop: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Without aggregates the rows come newest first, cut to --limit, with --columns only."""
    rows = run_json(shop, ["events", "--columns", "event_id,ts", "--limit", "2"], capfd)
    assert rows == [{"event_id": "e6", "ts": "2024-05-02T00:00:02.000Z"}, {"event_id": "e5", "ts": "2024-05-02T00:00:01.000Z"}]


def test_sort_option_orders_groups(shop: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """--sort COLUMN:desc orders the result by any result column."""
    rows = run_json(shop, ["events", "--group-by", "user_id", "--sum", "quantity", "--sort", "sum_quantity:desc"], capfd)
    assert [r["user_id"] for r in rows] == ["bob", "alice", "carol"]


def test_partition_date_can_be_grouped(shop: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The hive `date` partition is a column like the others."""
    rows = run_json(shop, ["events", "--group-by", "date"], capfd)
    assert rows == [{"date": "2024-05-01", "count": 5}, {"date": "2024-05-02", "count": 2}]


def test_windows_table_and_schema_evolution(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """windows/<agg> reads every file; a metric added later reads as null in older files."""
    old = schemas.window_schema(["category"], [("orders", "int64")])
    new = schemas.window_schema(["category"], [("orders", "int64"), ("revenue", "float64")])
    write(tmp_path, "windows/sales", [{"window_start": T0, "window_end": T0 + 60_000, "category": "books", "orders": 3}], old, 1)
    write(tmp_path, "windows/sales", [{"window_start": T0 + 60_000, "window_end": T0 + 120_000, "category": "books",
                                       "orders": 2, "revenue": 20.0}], new, 2)
    rows = run_json(tmp_path, ["windows", "sales", "--sort", "window_start:asc"], capfd)
    assert [(r["orders"], r["revenue"]) for r in rows] == [(3, None), (2, 20.0)]
    assert rows[0]["window_start"] == "2024-05-01T00:00:00.000Z"
    assert run_json(tmp_path, ["windows/sales", "--group-by", "category", "--sum", "orders"], capfd) == [
        {"category": "books", "sum_orders": 5}]


def test_unknown_aggregation_names_the_known_ones(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Asking for a missing aggregation lists the ones on disk and exits 2."""
    write(tmp_path, "windows/sales", [{"window_start": T0, "window_end": T0 + 1, "orders": 1}],
          schemas.window_schema([], [("orders", "int64")]))
    assert query.run(parse(["windows/nope", "--data-dir", str(tmp_path)])) == 2
    err = capfd.readouterr().err
    assert "no aggregation 'nope'" in err and "(found: sales)" in err


def test_deadletter_raw_bytes_come_out_as_text(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Dead letters (alias dead-letters) filter on reason and print their raw bytes as text."""
    rows = [{"received_at": T0, "source": "orders", "reason": "malformed_json", "detail": "line 1", "raw": b"{oops"},
            {"received_at": T0 + 1, "source": "orders", "reason": "late", "detail": "ts < wm", "raw": b'{"a":1}'}]
    write(tmp_path, "deadletter", rows, schemas.DEADLETTER)
    out = run_json(tmp_path, ["dead-letters", "--where", "reason=malformed_json"], capfd)
    assert out == [{"received_at": "2024-05-01T00:00:00.000Z", "source": "orders", "reason": "malformed_json",
                    "detail": "line 1", "raw": "{oops", "date": "2024-05-01"}]
    assert run_json(tmp_path, ["deadletter", "--group-by", "reason"], capfd) == [
        {"reason": "late", "count": 1}, {"reason": "malformed_json", "count": 1}]


def test_table_output_is_aligned_with_footer(shop: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The default output is a header, a rule, aligned rows (numbers right-aligned) and a row count."""
    assert query.run(parse(["events", "--group-by", "user_id", "--sum", "revenue", "--data-dir", str(shop)])) == 0
    lines = capfd.readouterr().out.splitlines()
    assert lines[0].split() == ["user_id", "sum_revenue"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2:5] == ["alice             60", "bob               80", "carol           99.5"]
    assert lines[-1] == "(3 rows)"


@pytest.mark.parametrize(("argv", "message"), [
    (["events", "--where", "nope=1"], "unknown column 'nope'"),
    (["events", "--where", "quantity=lots"], "'lots' is not a int64 value"),
    (["events", "--where", "justtext"], "expected FIELD=VALUE"),
    (["events", "--sum", "type"], "cannot aggregate"),
    (["tables"], "unknown table 'tables'"),
    (["windows"], "name an aggregation"),
    (["events", "--since", "yesterday-ish"], "bad time"),
])
def test_bad_queries_exit_2_with_a_reason(shop: Path, capfd: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    """A query the data cannot answer exits 2 with one line saying why."""
    assert query.run(parse([*argv, "--data-dir", str(shop)])) == 2
    err = capfd.readouterr().err
    assert message in err and err.count("\n") == 1


def test_no_files_is_an_empty_answer(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A table with no files yet answers [] (and says so on stderr), exit 0."""
    assert query.run(parse(["anomalies", "--data-dir", str(tmp_path), "--json"])) == 0
    out, err = capfd.readouterr()
    assert orjson.loads(out) == [] and "no Arrow files" in err


def test_data_dir_comes_from_the_config(shop: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Without --data-dir, -c CONFIG's storage.data_dir is read."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{shop}"\n')
    assert query.run(parse(["events", "--count", "-c", str(cfg), "--json"])) == 0
    assert orjson.loads(capfd.readouterr().out) == [{"count": 7}]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["view", "cart", "purchase"]), st.sampled_from(["u1", "u2", "u3"]),
                          st.integers(1, 9), st.integers(0, 3 * DAY_MS)), min_size=1, max_size=60))
def test_group_sums_match_a_plain_fold(tmp_path_factory: pytest.TempPathFactory, rows: list) -> None:
    """For any events, per-user counts and quantity sums of purchases equal a plain Python fold."""
    data_dir = tmp_path_factory.mktemp("q")
    events = [event(i, typ=t, user=u, qty=q, ts=T0 + off) for i, (t, u, q, off) in enumerate(rows)]
    write(data_dir, "events", events, schemas.EVENTS)
    spec = query.spec_from_args(parse(["events", "--where", "type=purchase", "--group-by", "user_id",
                                       "--count", "--sum", "quantity"]))
    got = {r["user_id"]: (r["count"], r["sum_quantity"]) for r in query.execute(data_dir, spec).to_pylist()}
    counts: Counter[str] = Counter()
    sums: defaultdict[str, int] = defaultdict(int)
    for t, u, q, _ in rows:
        if t == "purchase":
            counts[u] += 1
            sums[u] += q
    assert got == {u: (counts[u], sums[u]) for u in counts}


def test_parse_time_forms() -> None:
    """Times parse from RFC 3339 (Z or offset), naive ISO as UTC, dates and epoch ms."""
    assert query.parse_time_ms("2024-05-01T00:00:01Z", 0) == T0 + 1000
    assert query.parse_time_ms("2024-05-01T02:00:00+02:00", 0) == T0
    assert query.parse_time_ms("2024-05-01", 0) == T0
    assert query.parse_time_ms(str(T0), 0) == T0
    assert dt.datetime.fromtimestamp(T0 / 1000, dt.timezone.utc).date() == dt.date(2024, 5, 1)


def test_a_folder_merged_between_listing_and_reading_is_listed_again(shop: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """The daemon swaps a merged folder in while a query runs (today's is merged as it fills): the
    query's listing names files that are gone; it lists again and counts every row once."""
    from daemon.stores.compaction import Compactor

    day = dt.date(2024, 5, 1)
    for seq in range(3, 6):   # more files on the first day, so that the merge replaces several
        write(shop, "events", [event(10 + seq, typ="view", user="dave", price=None)], schemas.EVENTS, seq=seq)
    real_open = query.open_dataset
    calls = []

    def open_then_merge(data_dir: Path, table: str):
        dataset = real_open(data_dir, table)
        calls.append(table)
        if len(calls) == 1:   # listed: now the compaction swaps the folder before the read
            compactor = Compactor(ArrowFiles(data_dir))
            names = [n for n, _ in compactor.files.partition_files("events", day)]
            staged = compactor.stage("events", day, names)
            assert compactor.swap("events", day, staged, names)
            compactor.discard(staged)
        return dataset

    monkeypatch.setattr(query, "open_dataset", open_then_merge)
    out = run_json(shop, ["events", "--count", "--group-by", "user_id", "--since", "3000d"], capfd)
    assert len(calls) == 2
    assert {r["user_id"]: r["count"] for r in out} == {"alice": 3, "bob": 2, "carol": 2, "dave": 3}
    assert len(list((shop / "events" / "date=2024-05-01").iterdir())) == 1


def test_a_file_gone_at_every_attempt_is_an_error_not_a_wrong_answer(shop: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capfd: pytest.CaptureFixture[str]) -> None:
    def gone(data_dir: Path, spec: query.QuerySpec) -> pa.Table:
        raise FileNotFoundError(2, "Failed to open local file", str(data_dir / "events"))

    monkeypatch.setattr(query, "_execute_once", gone)
    monkeypatch.setattr(query.time, "sleep", lambda s: None)
    assert query.run(parse(["events", "--count", "--data-dir", str(shop)])) == 1
    assert "cannot read events" in capfd.readouterr().err
