"""`storepulse query`: filter, group by and aggregate the Arrow files offline, as a table or JSON.

Reads `<data_dir>/{windows/<agg>,events,deadletter,anomalies}/date=YYYY-MM-DD/*.arrow` with
pyarrow.dataset (only needed columns; `date=` partitions pruned by --since/--until).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from daemon.stores.schemas import time_column
from daemon.units import parse_duration_s

TABLES = ("events", "deadletter", "anomalies", "windows")
ALIASES = {"dead-letters": "deadletter", "deadletters": "deadletter", "dead_letters": "deadletter", "window": "windows"}
AGGREGATES = ("count", "sum", "mean", "min", "max", "distinct")
PARTITION = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(!=|>=|<=|=|>|<|~)(.*)$", re.S)
MAX_CELL_CHARS = 60
DEFAULT_ROW_LIMIT = 100
# A file listed then gone (the daemon merged the folder, or retention deleted it, between the listing and
# the read): the query lists again, this many times in all, after 50, 100, ... ms.
READ_ATTEMPTS = 4


class QueryError(ValueError):
    """A query the data cannot answer (unknown table or column, a bad condition); exit status 2."""


@dataclass(frozen=True, slots=True)
class Condition:
    column: str
    op: str          # = != > >= < <= ~ (substring)
    value: str

    @classmethod
    def parse(cls, text: str) -> Condition:
        match = _CONDITION.match(text)
        if match is None:
            raise QueryError(f"--where {text!r}: expected FIELD=VALUE (or != > >= < <= ~), e.g. type=purchase")
        return cls(match.group(1), match.group(2), match.group(3).strip())


@dataclass(frozen=True, slots=True, kw_only=True)
class QuerySpec:
    """What to read and compute; `aggregates` are (function, column) with column "" for count."""

    table: str                                  # "events", "deadletter", "anomalies", "windows/<agg>"
    where: tuple[Condition, ...] = ()
    since_ms: int | None = None
    until_ms: int | None = None
    group_by: tuple[str, ...] = ()
    aggregates: tuple[tuple[str, str], ...] = ()
    columns: tuple[str, ...] = ()
    sort: tuple[str, bool] | None = None        # (column, descending)
    top: int | None = None
    limit: int | None = None

    @property
    def aggregated(self) -> bool:
        return bool(self.group_by or self.aggregates)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the query options to `parser` (the subcommand's parser)."""
    parser.add_argument("table", help="events | deadletter | anomalies | windows/<aggregation> (or: windows <aggregation>)")
    parser.add_argument("aggregation", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("-c", "--config", help="config file to take storage.data_dir from "
                        "(default: $STOREPULSE_CONFIG or config/storepulse.toml)")
    parser.add_argument("--data-dir", help="read this data_dir instead of the config's")
    parser.add_argument("--where", action="append", default=[], metavar="COND",
                        help="FIELD=VALUE, FIELD=A,B (any of), != > >= < <=, or FIELD~TEXT (contains); repeat to AND")
    parser.add_argument("--since", help="rows at or after TIME on the table's time column: RFC 3339, "
                        "YYYY-MM-DD, epoch ms, or a duration ago (\"2h\")")
    parser.add_argument("--until", help="rows before TIME (same forms as --since)")
    parser.add_argument("--group-by", action="append", default=[], metavar="FIELDS", help="group by these fields (comma list)")
    parser.add_argument("--count", action="store_true", help="count rows (the default with --group-by)")
    for fn in ("sum", "mean", "min", "max"):
        parser.add_argument(f"--{fn}", action="append", default=[], metavar="FIELD", help=f"{fn} of FIELD (repeatable)")
    parser.add_argument("--distinct", action="append", default=[], metavar="FIELD", help="count distinct values of FIELD")
    parser.add_argument("--columns", metavar="FIELDS", help="columns to show when not aggregating (comma list)")
    parser.add_argument("--sort", metavar="COLUMN[:asc|desc]", help="order of the rows (default: group keys, "
                        "or newest first when not aggregating)")
    parser.add_argument("--top", type=int, metavar="N", help="the N rows with the largest first aggregate")
    parser.add_argument("--limit", type=int, metavar="N", help=f"at most N rows (default {DEFAULT_ROW_LIMIT} "
                        "when not aggregating)")
    parser.add_argument("--json", action="store_true", help="print a JSON array of objects instead of a table")


def run(args: argparse.Namespace) -> int:
    """Run the subcommand: 0 on success, 1 when the data cannot be read, 2 for a bad query."""
    try:
        spec = spec_from_args(args)
        data_dir = resolve_data_dir(args)
        if data_dir is None:
            return 1
        result = execute(Path(data_dir), spec)
        if result.num_columns == 0:
            print(f"storepulse query: no Arrow files under {Path(data_dir) / spec.table}", file=sys.stderr)
    except QueryError as exc:
        print(f"storepulse query: {exc}", file=sys.stderr)
        return 2
    except (OSError, pa.ArrowException) as exc:
        print(f"storepulse query: cannot read {spec.table} under {data_dir}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(to_json(result) if args.json else format_table(result).encode())
    return 0


def spec_from_args(args: argparse.Namespace, now_ms: int | None = None) -> QuerySpec:
    """The parsed command line as a QuerySpec (no I/O)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    aggregates = [(fn, col) for fn in ("sum", "mean", "min", "max", "distinct") for col in _names(getattr(args, fn))]
    group_by = tuple(_names(args.group_by))
    if args.count or (group_by and not aggregates):
        aggregates.insert(0, ("count", ""))
    sort = None
    if args.sort:
        column, _, order = args.sort.partition(":")
        if order not in ("", "asc", "desc"):
            raise QueryError(f"--sort {args.sort!r}: the order is asc or desc")
        sort = (column, order != "asc" if order else False)
    for flag in ("top", "limit"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise QueryError(f"--{flag} must be at least 1")
    return QuerySpec(
        table=table_name(args.table, args.aggregation),
        where=tuple(Condition.parse(w) for w in args.where),
        since_ms=parse_time_ms(args.since, now_ms) if args.since else None,
        until_ms=parse_time_ms(args.until, now_ms) if args.until else None,
        group_by=group_by, aggregates=tuple(aggregates),
        columns=tuple(_names([args.columns] if args.columns else [])),
        sort=sort, top=args.top, limit=args.limit,
    )


def _names(values: Sequence[str]) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def table_name(table: str, aggregation: str | None) -> str:
    """Normalise `windows NAME`, `windows/NAME` and the dead-letter aliases to a folder under data_dir."""
    base, _, name = table.partition("/")
    base = ALIASES.get(base, base)
    name = name or aggregation or ""
    if base not in TABLES:
        raise QueryError(f"unknown table {table!r} (one of: events, deadletter, anomalies, windows/<aggregation>)")
    if base == "windows":
        if not name:
            raise QueryError("windows: name an aggregation, e.g. `windows/sales_by_category`")
        return f"windows/{name}"
    if aggregation:
        raise QueryError(f"unexpected argument {aggregation!r} after {table!r}")
    return base


def parse_time_ms(text: str, now_ms: int) -> int:
    """Epoch ms from RFC 3339, a date (UTC midnight), epoch ms digits, or a duration before now ("2h")."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        return now_ms - round(parse_duration_s(text) * 1000)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise QueryError(f"bad time {text!r}: use RFC 3339, YYYY-MM-DD, epoch ms or a duration like 2h") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


def resolve_data_dir(args: argparse.Namespace) -> str | None:
    """--data-dir, else the config's storage.data_dir (problems printed, None returned)."""
    if args.data_dir:
        return args.data_dir
    from daemon.config import load_config, resolve_config_path
    from daemon.errors import ConfigErrors

    try:
        return load_config(resolve_config_path(args.config)).storage.data_dir
    except ConfigErrors as errs:
        for e in errs.errors:
            print(str(e), file=sys.stderr)
        return None


def open_dataset(data_dir: Path, table: str) -> ds.Dataset | None:
    """The table's files as one dataset with the union of their schemas; None when there are none."""
    root = data_dir / table
    if not root.is_dir():
        if table.startswith("windows/") and (data_dir / "windows").is_dir():
            known = sorted(p.name for p in (data_dir / "windows").iterdir() if p.is_dir())
            raise QueryError(f"no aggregation {table[8:]!r} under {data_dir / 'windows'} (found: {', '.join(known) or 'none'})")
        return None
    found = ds.dataset(root, format="ipc", partitioning=PARTITION)
    schemas = [frag.physical_schema for frag in found.get_fragments()]
    if not schemas:
        return None
    # Files written before an aggregation gained a metric lack that column; they read as null.
    schema = pa.unify_schemas([*schemas, PARTITION.schema], promote_options="permissive")
    return ds.dataset(root, format="ipc", partitioning=PARTITION, schema=schema)


def execute(data_dir: Path, spec: QuerySpec) -> pa.Table:
    """Run the query over the files of `spec.table` under data_dir, listing them again when one went
    away meanwhile: a compaction's swap or retention's delete replaces a folder's files at once, so the
    next listing sees the merged files (every row once) or none of the deleted day."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return _execute_once(data_dir, spec)
        except FileNotFoundError:
            if attempt == READ_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def _execute_once(data_dir: Path, spec: QuerySpec) -> pa.Table:
    dataset = open_dataset(data_dir, spec.table)
    if dataset is None:
        return pa.table({})
    schema = dataset.schema
    _check_columns(schema, [c.column for c in spec.where] + list(spec.group_by) + list(spec.columns)
                   + [col for _, col in spec.aggregates if col])
    table = dataset.to_table(columns=_needed_columns(spec, schema), filter=build_filter(spec, schema))
    return shape(table, spec)


def _check_columns(schema: pa.Schema, names: Sequence[str]) -> None:
    for name in names:
        if schema.get_field_index(name) < 0:
            raise QueryError(f"unknown column {name!r} (columns: {', '.join(schema.names)})")


def _needed_columns(spec: QuerySpec, schema: pa.Schema) -> list[str]:
    if spec.aggregated:
        wanted = list(spec.group_by) + [col for _, col in spec.aggregates if col]
        if spec.sort and schema.get_field_index(spec.sort[0]) >= 0:
            wanted.append(spec.sort[0])
        return list(dict.fromkeys(wanted))
    wanted = list(spec.columns) or schema.names
    if spec.sort and spec.sort[0] not in wanted and schema.get_field_index(spec.sort[0]) >= 0:
        wanted.append(spec.sort[0])
    return wanted


def build_filter(spec: QuerySpec, schema: pa.Schema) -> pc.Expression | None:
    """The AND of the --where conditions and the --since/--until bounds as a dataset filter."""
    parts = [_condition_expr(c, schema.field(c.column).type) for c in spec.where]
    time_col = time_column(spec.table)
    if schema.get_field_index(time_col) >= 0:
        typ = schema.field(time_col).type
        if spec.since_ms is not None:
            parts.append(ds.field(time_col) >= _time_scalar(spec.since_ms, typ))
            parts.append(ds.field("date") >= _date(spec.since_ms))     # prunes older partitions
        if spec.until_ms is not None:
            parts.append(ds.field(time_col) < _time_scalar(spec.until_ms, typ))
            parts.append(ds.field("date") <= _date(spec.until_ms))
    if not parts:
        return None
    expr = parts[0]
    for p in parts[1:]:
        expr = expr & p
    return expr


def _date(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).date().isoformat()


def _time_scalar(ms: int, typ: pa.DataType) -> pa.Scalar:
    return pa.scalar(ms, pa.int64()).cast(typ) if pa.types.is_timestamp(typ) else pa.scalar(ms, typ)


def _condition_expr(c: Condition, typ: pa.DataType) -> pc.Expression:
    column = ds.field(c.column)
    if c.op == "~":
        if not pa.types.is_string(typ):
            raise QueryError(f"--where {c.column}~...: ~ (contains) needs a text column, {c.column} is {typ}")
        return pc.match_substring(column, c.value)
    if c.op == "=" and "," in c.value:
        values = [_value(c.column, v.strip(), typ) for v in c.value.split(",")]
        return column.isin(pa.array([v.as_py() for v in values], typ))
    value = _value(c.column, c.value, typ)
    return {"=": column == value, "!=": column != value, ">": column > value,
            ">=": column >= value, "<": column < value, "<=": column <= value}[c.op]


def _value(column: str, text: str, typ: pa.DataType) -> pa.Scalar:
    """`text` as a scalar of the column's type."""
    try:
        if pa.types.is_timestamp(typ):
            return _time_scalar(parse_time_ms(text, int(time.time() * 1000)), typ)
        if pa.types.is_integer(typ):
            return pa.scalar(int(text), typ)
        if pa.types.is_floating(typ):
            return pa.scalar(float(text), typ)
        if pa.types.is_boolean(typ):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return pa.scalar(text.lower() == "true", typ)
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            return pa.scalar(text, typ)
        if pa.types.is_binary(typ):
            return pa.scalar(text.encode(), typ)
    except (ValueError, QueryError):
        raise QueryError(f"--where {column}: {text!r} is not a {typ} value") from None
    raise QueryError(f"--where {column}: cannot compare a {typ} column")


def shape(table: pa.Table, spec: QuerySpec) -> pa.Table:
    """Group and aggregate, then sort and cut the rows as the spec says."""
    keys = [(k, "ascending") for k in spec.group_by]
    if spec.aggregated:
        aggs = [([], "count_all") if fn == "count" else (col, "count_distinct" if fn == "distinct" else fn)
                for fn, col in spec.aggregates]
        try:
            table = table.group_by(list(spec.group_by)).aggregate(aggs)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise QueryError(f"cannot aggregate: {str(exc).splitlines()[0]}") from None
        table = table.rename_columns([_result_name(n, spec) for n in table.column_names])
        table = table.select(list(spec.group_by) + [_agg_name(fn, col) for fn, col in spec.aggregates])
    elif not spec.sort:
        time_col = time_column(spec.table)
        if time_col in table.column_names:
            keys = [(time_col, "descending")]
    if spec.top is not None and spec.aggregates:
        fn, col = spec.aggregates[0]
        keys = [(_agg_name(fn, col), "descending")] + keys
    if spec.sort:
        if spec.sort[0] not in table.column_names:
            raise QueryError(f"--sort {spec.sort[0]!r}: not a column of the result ({', '.join(table.column_names)})")
        keys = [(spec.sort[0], "descending" if spec.sort[1] else "ascending")] + keys
    if keys and table.num_rows:
        table = table.sort_by(list(dict.fromkeys(keys)))
    limit = spec.top or spec.limit or (None if spec.aggregated else DEFAULT_ROW_LIMIT)
    if not spec.aggregated and spec.columns:
        table = table.select(list(spec.columns))
    return table.slice(0, limit) if limit is not None else table


def _agg_name(fn: str, col: str) -> str:
    return "count" if fn == "count" else f"{fn}_{col}"


def _result_name(name: str, spec: QuerySpec) -> str:
    """pyarrow's `<col>_<fn>` result names → `<fn>_<col>` (`count_all` → `count`)."""
    if name == "count_all":
        return "count"
    for fn, col in spec.aggregates:
        if name == f"{col}_{'count_distinct' if fn == 'distinct' else fn}":
            return _agg_name(fn, col)
    return name


def to_json(table: pa.Table) -> bytes:
    """A JSON array of row objects; times as RFC 3339 UTC strings in ms, binary as text."""
    return orjson.dumps(table.to_pylist(), default=_json_default,
                        option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS) + b"\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dt.datetime):
        return _rfc3339_ms(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _rfc3339_ms(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_table(table: pa.Table) -> str:
    """Aligned columns with a header, numbers right-aligned, and a `(N rows)` footer."""
    if table.num_columns == 0:
        return "(0 rows)\n"
    names = table.column_names
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in table.schema.types]
    rows = [[_cell(v) for v in row.values()] for row in table.to_pylist()]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(out) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.4f}".rstrip("0").rstrip(".") if 1e-4 <= abs(value) < 1e15 else f"{value:.6g}"
    elif isinstance(value, dt.datetime):
        text = _rfc3339_ms(value)
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    elif isinstance(value, (list, dict)):
        text = orjson.dumps(value, default=_json_default).decode()
    else:
        text = str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS - 1] + "…"
