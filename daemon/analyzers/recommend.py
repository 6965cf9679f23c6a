"""Recommendations: time-decayed item-to-item co-occurrence within sessions, users' recent items, trending fallback.

An event of item j in session s pairs j with the (at most 3) most recent items the same user touched
earlier in s, with weight sqrt(w_i * w_j) (view 1, cart 3, purchase 5), forward-decayed like trending.py. A user's
ranking sums, over their recent items r, recency(r) * (self weight for r itself, and
cooc(r, c) / sqrt(n(r) n(c)) for each neighbour c); items bought within `exclude_bought_s` are
left out, and trending in the user's categories, then overall, fills the rest.

Three pairs per event, not ten: `python -m daemon.analyzers.evaluate` gives HitRate@10 0.839 vs
0.797 (seed 11; 0.840 vs 0.815 seed 12) and the fold is ~20% cheaper; nearby views are the signal.

A user's state is one flat list (analyzers/recusers.py); the recommendations process keeps users beyond
the `hot_users` most recently active as their records while they are idle (`idle_users`, `pack`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from itertools import islice
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson

from daemon.analyzers.reads import read_consistently
from daemon.analyzers.recusers import (_BOUGHT, _DIRTY, _LAST, _START, User, from_record, is_dirty, new_user,
                                       record_last_ms, record_of, to_record, user_cats)
from daemon.analyzers.trending import TYPE_WEIGHTS, Trending
from daemon.config import RecommendationsConfig
from daemon.events import EventBatch
from daemon import jsonbytes, native

__all__ = ["COMPILED", "Recommender", "RecommenderStats", "new_user", "user_cats"]

# observe's loop compiled (analyzers/_recfold.pyx: the same statements with C locals, ~1.6x faster),
# unless the build had no C compiler or STOREPULSE_NO_EXTENSIONS is set; the loop in `observe` is
# the reference it must equal (tests/unit/test_recommend.py runs both).
_compiled: Any = native.compiled("daemon.analyzers._recfold")
COMPILED = _compiled is not None

_REBASE_HALF_LIVES = 500.0
_MAX_CATS = 4          # categories remembered per user, for the fallback
_MAX_CAT_NAMES = 10_000   # bounds the category table; clearing it only ends sharing of the old str objects


@dataclass(frozen=True, slots=True)
class RecommenderStats:
    """A snapshot: users and items tracked, neighbour links, events seen, users expired or evicted."""

    users: int
    items: int
    links: int
    events: int
    users_dropped: int


class Recommender:
    """Session co-occurrence recommender with bounded, decaying state; see the module docstring."""

    def __init__(self, cfg: RecommendationsConfig, *, weights: dict[str, float] | None = None,
                 self_weight: float = 1.0, exclude_bought_s: float | None = None,
                 max_pairs_per_event: int = 3) -> None:
        self.cfg = cfg
        self.half_life_ms = cfg.half_life_s * 1000.0
        self.weights = dict(TYPE_WEIGHTS if weights is None else weights)
        self.self_weight = self_weight
        self.exclude_bought_ms = (cfg.half_life_s if exclude_bought_s is None else exclude_bought_s) * 1000.0
        self.max_pairs = max_pairs_per_event
        self.trending = Trending(cfg.half_life_s, weights=self.weights)
        self._nbrs: dict[str, dict[str, float]] = {}
        self._count: dict[str, float] = {}       # item -> forward-decayed occurrence weight (recency order)
        self._cat: dict[str, str] = {}
        self._users: dict[str, User] = {}       # recency order: the front is the idlest user
        self._ref_ms: float | None = None
        self._events = self._dropped = 0
        self._dirty_items: set[str] = set()
        # The users changed since the last take_dirty are the last _dirty_user_count of `_users`: observe
        # moves a user it touches to the end and marks it (its `dirty` field, new_user), so a set of their ids (a probe
        # and a string compare per event, ~5% of observe) is not needed.
        self._dirty_user_count = 0
        self.lists_made = 0    # users made lists (new, or kept ones touched) since the count was last reset (`pack`)
        self._deleted: set[bytes] = set()
        self._names: dict[str, str] = {}        # item -> the one str object every structure keys it by
        self._cat_names: dict[str, str] = {}    # the same for categories (cleared past _MAX_CAT_NAMES)

    # -- updates --------------------------------------------------------------------------------

    def observe(self, batch: EventBatch, *, trending: bool = True) -> None:
        """Fold a batch in (event time decides decay, recency and expiry); trending=False leaves the
        trending part to the caller (the recommendations process folds it per larger piece).

        The per-event work is written out in this one loop with locals: it is the hottest code
        of the daemon with recommendations on (a function call per event and per link cost ~30%).
        An event of item j by user u: j's count grows; j is paired with u's earlier items of the same
        session (both directions, at most max_pairs); j moves to the end of u's recent items.

        Event by event, not grouped per user or per pair: a 4096-event batch holds ~1.2 events per
        user and few repeated pairs, and the order of additions decides the floats and the pruning,
        which must not depend on how the stream was cut into batches (the replica's frames are not
        the daemon's batches). What a batch does share is computed once: the decay factor per
        distinct timestamp (~200 in 4096 events), with the one int object of that ts the users' entries
        keep. Strings are shared, as decoding makes a new one per
        event: an item or category name is looked up in `_names`/`_cat_names` (one dict lookup) and that
        one object keys the counts, links and users' entries, and a same-session entry's session string
        is reused. That took ~20% off the state on generator streams (~55 bytes per link and entry).
        A user is one flat list (new_user), walked by index: no dict or tuple per user or entry.
        """
        if trending:
            self.trending.observe(batch)
        if _compiled is not None:
            events, lists_made = _compiled.observe_events(
                self, batch.type, batch.user_id, batch.session_id, batch.item_id, batch.category, batch.ts,
                from_record, _REBASE_HALF_LIVES, _MAX_CATS)
            self._end_observe(batch, events, lists_made)
            return
        weights, hl = self.weights, self.half_life_ms
        count, cats_of, users, nbrs = self._count, self._cat, self._users, self._nbrs
        dirty_items, dirty_user_count = self._dirty_items, self._dirty_user_count
        cfg = self.cfg
        limit, max_pairs, max_recent, max_items = (2 * cfg.neighbours_per_item, self.max_pairs,
                                                   cfg.recent_items_per_user, cfg.max_items)
        max_recent_fields, max_cats_end = 4 * max_recent, 4 + 2 * _MAX_CATS
        sqrt, prune = math.sqrt, self._prune
        names, cat_names = self._names, self._cat_names
        ref = self._ref_ms
        # ts -> (the batch's first int object of that value, its growth): users' entries keep a ts each, and
        # a 16-event batch holds 1-2 distinct ones, so sharing them saves ~30 bytes per entry.
        growth_by_ts: dict[int, tuple[int, float]] = {}
        events, lists_made = 0, 0
        for etype, user_id, session, item, cat, ts in zip(batch.type, batch.user_id, batch.session_id,
                                                         batch.item_id, batch.category, batch.ts):
            w = weights.get(etype)
            if not w or item is None:
                continue
            events += 1
            item = names.setdefault(item, item)
            if cat is not None:
                cat = cat_names.setdefault(cat, cat)
            shared_ts = growth_by_ts.get(ts)
            if shared_ts is None:
                if ref is None or (ts - ref) / hl > _REBASE_HALF_LIVES:
                    growth_by_ts.clear()
                    self._dirty_user_count = dirty_user_count   # a rebase marks every user
                    g = self._growth(ts)
                    ref, dirty_user_count = self._ref_ms, self._dirty_user_count
                else:
                    g = 2.0 ** ((ts - ref) / hl)
                growth_by_ts[ts] = (ts, g)
            else:
                ts, g = shared_ts
            count[item] = count.pop(item, 0.0) + w * g
            if cat is not None:
                cats_of[item] = cat
            dirty_items.add(item)
            # u: [last_ms, dirty, bought, start, *(category, weight), *(item, ts_ms, weight, session)] (new_user)
            u = users.pop(user_id, None)
            if u.__class__ is not list and u is not None:   # kept as its record (`pack`; a bytearray if dirty)
                u = from_record(u, names, cat_names, u.__class__ is bytearray)
                lists_made += 1
            elif u is None:   # a new user: nothing to pair with or to update, and its list made at its size
                if cat is None:
                    u = [ts, True, None, 4, item, ts, w, session]
                else:
                    u = [ts, True, None, 6, cat, 0.0 + w * g, item, ts, w, session]   # 0.0 +: as in cats below
                if etype == "purchase":
                    u[2] = {item: ts}
                users[user_id] = u
                dirty_user_count += 1
                lists_made += 1
                if len(count) > max_items:
                    self._drop_item(next(iter(count)))
                continue
            users[user_id] = u          # re-inserted: the dict's order is idleness order
            if ts > u[0]:
                u[0] = ts
            if not u[1]:
                u[1] = True
                dirty_user_count += 1
            start = u[3]
            if session is not None:
                paired = 0
                mine = nbrs.get(item)
                for k in range(len(u) - 1, start, -4):    # each recent item's session, newest first
                    if u[k] == session and u[k - 3] != item:
                        session, other = u[k], u[k - 3]
                        c = sqrt(w * u[k - 1]) * g
                        if mine is None:
                            mine = nbrs[item] = {}
                        mine[other] = mine.get(other, 0.0) + c
                        theirs = nbrs.get(other)
                        if theirs is None:
                            theirs = nbrs[other] = {}
                        theirs[item] = theirs.get(item, 0.0) + c
                        dirty_items.add(other)
                        if len(theirs) > limit:
                            prune(other)
                        if len(mine) > limit:
                            mine = prune(item)
                        paired += 1
                        if paired >= max_pairs:
                            break
            items = u[start::4]     # the item's earlier entry, if any (moved to the end below)
            if item in items:
                k = start + 4 * items.index(item)
                if u[k + 3] == session:
                    session = u[k + 3]
                    if u[k + 2] > w:
                        w = u[k + 2]
            else:
                k = 0
            if etype == "purchase":
                bought = u[2]
                if bought is None:
                    bought = u[2] = {}
                bought[item] = ts
                if len(bought) > max_recent:
                    del bought[min(bought, key=bought.__getitem__)]
            # The categories before the recent items: a 2-event user's list then grows once, to its size
            # (16 fields; growing for the item first left it room for 20).
            if cat is not None:
                for j in range(4, start, 2):
                    if u[j] == cat:
                        u[j + 1] += w * g
                        break
                else:
                    u[start:start] = (cat, 0.0 + w * g)   # 0.0 +: as dict.get(cat, 0.0) + did (for -0.0)
                    if start == max_cats_end:   # one category too many: the weakest goes (the first of equals)
                        weights_of = u[5:start + 2:2]
                        j = 4 + 2 * weights_of.index(min(weights_of))
                        del u[j:j + 2]
                    else:
                        start += 2
                        u[3] = start
                        if k:
                            k += 2
            if k:
                del u[k:k + 4]
            u += (item, ts, w, session)
            if len(u) > start + max_recent_fields:
                del u[start:start + 4]
            if len(count) > max_items:
                self._drop_item(next(iter(count)))
        self._dirty_user_count = dirty_user_count
        self._end_observe(batch, events, lists_made)

    def _end_observe(self, batch: EventBatch, events: int, lists_made: int) -> None:
        self._events += events
        self.lists_made += lists_made
        if len(self._cat_names) > _MAX_CAT_NAMES:
            self._cat_names.clear()
        if batch.ts:
            self._expire(max(batch.ts))

    def _prune(self, item: str) -> dict[str, float]:
        """Keep an item's strongest neighbours_per_item links (amortised: done when it holds twice that).

        sorted(..., reverse=True)[:n] is what heapq.nlargest(n, ...) is documented to equal (ties in
        the same order); with a C key function it is ~3x cheaper here (101 entries)."""
        nb = self._nbrs[item] = dict(sorted(self._nbrs[item].items(), key=itemgetter(1),
                                            reverse=True)[:self.cfg.neighbours_per_item])
        return nb

    def _growth(self, ts_ms: float) -> float:
        if self._ref_ms is None:
            self._ref_ms = float(ts_ms)
        e = (ts_ms - self._ref_ms) / self.half_life_ms
        if e > _REBASE_HALF_LIVES:
            f = 2.0 ** -e
            for item in self._count:
                self._count[item] *= f
            for nb in self._nbrs.values():
                for other in nb:
                    nb[other] *= f
            users, names, cat_names = self._users, self._names, self._cat_names
            for uid, u in users.items():   # every user changes: a packed one is a list again (values replaced in place)
                if u.__class__ is not list:
                    u = users[uid] = from_record(u, names, cat_names)
                for k in range(5, u[_START], 2):
                    u[k] *= f
                u[_DIRTY] = True
            self._dirty_items.update(self._count)
            self._dirty_user_count = len(self._users)
            self._ref_ms, e = float(ts_ms), 0.0
        return 2.0 ** e

    def _expire(self, now_ms: int) -> None:
        """Drop users idle longer than the TTL and the idlest beyond max_users."""
        users, ttl_ms = self._users, self.cfg.user_ttl_s * 1000.0
        while users:
            uid = next(iter(users))
            u = users[uid]
            last = u[_LAST] if u.__class__ is list else record_last_ms(u)
            if last >= now_ms - ttl_ms and len(users) <= self.cfg.max_users:
                break
            del users[uid]
            if is_dirty(u):
                self._dirty_user_count -= 1
            self._dropped += 1
            self._deleted.add(b"u:" + uid.encode())

    def _drop_item(self, item: str) -> None:
        self._names.pop(item, None)
        self._count.pop(item, None)
        self._nbrs.pop(item, None)
        self._cat.pop(item, None)
        self._dirty_items.discard(item)
        self._deleted.add(b"i:" + item.encode())

    # -- queries --------------------------------------------------------------------------------

    def recommend(self, user_id: str, k: int, now_ms: int) -> list[tuple[str, float]]:
        """The user's top k items with scores, best first (fallbacks score below every co-occurrence hit).

        Safe while another thread runs `observe` (see analyzers/reads.py)."""
        return read_consistently(lambda: self._recommend(user_id, k, now_ms))

    def _recommend(self, user_id: str, k: int, now_ms: int) -> list[tuple[str, float]]:
        u = self._users.get(user_id)
        if k <= 0:
            return []
        if u is not None and u.__class__ is not list:   # kept as its record: read a copy (reads change nothing)
            u = from_record(u, self._names, {})
        if u is None or u[_LAST] < now_ms - self.cfg.user_ttl_s * 1000.0:
            return self.trending.top(None, k, now_ms)
        exclude = {item for item, ts in (u[_BOUGHT] or {}).items() if ts >= now_ms - self.exclude_bought_ms}
        scores: dict[str, float] = {}
        count, nbrs, hl = self._count, self._nbrs, self.half_life_ms
        for j in range(u[_START], len(u), 4):
            item, ts, w = u[j], u[j + 1], u[j + 2]
            rec = w * 2.0 ** ((ts - now_ms) / hl)
            scores[item] = scores.get(item, 0.0) + rec * self.self_weight
            nb = nbrs.get(item)
            if not nb:
                continue
            ci = count.get(item, 0.0)
            if ci <= 0.0:
                continue
            f = rec / math.sqrt(ci)
            for other, c in nb.items():
                co = count.get(other)
                if co:
                    scores[other] = scores.get(other, 0.0) + f * c / math.sqrt(co)
        for item in exclude:
            scores.pop(item, None)
        out = heapq.nlargest(k, scores.items(), key=lambda kv: kv[1])
        if len(out) < k:
            out.extend(self._fallback(u, k - len(out), now_ms, exclude | {i for i, _ in out},
                                      out[-1][1] if out else 1.0))
        return out

    def _fallback(self, u: User, k: int, now_ms: int, skip: set[str], below: float) -> list[tuple[str, float]]:
        """Trending in the user's categories (strongest first), then overall, scaled under `below`."""
        found: list[tuple[str, float]] = []
        cats = user_cats(u)
        for cat in [*sorted(cats, key=cats.__getitem__, reverse=True), None]:
            for item, s in self.trending.top(cat, k + len(skip), now_ms):
                if item not in skip:
                    skip.add(item)
                    found.append((item, s))
                    if len(found) == k:
                        break
            if len(found) == k:
                break
        top = max((s for _, s in found), default=1.0) or 1.0
        return [(item, 0.5 * below * (s / top) / (1 + i)) for i, (item, s) in enumerate(found)]

    def statistics(self) -> RecommenderStats:
        return RecommenderStats(users=len(self._users), items=len(self._count),
                                links=sum(map(len, list(self._nbrs.values()))), events=self._events,
                                users_dropped=self._dropped)

    # -- state ----------------------------------------------------------------------------------

    def take_changes(self) -> dict[bytes, bytes | None]:
        """Records changed since the last call, for an incremental commit: key -> value (None deletes).

        Keys: b"i:<item>", b"u:<user>", b"r#" (meta) and the trending records (b"t...").
        """
        deleted, items, users, trending = self.take_dirty()
        out: dict[bytes, bytes | None] = dict.fromkeys(deleted)
        out.update(self.records(items, users))
        out.update(trending)
        return out

    def take_dirty(self) -> tuple[set[bytes], list[str], list[str], dict[bytes, bytes | None]]:
        """What `take_changes` would write, with the item and user records still to be made:
        (deleted keys, changed items, changed users, trending's records). `records` of the items and
        users, made before the next `observe`, completes it (in slices, with reads answered between)."""
        deleted, items = self._deleted, list(self._dirty_items)
        users, kept = [], []
        for uid, u in islice(reversed(self._users.items()), self._dirty_user_count):   # the changed: last
            if u.__class__ is list:
                u[_DIRTY] = False
            else:
                kept.append(uid)   # kept as a bytearray while dirty: bytes now that it is clean
            users.append(uid)
        for uid in kept:
            self._users[uid] = bytes(self._users[uid])
        self._deleted = set()
        self._dirty_items.clear()
        self._dirty_user_count = 0
        return deleted, items, users, self.trending.take_changes()

    def records(self, items: Iterable[str], users: Iterable[str]) -> dict[bytes, bytes | None]:
        """The records of these items and users plus the meta record; changes nothing."""
        out: dict[bytes, bytes | None] = {}
        self.records_into(out.__setitem__, items, users)
        return out

    def records_into(self, put: Callable[[bytes, bytes], None], items: Iterable[str], users: Iterable[str]) -> None:
        """`records`, each handed to `put(key, value)` as it is made (the process packs them at once)."""
        count, cats, nbrs, all_users = self._count, self._cat, self._nbrs, self._users
        for item in items:
            if item in count:
                put(b"i:" + item.encode(), jsonbytes.dumps([count[item], cats.get(item), nbrs.get(item, {})]))
        for uid in users:
            u = all_users.get(uid)
            if u is not None:
                put(b"u:" + uid.encode(), record_of(u))
        put(b"r#", jsonbytes.dumps({"ref": self._ref_ms, "events": self._events, "dropped": self._dropped}))

    def restore_items(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Rebuild the whole state from the records `take_changes` wrote (in any order)."""
        self.__init__(self.cfg, weights=self.weights, self_weight=self.self_weight,   # type: ignore[misc]
                      exclude_bought_s=self.exclude_bought_ms / 1000.0, max_pairs_per_event=self.max_pairs)
        users: list[tuple[int, str, User]] = []
        counts: list[tuple[float, str]] = []
        trending = []
        for key, value in items:
            if key.startswith(b"i:"):
                count, cat, nb = orjson.loads(value)
                item = key[2:].decode()
                counts.append((count, item))
                if cat is not None:
                    self._cat[item] = cat
                if nb:
                    self._nbrs[item] = nb
            elif key.startswith(b"u:"):
                users.append((record_last_ms(value), key[2:].decode(), value))
            elif key == b"r#":
                meta = orjson.loads(value)
                self._ref_ms, self._events, self._dropped = meta["ref"], meta["events"], meta["dropped"]
            elif key.startswith(b"t"):
                trending.append((key, value))
        for count, item in sorted(counts):   # the weakest first: eviction takes the front
            self._count[item] = count
        self._share_names()
        names, cat_names = self._names, self._cat_names
        for _, uid, value in sorted(users, key=lambda t: t[0]):   # idlest first, as observe keeps them
            self._users[uid] = from_record(value, names, cat_names)
        self.trending.restore_items(trending)

    def _share_names(self) -> None:
        """Key restored items by one str per item and category, as observe does (parsing made one per
        use); item names are the count's keys. (Users share them as they are restored: from_record.)"""
        names, cat_names = self._names, self._cat_names
        names.update((item, item) for item in self._count)
        for item, cat in self._cat.items():
            self._cat[item] = cat_names.setdefault(cat, cat)
        for item, nb in self._nbrs.items():
            self._nbrs[item] = {names.get(other, other): c for other, c in nb.items()}

    def idle_users(self, hot: int) -> list[str]:
        """The users beyond the `hot` most recently active that `pack` would pack (those held as
        lists), idlest first; resets `lists_made`."""
        self.lists_made = 0
        beyond = len(self._users) - hot
        if beyond <= 0:
            return []
        return [uid for uid, u in islice(self._users.items(), beyond) if u.__class__ is list]

    def pack(self, uids: Iterable[str]) -> int:
        """Keep these users as their records (recusers.py: ~120 instead of ~460 bytes for a user with
        two recent items) until an event touches one (`observe` makes it a list again; reads use a
        copy); return how many were packed. A user changed since the last take is kept as a bytearray
        (it stays among the changed: its record is due in the next take). Invisible to every answer
        and record."""
        users, packed = self._users, 0
        for uid in uids:
            u = users.get(uid)
            if u.__class__ is list:
                # replaced in place: the recency order (and so which users are the changed ones) stays
                users[uid] = bytearray(to_record(u)) if u[_DIRTY] else to_record(u)
                packed += 1
        return packed

    def snapshot(self) -> bytes:
        """The whole state as bytes (every record, as a first `take_changes` would write it)."""
        records = {**self.records(self._count, self._users), **self.trending.records()}
        return jsonbytes.dumps([[k.hex(), v.hex()] for k, v in records.items() if v is not None])

    def restore(self, data: bytes) -> None:
        """Replace the state with a `snapshot()`."""
        self.restore_items((bytes.fromhex(k), bytes.fromhex(v)) for k, v in orjson.loads(data))
