"""Deterministic shop events: a seeded catalogue, users with stable tastes, funnel sessions, labelled incidents.

Pure: no I/O and no clock. Event time starts at `start_ms` and advances by seeded Poisson arrivals,
so the same (seed, start_ms, rate, anomalies) always yields byte-identical events.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np
import orjson

ORDER_TYPES = frozenset({"cart", "remove_from_cart", "purchase"})   # the "orders" half of the stream
CLICK_TYPES = frozenset({"view", "search"})                          # the "clicks" half
INCIDENT_KINDS = ("flash_sale", "checkout_outage", "view_bot")
DEFAULT_START_MS = 1_700_000_000_000                                 # 2023-11-14T22:13:20Z


@dataclass(frozen=True, slots=True)
class Category:
    """A catalogue category: its price range and its share of the items."""

    name: str
    price_min: float
    price_max: float
    share: float


DEFAULT_CATEGORIES = (
    Category("electronics", 15.0, 1500.0, 0.15),
    Category("books", 5.0, 60.0, 0.18),
    Category("fashion", 10.0, 250.0, 0.16),
    Category("home", 8.0, 600.0, 0.12),
    Category("toys", 5.0, 120.0, 0.10),
    Category("grocery", 1.0, 40.0, 0.11),
    Category("sports", 10.0, 400.0, 0.09),
    Category("beauty", 4.0, 120.0, 0.09),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShopConfig:
    """The simulated shop's shape: catalogue, users, taste clusters and funnel probabilities."""

    n_items: int = 2000
    n_users: int = 5000
    categories: tuple[Category, ...] = DEFAULT_CATEGORIES
    cluster_size: int = 20            # items per taste cluster (clusters never span categories)
    item_zipf_s: float = 1.0          # popularity skew of items
    user_zipf_s: float = 0.6          # activity skew of users
    session_event_gap_s: float = 8.0  # mean gap between one session's events; sets the concurrency
    max_concurrent_sessions: int = 1000
    mean_views: float = 7.0           # views per session = 1 + exponential(mean_views), capped at 40
    p_search: float = 0.07            # a browse step is a search instead of a view
    p_carter: float = 0.45            # a session that puts things in its cart
    p_cart: float = 0.2               # a carter carts the item it just viewed
    p_remove: float = 0.05            # a browse step removes a cart item instead
    p_buyer: float = 0.5              # a carter that checks out (the rest abandon the cart)


@dataclass(frozen=True, slots=True, kw_only=True)
class AnomalyPlan:
    """When and how strongly incidents happen, in event time (independent of the rate)."""

    warmup_ms: int = 300_000
    gap_ms: tuple[int, int] = (120_000, 150_000)        # start to start
    duration_ms: tuple[int, int] = (120_000, 180_000)
    flash_factor: tuple[float, float] = (4.0, 6.0)      # purchases in the category become this many times
    flash_discount: float = 0.7
    bot_views_per_min: tuple[int, int] = (300, 600)


@dataclass(frozen=True, slots=True)
class GeneratorStats:
    """A snapshot: events emitted so far, the last event time, incidents started."""

    emitted: int
    last_ts_ms: int
    incidents: int


class Catalogue:
    """Items with categories, prices, Zipf popularity and taste clusters; read-only once built."""

    def __init__(self, shop: ShopConfig, rng: random.Random) -> None:
        n, cats = shop.n_items, shop.categories
        total_share = sum(c.share for c in cats)
        counts = [max(1, round(n * c.share / total_share)) for c in cats]
        counts[0] += n - sum(counts)
        item_cat = [ci for ci, k in enumerate(counts) for _ in range(k)]
        rng.shuffle(item_cat)
        ranks = list(range(n))
        rng.shuffle(ranks)
        self.item_ids = [f"i{i}" for i in range(n)]
        self.item_cat = item_cat
        self.cat_names = [c.name for c in cats]
        self.item_cat_name = [self.cat_names[c] for c in item_cat]
        self.weight = [1.0 / (r + 1) ** shop.item_zipf_s for r in ranks]
        self.price = [_price(rng, cats[c]) for c in item_cat]
        self.popular = sampling_table(self.weight, 1 << 15)
        self.cat_items: list[list[int]] = [[] for _ in cats]
        for i, c in enumerate(item_cat):
            self.cat_items[c].append(i)
        self.cat_weight = [sum(self.weight[i] for i in items) for items in self.cat_items]
        self.cat_popular = [[items[j] for j in sampling_table([self.weight[i] for i in items], 1 << 11)]
                            for items in self.cat_items]
        self.clusters: list[list[int]] = []
        self.cat_clusters: list[list[int]] = [[] for _ in cats]
        for c, items in enumerate(self.cat_items):
            shuffled = items[:]
            rng.shuffle(shuffled)
            chunks = [shuffled[k:k + shop.cluster_size] for k in range(0, len(shuffled), shop.cluster_size)]
            if len(chunks) > 1 and len(chunks[-1]) < shop.cluster_size // 2:
                chunks[-2].extend(chunks.pop())
            for chunk in chunks:
                self.cat_clusters[c].append(len(self.clusters))
                self.clusters.append(chunk)
        self.cluster_cum = [list(accumulate(self.weight[i] for i in cl)) for cl in self.clusters]


