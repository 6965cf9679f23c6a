"""Online anomaly detection per key over one metric's window series: spikes and drops, with hysteresis.

Per key, on a variance-stabilised scale (y = sqrt(x + 3/8) for count-like metrics): an EWMA level
plus a daily seasonal term once a key has a day of history; the noise scale comes from successive
differences (von Neumann), so a ramp in traffic does not inflate it. Score = (y - expected) / scale.
An incident opens on one window with |score| >= threshold, or on a run of smaller same-signed scores
(CUSUM); it closes after `close_after` calm windows, and the baseline is frozen while it is open.
A key younger than `warmup` windows is scored against a prior learned from other keys' first
windows, so a key that starts hot (a bot) is caught at once; drops need the key's own history.

Missing windows: the detector keeps an aggregation clock (the newest window end seen). When the
results of window W arrive, every tracked key without a result for W gets value 0 for W (count-like
metrics only, `zero_fill`), so a checkout outage shows up in the very window it empties. All
results of one window must come in the same `observe` call (the aggregator emits a closed window's
keys together); `closed_until_ms` also fills windows that closed with no result at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from daemon.aggconfig import AggregationConfig, AnomalySpec
from daemon.events import Anomaly, WindowResult
from daemon import jsonbytes

ZERO_FILL_FUNCS = frozenset({"count", "sum", "distinct"})   # no events means 0
POISSON_FUNCS = frozenset({"count", "distinct"})             # sqrt-scale noise is at least 1/2
_CLIP = 3.0            # residuals beyond this many scales move the level no further
_CATCH_UP_MAX = 32     # empty windows replayed for a key coming back from dormancy


class _Key:
    """One key's baseline and incident state (a plain slots record: this is the hot path)."""

    __slots__ = ("n", "level", "prev", "var", "cusum", "last_end", "seen_end", "dormant", "season",
                 "inc_dir", "inc_start", "inc_last_end", "inc_calm", "inc_len", "peak")

    def __init__(self, level: float, var: float, end: int) -> None:
        self.n = 0                       # windows learned
        self.level, self.var = level, var
        self.prev: float | None = None   # last learned y, for successive differences
        self.cusum = 0.0                 # signed: > 0 accumulates spikes, < 0 drops
        self.last_end = self.seen_end = end   # last window scored / last window with a real result
        self.dormant = False             # at its zero floor: not filled window by window
        self.season: list[float] | None = None
        self.inc_dir = 0                 # 0 none, +1 spike, -1 drop
        self.inc_start = self.inc_last_end = self.inc_calm = self.inc_len = 0
        self.peak = (0.0, 0.0, 0.0)      # (score, value, expected) of the incident's strongest window

    def dump(self) -> list[Any]:
        return [self.n, self.level, self.prev, self.var, self.cusum, self.last_end, self.seen_end, self.dormant,
                self.season, self.inc_dir, self.inc_start, self.inc_last_end, self.inc_calm, self.inc_len,
                list(self.peak)]

    @classmethod
    def load(cls, row: list[Any]) -> _Key:
        k = cls(0.0, 0.0, 0)
        (k.n, k.level, k.prev, k.var, k.cusum, k.last_end, k.seen_end, k.dormant, k.season, k.inc_dir,
         k.inc_start, k.inc_last_end, k.inc_calm, k.inc_len, peak) = row
        k.peak = (peak[0], peak[1], peak[2])
        return k


