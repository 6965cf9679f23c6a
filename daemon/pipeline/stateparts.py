"""The stateful parts the runner folds: aggregations with their moving averages and anomaly detectors.

Each part hands its changed state to the checkpoint under its own namespace
(`agg:<name>`, `ma:<name>`, `anomaly:<name>`) and is restored from it. The recommender (with its
trending) is folded in its own process, daemon/replica/; its state is the `recs` namespace.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from daemon.aggconfig import AggregationConfig
from daemon.analyzers.anomaly import AnomalyDetector
from daemon.analyzers.moving_average import MovingAverages
from daemon.config import Config
from daemon.events import Anomaly, EventBatch, WindowResult
from daemon.metrics import build_metric
from daemon.stores.schemas import window_schema
from daemon.stores.segments import SPILL_BYTES, SegmentBuilder
from daemon.windows.aggregator import Aggregator
from daemon.windows.closing import ClosePoint, close_point


@dataclass(slots=True)
class AggregationPart:
    """One `[[aggregations]]` entry at run time."""

    cfg: AggregationConfig
    aggregator: Aggregator
    averages: MovingAverages | None
    detector: AnomalyDetector | None
    schema: Any   # pyarrow schema of windows/<name>
    last_step: int = 0   # watermark // slide at the last detector call

    @classmethod
    def build(cls, cfg: AggregationConfig) -> AggregationPart:
        kinds = [(m.name, build_metric(m).kind) for m in cfg.metrics]
        extra: list[str] = []
        if cfg.moving_average is not None:
            for m in cfg.moving_average.of:
                extra += [f"{m}_sma", f"{m}_ema"]
        return cls(
            cfg=cfg,
            aggregator=Aggregator(cfg),
            averages=MovingAverages(cfg.moving_average) if cfg.moving_average else None,
            detector=AnomalyDetector.from_aggregation(cfg) if cfg.anomaly else None,
            schema=window_schema(cfg.group_by, kinds, extra),
        )


class StateParts:
    """Every stateful analysis part of the pipeline, addressed by checkpoint namespace."""

    def __init__(self, cfg: Config) -> None:
        self.aggregations: dict[str, AggregationPart] = {a.name: AggregationPart.build(a) for a in cfg.aggregations}
        self._deletes: dict[str, dict[bytes, bytes | None]] = {}   # namespaces of removed aggregations
        self._emitted: set[str] = set()
        self.dropped_on_restore: list[str] = []   # aggregations whose stored state no longer fits the config

    def namespaces(self, name: str) -> list[str]:
        """The checkpoint namespaces holding an aggregation's state."""
        return [f"agg:{name}", f"ma:{name}", f"anomaly:{name}"]

    def add_aggregation(self, cfg: AggregationConfig) -> None:
        """A new (or changed) aggregation starts empty; it folds events from now on."""
        self.aggregations[cfg.name] = AggregationPart.build(cfg)

    def remove_aggregation(self, name: str, stored: dict[str, list[bytes]]) -> None:
        """Drop an aggregation and delete its stored state at the next commit."""
        self.aggregations.pop(name, None)
        for ns, keys in stored.items():
            self._deletes.setdefault(ns, {}).update(dict.fromkeys(keys))

    def aggregation(self, name: str) -> AggregationPart:
        return self.aggregations[name]

    def observe(self, batch: EventBatch) -> None:
        for part in self.aggregations.values():
            part.aggregator.add(batch)

    def close_point(self, target_ms: int, max_rows: int) -> ClosePoint:
        """The watermark <= target_ms to close at next so that at most ~max_rows rows are emitted
        over all aggregations (target_ms itself when they fit; see windows/closing.py)."""
        due = [(e, part.aggregator.splittable) for part in self.aggregations.values()
               if len(e := part.aggregator.due_ends(target_ms))]
        return close_point([e for e, _ in due], target_ms, max_rows, [s for _, s in due])

    def close(self, watermark_ms: int, max_rows: int | None = None) -> tuple[dict[str, list[WindowResult]], list[Anomaly]]:
        """Close every aggregation at the watermark (each tumbling or hopping one emitting at most
        `max_rows`: ClosePoint.limit); the closed rows per aggregation, and the anomalies they made."""
        closed: dict[str, list[WindowResult]] = {}
        anomalies: list[Anomaly] = []
        for name, part in self.aggregations.items():
            results = part.aggregator.close(watermark_ms, max_rows)
            if results and part.averages is not None:
                results = part.averages.apply(results)
            step = part.cfg.window.slide_ms
            if part.detector is not None and (results or (step and watermark_ms // step != part.last_step)):
                # Also on a window boundary with no results at all: a total outage is a drop to zero.
                part.last_step = watermark_ms // step if step else 0
                # A close that stopped at max_rows emitted less than the watermark passed: the detector
                # takes zeros only through what was emitted, and for no key of a window end emitted in part.
                through = part.aggregator.closed_through_ms
                anomalies.extend(part.detector.observe(
                    results, closed_until_ms=watermark_ms if through is None else min(watermark_ms, through),
                    open_end=part.aggregator.partial_end))
                self._emitted.add(name)
            if results:
                closed[name] = results
                self._emitted.add(name)
        return closed, anomalies

    def take_changes(self, *, packed: bool = False, spill: Callable[[str, int, list[tuple[int, bytes]]], bool] | None = None,
                     spill_bytes: int = SPILL_BYTES) -> dict[str, dict[bytes, bytes | None] | SegmentBuilder]:
        """Every change since the last call, per namespace: key -> value (None deletes). With `packed`,
        an aggregation's changes come already packed per bucket (a SegmentBuilder: a full state write
        of 10^5-10^6 changed states is not held as a bytes object per key and value), and with
        `spill(namespace, round, segments)` (Checkpoint.stage) its builder hands them over as it
        fills (SegmentBuilder's `spill`)."""
        out: dict[str, dict[bytes, bytes | None] | SegmentBuilder] = dict(self._deletes)
        self._deletes = {}
        for name, part in self.aggregations.items():
            ns = f"agg:{name}"
            gone = out.pop(ns, None)   # a removed aggregation of the same name: its deletes go first
            if packed:
                builder = SegmentBuilder(functools.partial(spill, ns) if spill is not None else None, spill_bytes)
                for key, value in (gone or {}).items():
                    builder.put(key, value)
                part.aggregator.take_changes_into(builder.put)
                out[ns] = builder
            else:
                changes = part.aggregator.take_changes()
                out[ns] = changes if not gone else {**gone, **changes}
            if name not in self._emitted:
                continue
            if part.averages is not None:
                out.setdefault(f"ma:{name}", {}).update(_changes(part.averages))
            if part.detector is not None:
                out[f"anomaly:{name}"] = {b"state": part.detector.snapshot()}
        self._emitted.clear()
        return {ns: ch for ns, ch in out.items() if ch}

    def restore(self, state: dict[str, Iterable[tuple[bytes, bytes]]]) -> None:
        for ns, items in state.items():
            kind, _, name = ns.partition(":")
            items = list(items)
            part = self.aggregations.get(name)
            if kind == "agg" and part is not None:
                try:
                    part.aggregator.restore(items)
                except ValueError as exc:
                    # Stored under the same name by a different config: start this aggregation empty.
                    self.aggregations[name] = AggregationPart.build(part.cfg)
                    self._deletes[ns] = dict.fromkeys((k for k, _ in items), None)
                    self.dropped_on_restore.append(f"{name}: {exc}")
            elif kind == "ma" and part is not None and part.averages is not None:
                _restore(part.averages, items)
            elif kind == "anomaly" and part is not None and part.detector is not None:
                part.detector.restore(dict(items)[b"state"])

    def statistics(self) -> dict[str, Any]:
        return {name: part.aggregator.statistics() for name, part in self.aggregations.items()}


def _changes(obj: Any) -> dict[bytes, bytes | None]:
    if hasattr(obj, "take_changes"):
        return obj.take_changes()
    return {b"state": obj.snapshot()}


def _restore(obj: Any, items: list[tuple[bytes, bytes]]) -> None:
    if hasattr(obj, "restore_items"):
        obj.restore_items(items)
    else:
        obj.restore(dict(items)[b"state"])