def encode_ndjson(events: list[dict[str, Any]]) -> bytes:
    """Events as NDJSON, one line each.

    Serializes the list in one call and splits objects at `},{`: about 10x faster than one call per
    event (orjson gives each small result a 4 KiB buffer), and safe because generated events are
    flat and none of their strings holds a brace.
    """
    if not events:
        return b""
    return orjson.dumps(events)[1:-1].replace(b"},{", b"}\n{") + b"\n"


def sampling_table(weights: list[float], size: int) -> list[int]:
    """Indices laid out in proportion to `weights`, so one uniform draw samples the distribution."""
    cum = np.cumsum(np.asarray(weights, dtype=np.float64))
    points = (np.arange(size, dtype=np.float64) + 0.5) * (cum[-1] / size)
    return np.minimum(np.searchsorted(cum, points, side="right"), len(weights) - 1).tolist()


def _price(rng: random.Random, cat: Category) -> float:
    p = math.exp(rng.uniform(math.log(cat.price_min), math.log(cat.price_max)))
    return round(math.floor(p) + 0.99, 2) if p >= 2 else round(p, 2)


class _Taste:
    """One taste group of a user: a category, a cluster and the user's favourite items in it."""

    __slots__ = ("cat", "favourites", "cluster", "cluster_cum")

    def __init__(self, cat: int, favourites: list[int], cluster: list[int], cluster_cum: list[float]) -> None:
        self.cat, self.favourites, self.cluster, self.cluster_cum = cat, favourites, cluster, cluster_cum


class _User:
    __slots__ = ("uid", "tastes", "sessions")

    def __init__(self, uid: str, tastes: list[_Taste]) -> None:
        self.uid, self.tastes, self.sessions = uid, tastes, 0


def build_user(cat: Catalogue, seed: int, index: int) -> _User:
    """A user's stable tastes, derived from (seed, index) only, so users can be built lazily in any order."""
    rng = random.Random(seed * 1_000_003 + index)
    n_cats = 1 if rng.random() < 0.55 else 2
    cat_cum = list(accumulate(cat.cat_weight))
    chosen: list[int] = []
    while len(chosen) < n_cats:
        c = min(bisect_right(cat_cum, rng.random() * cat_cum[-1]), len(cat_cum) - 1)
        if c not in chosen or len(chosen) >= len(cat_cum):
            chosen.append(c)
    tastes = []
    for c in chosen:
        clusters = cat.cat_clusters[c]
        cl_cum = list(accumulate(cat.cluster_cum[k][-1] for k in clusters))
        n_clusters = 2 if (n_cats == 1 and rng.random() < 0.5) else 1
        for _ in range(n_clusters):
            k = clusters[min(bisect_right(cl_cum, rng.random() * cl_cum[-1]), len(clusters) - 1)]
            members, cum = cat.clusters[k], cat.cluster_cum[k]
            picked: list[int] = []
            for _ in range(40):
                item = members[int(rng.random() * len(members))]
                if item not in picked:
                    picked.append(item)
                if len(picked) >= min(len(members), rng.randint(5, 10)):
                    break
            # the first favourites come back most often
            favourites = [item for rank, item in enumerate(picked) for _ in range(3 if rank == 0 else 2 if rank < 3 else 1)]
            tastes.append(_Taste(c, favourites, members, cum))
    return _User(f"u{index}", tastes)