class AnomalyDetector:
    """Spike/drop detector for one aggregation's metric: `observe` online, `fit`/`predict` offline.

    Emits an Anomaly with state "open" when an incident starts and one with state "closed" when it
    ends; the closed one spans the incident (first to last anomalous window) and carries its peak.
    After `max_open_windows` an incident is closed and its level accepted as the new normal.
    `method = "threshold"` alerts on value >= threshold instead (spikes only).
    """

    def __init__(self, spec: AnomalySpec, aggregation: str, *, step_ms: int | None = None,
                 zero_fill: bool = True, transform: str = "sqrt", poisson_floor: bool = True,
                 alpha: float = 0.25, beta: float = 0.1, gamma: float = 0.1, prior_weight: float = 12.0,
                 cusum_k: float = 0.25, cusum_spikes: bool = False, clip: float = _CLIP,
                 diff_clip: float = 2.5,
                 close_ratio: float = 0.5, close_after: int = 1, max_open_windows: int = 30, period_ms: int = 86_400_000, season_bins: int = 24,
                 forget_after: int = 240, max_keys: int = 200_000) -> None:
        if transform not in ("sqrt", "none"):
            raise ValueError("transform must be 'sqrt' or 'none'")
        self.spec, self.aggregation, self.metric = spec, aggregation, spec.metric
        self._opts = {"step_ms": step_ms, "zero_fill": zero_fill, "transform": transform,
                      "poisson_floor": poisson_floor, "alpha": alpha, "beta": beta, "gamma": gamma,
                      "prior_weight": prior_weight, "cusum_k": cusum_k, "cusum_spikes": cusum_spikes,
                      "clip": clip, "diff_clip": diff_clip, "close_ratio": close_ratio, "close_after": close_after, "max_open_windows": max_open_windows, "period_ms": period_ms,
                      "season_bins": season_bins, "forget_after": forget_after, "max_keys": max_keys}
        self.zero_fill, self.sqrt, self.poisson_floor = zero_fill, transform == "sqrt", poisson_floor
        self.alpha, self.beta, self.gamma, self.prior_weight = alpha, beta, gamma, prior_weight
        self.close_ratio, self.close_after, self.max_open_windows = close_ratio, close_after, max_open_windows
        self.period_ms, self.season_bins = period_ms, season_bins
        self.forget_after, self.max_keys = forget_after, max_keys
        self.clip = clip
        self.diff_clip = diff_clip
        self.threshold = 1.0 if spec.method == "threshold" else spec.threshold
        self.cusum_k = cusum_k * self.threshold    # CUSUM allowance, in score units (its limit is the threshold)
        self.cusum_spikes = cusum_spikes
        # the EWMA level is itself uncertain: forecast errors are wider than the noise by this factor
        self._inflate = math.sqrt(1.0 + alpha / (2.0 - alpha))
        self._nu = (2.0 - beta) / beta      # the effective sample size of an EWMA with weight beta
        self._fixed_step = step_ms
        self._learn_only = False
        self._reset()

    @classmethod
    def from_aggregation(cls, agg: AggregationConfig, **kwargs: Any) -> AnomalyDetector:
        """The detector for an aggregation's `anomaly` table (window step and metric kind filled in)."""
        if agg.anomaly is None:
            raise ValueError(f"aggregation {agg.name!r} has no anomaly table")
        func = next((m.func for m in agg.metrics if m.name == agg.anomaly.metric), "count")
        step = agg.window.slide_ms if agg.window.type != "session" else 0
        opts: dict[str, Any] = {"step_ms": step, "zero_fill": func in ZERO_FILL_FUNCS and step > 0,
                                "transform": "sqrt" if func in ZERO_FILL_FUNCS else "none",
                                "poisson_floor": func in POISSON_FUNCS}
        opts.update(kwargs)
        return cls(agg.anomaly, agg.name, **opts)

    def _reset(self) -> None:
        self._keys: dict[tuple[Any, ...], _Key] = {}
        self._step = self._fixed_step or 0
        self._size = self._step   # window length (differs from the step for hopping windows)
        self._clock_end = 0      # newest window end seen
        self._open: tuple[int, bool] | None = None   # (end, not a baseline) of a window end emitted in part
        self._windows = 0        # window ends seen (the global warm-up)
        self._prior = [0.0, 0.0, 0]   # mean, variance and count of keys' first y values
        self._pool = [0.0, 0]         # noise variance pooled over all keys' active windows, and its count

    # -- online ---------------------------------------------------------------------------------

    def observe(self, results: Sequence[WindowResult], closed_until_ms: int | None = None,
                open_end: int | None = None) -> list[Anomaly]:
        """Score closed windows (in emission order); return the incidents they opened and closed.

        `open_end`: the rows of that window end (the last in `results`) are not all here: a close
        emitted them in part (Aggregator.partial_end). Its keys still missing are taken for zeros
        only once the rest has come, so a window end split over several closes scores as one."""
        out: list[Anomaly] = []
        i, n = 0, len(results)
        while i < n:
            end = results[i].window_end_ms
            j = i
            while j < n and results[j].window_end_ms == end:
                j += 1
            if end > self._clock_end or (self._open is not None and end == self._open[0]):
                # (results of a window older than the clock were already filled)
                self._window(results[i:j], end, out, complete=end != open_end)
            i = j
        if self._open is not None and self._open[0] != open_end:   # its rest came with no rows
            end, skip = self._open
            self._open = None
            if not skip:
                self._fill_until(end, out)
        if closed_until_ms is not None and self._step and self._clock_end:
            last = self._clock_end + (closed_until_ms - self._clock_end) // self._step * self._step
            if last > self._clock_end:
                self._fill_until(last, out)
                self._tick(last)
        return out

    def _window(self, group: Sequence[WindowResult], end: int, out: list[Anomaly], *, complete: bool = True) -> None:
        if self._open is not None and self._open[0] == end:   # the rest of a window end split over closes
            skip = self._open[1]
        else:
            self._open = None   # (an earlier split end is filled by the _fill_until below)
            first = self._clock_end == 0
            if first:
                self._size = end - group[0].window_start_ms
            if self._fixed_step is None:
                d = end - self._clock_end if self._clock_end else end - group[0].window_start_ms
                self._step = math.gcd(self._step, d) if self._step else d
            if self._step:
                self._fill_until(end - self._step, out)
            self._tick(end)
            # the stream's first window is partial (started mid-window): not a baseline
            skip = first and not self._keys
        self._open = None if complete else (end, skip)
        if skip:
            return
        seen = set()
        metric = self.metric
        for r in group:
            value = r.metrics.get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._update(r.key, r.window_start_ms, end, float(value), out, real=True)
                seen.add(r.key)
        if complete:
            self._fill_until(end, out, skip=seen)   # (keys scored in an earlier part have last_end == end)

    def _tick(self, end: int) -> None:
        if end > self._clock_end:
            gap = (end - self._clock_end) // self._step if self._step and self._clock_end else 1
            self._clock_end = end
            self._windows += max(1, gap)

    def _fill_until(self, end: int, out: list[Anomaly], skip: set[tuple[Any, ...]] | frozenset = frozenset()) -> None:
        """Give every tracked key value 0 for each of its missing windows up to `end`; forget idle keys."""
        step = self._step
        if not step or end <= 0:
            return
        stale = []
        horizon = end - self.forget_after * step
        for key, k in self._keys.items():
            if key in skip or k.last_end >= end:
                continue
            if k.seen_end <= horizon and not k.inc_dir:
                stale.append(key)
            elif self.zero_fill:
                while k.last_end < end and not k.dormant:
                    self._update(key, k.last_end + step - self._size, k.last_end + step, 0.0, out, real=False)
        for key in stale:
            del self._keys[key]

    def _update(self, key: tuple[Any, ...], start: int, end: int, x: float, out: list[Anomaly], *, real: bool) -> None:
        y = math.sqrt(max(x, 0.0) + 0.375) if self.sqrt else x
        k = self._keys.get(key)
        if k is None:
            k = self._new_key(key, y, end)
        elif real:
            self._keys[key] = self._keys.pop(key)   # most recently seen last: eviction takes the front
            if self.zero_fill and self._step and k.last_end < end - self._step:
                # back from dormancy: replay its empty windows first (no alerts)
                y0 = self._y0()
                for _ in range(min((end - k.last_end) // self._step - 1, _CATCH_UP_MAX)):
                    self._learn(k, y0, k.last_end + self._step, real=False)
        if real:
            k.seen_end = end
            k.dormant = False
        k.last_end = end
        expected = k.level + self._season(k, end)
        if k.n == 0:   # a new key is scored against the spread of other keys' first values
            scale = max(math.sqrt(self._prior[1]), self._floor(expected))
        else:
            scale = self._scale(k, expected)
        score = (y - expected) / scale
        if self.spec.method == "threshold":
            score = x / self.spec.threshold if self.spec.threshold > 0 else math.inf
        if not self._learn_only:
            self._judge(key, k, start, end, x, expected, score, out)
        if k.inc_dir:
            self._learn_season(k, y, end)
            return
        self._learn(k, y, end, real=real)
        if not real:
            # a key whose zero is unremarkable needs no window-by-window filling
            k.dormant = (self._y0() - k.level - self._season(k, end)) / self._scale(k, k.level) > -1.0

    def _y0(self) -> float:
        return math.sqrt(0.375) if self.sqrt else 0.0

    def _x(self, y: float) -> float:
        return max(0.0, y * y - 0.375) if self.sqrt else y

    def _floor(self, level: float) -> float:
        return 0.5 if self.poisson_floor else 1e-9 + 1e-3 * abs(level)

    def _scale(self, k: _Key, level: float) -> float:
        floor = self._floor(level)
        # shrink the key's own noise estimate toward the pooled one: a key's quiet history does not
        # make the bursts that every key of this aggregation has (a new session) look anomalous
        nu = min(max(k.n - 1, 0), self._nu)   # successive differences seen
        pool = self._pool[0]
        var = (self.prior_weight * pool + nu * k.var) / (self.prior_weight + nu)
        return max(math.sqrt(var) * self._inflate, floor)

    def _new_key(self, key: tuple[Any, ...], y: float, end: int) -> _Key:
        p = self._prior
        if p[2] == 0:
            p[0] = y
        k = _Key(p[0], 0.0, end)
        # learn the prior from first values, clipped so that one bot does not make bots look normal
        a = max(0.02, 1.0 / (p[2] + 1))
        r = y - p[0]
        if p[2] >= 3:
            lim = _CLIP * max(math.sqrt(p[1]), self._floor(p[0]))
            r = max(-lim, min(r, lim))
        p[0] += a * r
        p[1] += a * ((1.0 - a) * r * r - p[1])
        p[2] += 1
        if len(self._keys) >= self.max_keys:
            del self._keys[next(iter(self._keys))]
        self._keys[key] = k
        return k

    def _season(self, k: _Key, end: int) -> float:
        s = k.season
        if s is None or k.n * self._step < self.period_ms:
            return 0.0
        return s[((end - 1) % self.period_ms) * len(s) // self.period_ms]

    def _learn(self, k: _Key, y: float, end: int, *, real: bool) -> None:
        """Move the key's baseline toward y: robust level, successive-difference noise, season."""
        s = k.season
        bin_ = ((end - 1) % self.period_ms) * len(s) // self.period_ms if s else 0
        seasonal = s[bin_] if s and k.n * self._step >= self.period_ms else 0.0
        lim = self.clip * self._scale(k, k.level)
        r = y - k.level - seasonal
        if k.n == 0:
            k.level = y - seasonal                   # the prior only scored the first value
        else:
            a = max(self.alpha, 1.0 / (k.n + 1))    # a running mean while young
            k.level += a * max(-lim, min(r, lim))
        y_plain = y - seasonal                       # differences of deseasonalised values: noise only
        if k.prev is not None:
            d = y_plain - k.prev
            lim_d = self.diff_clip * self._scale(k, k.level) * math.sqrt(2.0)
            d = max(-lim_d, min(d, lim_d))
            b = max(self.beta, 1.0 / k.n)   # a plain mean of the first differences, then an EWMA
            k.var += b * (0.5 * d * d - k.var)
            if real:
                pool = self._pool
                pool[1] += 1
                pool[0] += max(self.beta / 10, 1.0 / pool[1]) * (0.5 * d * d - pool[0])
        k.prev = y_plain
        k.n += 1
        k.last_end = max(k.last_end, end)
        self._learn_season(k, y, end)

    def _learn_season(self, k: _Key, y: float, end: int) -> None:
        """Update the seasonal term of y's bin; this goes on during incidents, or a daily dip that
        was flagged before the season was known would stay unlearnt and be flagged every day."""
        if not self._step or self.season_bins <= 1 or self.period_ms <= self._step:
            return
        s = k.season
        if s is None:
            if k.n * self._step >= self.period_ms // self.season_bins:
                k.season = [0.0] * min(self.season_bins, self.period_ms // self._step)
            return
        bin_ = ((end - 1) % self.period_ms) * len(s) // self.period_ms
        g = max(self.gamma, 1.0 / (1 + k.n * self._step // self.period_ms))   # a mean over the first days
        s[bin_] += g * (y - k.level - s[bin_])

    def _judge(self, key: tuple[Any, ...], k: _Key, start: int, end: int, x: float, expected_y: float,
               score: float, out: list[Anomaly]) -> None:
        """Hysteresis: open on |score| >= threshold or a CUSUM run; close after calm windows."""
        thr = self.threshold
        if k.inc_dir:
            k.inc_len += 1
            if k.inc_dir * score >= thr * self.close_ratio and k.inc_len < self.max_open_windows:
                k.inc_calm = 0
                k.inc_last_end = end
                if abs(score) > abs(k.peak[0]):
                    k.peak = (score, x, self._x(expected_y))
                return
            k.inc_calm += 1
            if k.inc_calm >= self.close_after or k.inc_len >= self.max_open_windows:
                self._close(key, k, end, out)
            return
        if self._windows <= self.spec.warmup:
            return
        young = k.n < self.spec.warmup
        if not young and self.spec.method != "threshold":
            c = k.cusum
            c = max(0.0, c) + score - self.cusum_k if score > 0 else min(0.0, c) + score + self.cusum_k
            k.cusum = c if (c > 0) == (score > 0) and (c < 0 or self.cusum_spikes) else 0.0
        direction = 1 if score > 0 else -1
        trigger = abs(score) >= thr or abs(k.cusum) >= thr
        if not trigger or (direction < 0 and (young or self.spec.method == "threshold")):
            return
        k.cusum = 0.0
        k.inc_dir, k.inc_start, k.inc_last_end, k.inc_calm, k.inc_len = direction, start, end, 0, 1
        k.peak = (score, x, self._x(expected_y))
        out.append(Anomaly(aggregation=self.aggregation, metric=self.metric, key=key, window_start_ms=start,
                           window_end_ms=end, value=x, expected=self._x(expected_y), score=score,
                           direction="spike" if direction > 0 else "drop", state="open", detected_ms=end))

    def _close(self, key: tuple[Any, ...], k: _Key, end: int, out: list[Anomaly]) -> None:
        score, value, expected = k.peak
        out.append(Anomaly(aggregation=self.aggregation, metric=self.metric, key=key,
                           window_start_ms=k.inc_start, window_end_ms=k.inc_last_end, value=value,
                           expected=expected, score=score, direction="spike" if k.inc_dir > 0 else "drop",
                           state="closed", detected_ms=end))
        if k.inc_len >= self.max_open_windows and k.inc_calm == 0:
            k.prev = None                # a lasting shift: the next window starts a new baseline
            k.level = math.sqrt(value + 0.375) if self.sqrt else value
        k.inc_dir = k.inc_calm = k.inc_len = 0

    # -- offline --------------------------------------------------------------------------------

    def fit(self, series: Iterable[WindowResult]) -> AnomalyDetector:
        """Learn baselines from a normal series (no alerts); returns self."""
        self._learn_only = True
        try:
            self.observe(list(series))
        finally:
            self._learn_only = False
        return self

    def predict(self, series: Iterable[WindowResult]) -> list[Anomaly]:
        """The incidents a copy of the fitted detector finds in `series`; this detector is unchanged.

        `series` is taken to follow the fitted one: its first window comes right after the last
        fitted window, even when its timestamps repeat the fitted period.
        """
        clone = AnomalyDetector(self.spec, self.aggregation, **self._opts)
        clone.restore(self.snapshot())
        results = list(series)
        if results and clone._step and clone._clock_end:
            before = min(r.window_end_ms for r in results) - clone._step
            clone._clock_end = before
            for k in clone._keys.values():
                k.last_end = k.seen_end = before
        return clone.observe(results)

    # -- state ----------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole detector state as bytes (keys in recency order)."""
        return jsonbytes.dumps({"v": 1, "step": self._step, "size": self._size, "clock": self._clock_end, "windows": self._windows,
                             "prior": self._prior, "pool": self._pool, "open": self._open,
                             "keys": [[list(key), k.dump()] for key, k in self._keys.items()]})

    def restore(self, data: bytes) -> None:
        """Replace the state with a `snapshot()`."""
        d = orjson.loads(data)
        self._reset()
        self._step, self._size, self._clock_end, self._windows = d["step"], d["size"], d["clock"], d["windows"]
        self._prior, self._pool = d["prior"], d["pool"]
        self._open = tuple(d["open"]) if d.get("open") else None   # type: ignore[assignment]
        self._keys = {tuple(key): _Key.load(row) for key, row in d["keys"]}

    def statistics(self) -> dict[str, int]:
        """Keys tracked, open incidents, windows seen."""
        return {"keys": len(self._keys), "open": sum(1 for k in list(self._keys.values()) if k.inc_dir),
                "windows": self._windows}
