"""Funnel metric: sessions reaching each step (default view -> cart -> purchase) in order, within the window.

The aggregator passes (session_id, type, ts) tuples (`fields`). A session reaches step j when it has
events of steps 0..j at increasing times (greedy: earliest step 0, then the earliest step 1 after
it, ...; equal timestamps count as in order). The state keeps, per session and step, the FUNNEL_KEEP earliest timestamps, so merge
(union, then the earliest again) is exact, associative and order-independent; a session could be
miscounted only if more than FUNNEL_KEEP events of one step all came before the previous step.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from daemon.aggconfig import MetricSpec
from daemon import jsonbytes

FUNNEL_KEEP = 4
State = dict[str, list[list[int]]]   # session_id -> per step, its earliest timestamps (sorted)


@dataclass(frozen=True, slots=True)
class Funnel:
    """Sessions per funnel step, step conversion rates and cart abandonment; the result is a dict."""

    steps: tuple[str, ...] = ("view", "cart", "purchase")
    kind = "json"
    fields = ("session_id", "type", "ts")

    @classmethod
    def from_spec(cls, spec: MetricSpec) -> Funnel:
        return cls(steps=spec.steps or ("view", "cart", "purchase"))

    def empty(self) -> State:
        return {}

    def fold(self, state: State, values: Sequence[Any]) -> State:
        index = {s: i for i, s in enumerate(self.steps)}
        n = len(self.steps)
        for value in values:
            if value is None:
                continue
            sid, etype, ts = value
            j = index.get(etype)
            if sid is None or j is None or ts is None:
                continue
            per = state.get(sid)
            if per is None:
                per = state[sid] = [[] for _ in range(n)]
            times = per[j]
            if ts in times:
                continue
            if len(times) < FUNNEL_KEEP:
                bisect.insort(times, ts)
            elif ts < times[-1]:
                times.pop()
                bisect.insort(times, ts)
        return state

    def merge(self, a: State, b: State) -> State:
        out: State = {sid: [list(t) for t in per] for sid, per in a.items()}
        for sid, per in b.items():
            mine = out.get(sid)
            if mine is None:
                out[sid] = [list(t) for t in per]
            else:
                out[sid] = [heapq.nsmallest(FUNNEL_KEEP, set(x) | set(y)) for x, y in zip(mine, per)]
        return out

    def reached(self, per: list[list[int]]) -> int:
        """How many steps, in order, one session completed."""
        t = None
        for j, times in enumerate(per):
            nxt = next((x for x in times if t is None or x >= t), None)
            if nxt is None:
                return j
            t = nxt
        return len(per)

    def result(self, state: State) -> dict[str, Any]:
        n = len(self.steps)
        sessions = [0] * n
        for per in state.values():
            for j in range(self.reached(per)):
                sessions[j] += 1
        conversion = [1.0 if sessions[0] else 0.0] + [
            round(sessions[j] / sessions[j - 1], 6) if sessions[j - 1] else 0.0 for j in range(1, n)]
        abandonment = None
        if "cart" in self.steps and "purchase" in self.steps:
            c, p = self.steps.index("cart"), self.steps.index("purchase")
            if c < p:
                abandonment = round(1.0 - sessions[p] / sessions[c], 6) if sessions[c] else 0.0
        return {"steps": list(self.steps), "sessions": sessions, "conversion": conversion,
                "cart_abandonment": abandonment}

    def dump(self, state: State) -> bytes:
        return jsonbytes.dumps(state)

    def load(self, data: bytes) -> State:
        return {sid: [list(t) for t in per] for sid, per in orjson.loads(data).items()}