class _Session:
    __slots__ = ("user", "sid", "taste", "views_left", "carter", "buyer", "cart", "pending")

    def __init__(self, user: _User, sid: str, taste: _Taste, views: int, carter: bool, buyer: bool) -> None:
        self.user, self.sid, self.taste, self.views_left = user, sid, taste, views
        self.carter, self.buyer = carter, buyer
        self.cart: dict[int, int] = {}
        self.pending = -1


@dataclass(slots=True)
class _Incident:
    kind: str
    start_ms: int
    end_ms: int
    key: dict[str, str]
    cat: int = -1
    item: int = -1
    user: str = ""
    rate_per_ms: float = 0.0
    deals: list[int] = field(default_factory=list)

    def label(self) -> dict[str, Any]:
        return {"kind": self.kind, "start_ms": self.start_ms, "end_ms": self.end_ms, "key": dict(self.key)}


_FLASH_ARRIVE, _FLASH_CART, _FLASH_BUY, _BOT_VIEW = range(4)


class Generator:
    """A deterministic, time-ordered stream of shop events; see `next_batch` and `events_until`.

    Events are dicts in the SPEC schema; `ts` never decreases; `event_id` is `e<seed>-<start_ms>-<n>`.
    With `anomalies`, incidents follow `plan` and `labels` lists those started so far.
    """

    def __init__(self, seed: int, start_ms: int = DEFAULT_START_MS, rate: float = 200.0, anomalies: bool = False,
                 *, shop: ShopConfig = ShopConfig(), plan: AnomalyPlan = AnomalyPlan()) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 events/s")
        self._shop, self._plan, self._seed = shop, plan, seed
        self._rng = random.Random(seed)
        self._irng = random.Random(seed * 7919 + 17)   # the incident schedule draws from its own stream
        self.catalogue = Catalogue(shop, random.Random(seed * 31 + 5))
        self._user_table = sampling_table([1.0 / (r + 1) ** shop.user_zipf_s for r in range(shop.n_users)], 1 << 15)
        perm = list(range(shop.n_users))
        random.Random(seed * 131 + 7).shuffle(perm)
        self._user_perm = perm
        self._users: dict[int, _User] = {}
        self._mean_gap_ms = 1000.0 / rate
        self._t = float(start_ms)
        self._prefix = f"e{seed}-{start_ms}-"
        self._n = 0
        self._last_ts = start_ms
        self._heap: list[tuple[float, int, int, Any]] = []
        self._heap_n = 0
        self._pool = [self._new_session() for _ in range(self._concurrency(rate))]
        self._blocked: set[int] = set()
        self._base_purchases = [0] * len(shop.categories)
        self._start_ms = start_ms
        self._incidents: list[_Incident] = []
        self._active: list[_Incident] = []
        self._kinds: list[str] = []
        self._next_incident_ms = start_ms + plan.warmup_ms if anomalies else math.inf
        self._next_change = self._next_incident_ms

    def _concurrency(self, rate: float) -> int:
        shop = self._shop
        return max(4, min(round(rate * shop.session_event_gap_s), shop.max_concurrent_sessions, max(4, shop.n_users // 4)))

    # -- public API ---------------------------------------------------------------------------------

    def next_batch(self, n: int) -> list[dict[str, Any]]:
        """The next `n` events in time order."""
        emit, inf = self._emit_next, math.inf
        return [emit(inf) for _ in range(n)]  # type: ignore[misc]  # never None without a limit

    def events_until(self, ts_ms: int, max_events: int | None = None) -> list[dict[str, Any]]:
        """Every not yet emitted event with `ts <= ts_ms`, in time order (at most `max_events` of them)."""
        out: list[dict[str, Any]] = []
        emit, limit = self._emit_next, float(ts_ms + 1)
        budget = math.inf if max_events is None else max_events
        while len(out) < budget and (ev := emit(limit)) is not None:
            out.append(ev)
        return out

    @property
    def labels(self) -> list[dict[str, Any]]:
        """Labels of the incidents started so far: {"kind", "start_ms", "end_ms", "key"}."""
        return [inc.label() for inc in self._incidents]

    def statistics(self) -> GeneratorStats:
        return GeneratorStats(emitted=self._n, last_ts_ms=self._last_ts, incidents=len(self._incidents))

    # -- the merged stream ----------------------------------------------------------------------------

    def _emit_next(self, limit: float) -> dict[str, Any] | None:
        """The next event of the base stream and the incident schedule merged by time; None at `limit`."""
        heap = self._heap
        while True:
            base = not heap or heap[0][0] >= self._t
            t = self._t if base else heap[0][0]
            if t >= limit:
                return None
            if t >= self._next_change:
                self._advance_incidents(t)
                continue
            if base:
                ev = self._base_event(int(t))
                self._t = t - math.log(1.0 - self._rng.random()) * self._mean_gap_ms
            else:
                _, _, action, payload = heapq.heappop(heap)
                ev = self._scheduled_event(t, action, payload)
                if ev is None:
                    continue
            ev["event_id"] = f"{self._prefix}{self._n}"
            self._n += 1
            self._last_ts = ev["ts"]
            return ev

    def _schedule(self, t: float, action: int, payload: Any) -> None:
        self._heap_n += 1
        heapq.heappush(self._heap, (t, self._heap_n, action, payload))

    def _event(self, ts: int, kind: str, user: _User | str, sid: str, item: int, qty: int = 1,
               price: float | None = None) -> dict[str, Any]:
        cat = self.catalogue
        return {"event_id": "", "ts": ts, "type": kind, "user_id": user if isinstance(user, str) else user.uid,
                "session_id": sid, "item_id": cat.item_ids[item], "category": cat.item_cat_name[item],
                "price": cat.price[item] if price is None else price, "quantity": qty}

    # -- ordinary sessions ------------------------------------------------------------------------------

    def _user(self, index: int) -> _User:
        user = self._users.get(index)
        if user is None:
            user = self._users[index] = build_user(self.catalogue, self._seed, index)
        return user

    def _pick_user(self, rng: random.Random) -> _User:
        return self._user(self._user_perm[self._user_table[int(rng.random() * len(self._user_table))]])

    def _next_sid(self, user: _User) -> str:
        user.sessions += 1
        return f"s{user.uid[1:]}-{user.sessions}"

    def _new_session(self) -> _Session:
        rnd, shop = self._rng.random, self._shop
        user = self._pick_user(self._rng)
        taste = user.tastes[int(rnd() * len(user.tastes))]
        views = min(40, 1 + int(-math.log(1.0 - rnd()) * shop.mean_views))
        carter = rnd() < shop.p_carter
        return _Session(user, self._next_sid(user), taste, views, carter, carter and rnd() < shop.p_buyer)

    def _base_event(self, ts: int) -> dict[str, Any]:
        rnd, pool = self._rng.random, self._pool
        while True:
            slot = int(rnd() * len(pool))
            ev = self._session_step(pool[slot], ts)
            if ev is not None:
                return ev
            pool[slot] = self._new_session()

    def _session_step(self, s: _Session, ts: int) -> dict[str, Any] | None:
        rnd, shop = self._rng.random, self._shop
        if s.pending >= 0:
            item, s.pending = s.pending, -1
            qty = self._quantity(item)
            s.cart[item] = s.cart.get(item, 0) + qty
            return self._event(ts, "cart", s.user, s.sid, item, qty)
        if s.views_left > 0:
            if s.cart and rnd() < shop.p_remove:
                item = next(iter(s.cart))
                return self._event(ts, "remove_from_cart", s.user, s.sid, item, s.cart.pop(item))
            s.views_left -= 1
            if rnd() < shop.p_search:
                cat = self.catalogue.cat_names[s.taste.cat]
                return {"event_id": "", "ts": ts, "type": "search", "user_id": s.user.uid, "session_id": s.sid,
                        "category": cat, "quantity": 1}
            item = self._pick_item(s.taste)
            if s.carter and rnd() < shop.p_cart:
                s.pending = item
            return self._event(ts, "view", s.user, s.sid, item)
        if s.buyer and s.cart:
            item, qty = s.cart.popitem()
            cat = self.catalogue.item_cat[item]
            if cat in self._blocked:
                s.cart.clear()          # checkout failed: the shopper gives up
                return None
            self._base_purchases[cat] += 1
            return self._event(ts, "purchase", s.user, s.sid, item, qty)
        return None

    def _pick_item(self, taste: _Taste) -> int:
        rnd, cat = self._rng.random, self.catalogue
        r = rnd()
        if r < 0.62:
            fav = taste.favourites
            return fav[int(rnd() * len(fav))]
        if r < 0.82:
            cum = taste.cluster_cum
            return taste.cluster[min(bisect_right(cum, rnd() * cum[-1]), len(cum) - 1)]
        if r < 0.92:
            return cat.popular[int(rnd() * len(cat.popular))]
        table = cat.cat_popular[taste.cat]
        return table[int(rnd() * len(table))]

    def _quantity(self, item: int) -> int:
        r = self._rng.random()
        if self.catalogue.item_cat_name[item] == "grocery":
            return 1 + int(r * 4)
        return 1 + (r < 0.15) + (r < 0.05)

    # -- incidents ------------------------------------------------------------------------------------

    def _advance_incidents(self, t: float) -> None:
        self._active = [inc for inc in self._active if inc.end_ms > t]
        while self._next_incident_ms <= t:
            start = int(self._next_incident_ms)
            self._start_incident(start)
            self._next_incident_ms += self._irng.randint(*self._plan.gap_ms)
        self._blocked = {inc.cat for inc in self._active if inc.kind == "checkout_outage"}
        ends = [inc.end_ms for inc in self._active]
        self._next_change = min([self._next_incident_ms, *ends])

    def _start_incident(self, start: int) -> None:
        irng, plan, cat = self._irng, self._plan, self.catalogue
        if not self._kinds:
            self._kinds = list(INCIDENT_KINDS)
            irng.shuffle(self._kinds)
        kind = self._kinds.pop()
        end = start + irng.randint(*plan.duration_ms)
        busy = {inc.cat for inc in self._active}
        free = [c for c in range(len(cat.cat_names)) if c not in busy] or list(range(len(cat.cat_names)))
        inc = _Incident(kind, start, end, {})
        if kind == "view_bot":
            inc.item = irng.randrange(len(cat.item_ids))
            inc.user = f"u{self._shop.n_users + len(self._incidents)}"
            inc.key = {"user_id": inc.user, "item_id": cat.item_ids[inc.item]}
            inc.rate_per_ms = irng.randint(*plan.bot_views_per_min) / 60_000
            self._schedule(float(start), _BOT_VIEW, inc)
        else:
            inc.cat = free[irng.randrange(len(free))]
            inc.key = {"category": cat.cat_names[inc.cat]}
            if kind == "flash_sale":
                elapsed_ms = max(1.0, start - self._start_ms)
                base_per_ms = max(self._base_purchases[inc.cat] / elapsed_ms, 1 / 60_000)
                inc.rate_per_ms = (irng.uniform(*plan.flash_factor) - 1.0) * base_per_ms
                inc.deals = [cat.cat_popular[inc.cat][irng.randrange(len(cat.cat_popular[inc.cat]))] for _ in range(5)]
                self._schedule(float(start), _FLASH_ARRIVE, inc)
        self._incidents.append(inc)
        self._active.append(inc)

    def _scheduled_event(self, t: float, action: int, payload: Any) -> dict[str, Any] | None:
        rng = self._irng
        if action == _BOT_VIEW:
            inc: _Incident = payload
            nxt = t - math.log(1.0 - rng.random()) / inc.rate_per_ms
            if nxt < inc.end_ms:
                self._schedule(nxt, _BOT_VIEW, inc)
            return self._event(int(t), "view", inc.user, f"s{inc.user[1:]}-1", inc.item)
        if action == _FLASH_ARRIVE:
            inc = payload
            nxt = t - math.log(1.0 - rng.random()) / inc.rate_per_ms
            if nxt < inc.end_ms - 16_000:
                self._schedule(nxt, _FLASH_ARRIVE, inc)
            user = self._pick_user(rng)
            sid = self._next_sid(user)
            item = inc.deals[rng.randrange(len(inc.deals))]
            price = round(self.catalogue.price[item] * self._plan.flash_discount, 2)
            qty = 1 + (rng.random() < 0.2)
            self._schedule(t + rng.uniform(1000, 8000), _FLASH_CART, (user, sid, item, qty, price))
            return self._event(int(t), "view", user, sid, item, 1, price)
        user, sid, item, qty, price = payload
        if action == _FLASH_CART:
            self._schedule(t + rng.uniform(1000, 8000), _FLASH_BUY, payload)
            return self._event(int(t), "cart", user, sid, item, qty, price)
        if self.catalogue.item_cat[item] in self._blocked:
            return None
        return self._event(int(t), "purchase", user, sid, item, qty, price)
