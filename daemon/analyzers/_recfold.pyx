# cython: language_level=3, wraparound=False
"""`Recommender.observe`'s loop compiled (analyzers/recommend.py): the same statements in the same
order, with C locals for the indices and the float arithmetic. Every value it stores is the Python
object the pure loop stores (the weights and ts objects as they came, floats from the same IEEE double
operations, sqrt correctly rounded in both), so states, records and answers are equal bit for bit:
tests/unit/test_recommend.py runs both. A change to one is made to the other.

Returns (events folded, user lists made); the caller does the rest of `observe` (`_end_observe`).
"""

from libc.math cimport sqrt


def observe_events(rec, list types, list user_ids, list sessions, list item_col, list cat_col, list tss,
                   from_record, double rebase_half_lives, Py_ssize_t max_cats):
    cdef dict weights = rec.weights
    cdef double hl = rec.half_life_ms
    cdef dict count = rec._count
    cdef dict cats_of = rec._cat
    cdef dict users = rec._users
    cdef dict nbrs = rec._nbrs
    cdef set dirty_items = rec._dirty_items
    cdef Py_ssize_t dirty_user_count = rec._dirty_user_count
    cfg = rec.cfg
    cdef Py_ssize_t limit = 2 * cfg.neighbours_per_item
    cdef Py_ssize_t max_pairs = rec.max_pairs
    cdef Py_ssize_t max_recent = cfg.recent_items_per_user
    cdef Py_ssize_t max_items = cfg.max_items
    cdef Py_ssize_t max_recent_fields = 4 * max_recent
    cdef Py_ssize_t max_cats_end = 4 + 2 * max_cats
    prune = rec._prune
    cdef dict names = rec._names
    cdef dict cat_names = rec._cat_names
    ref = rec._ref_ms
    cdef double ref_d = 0.0 if ref is None else ref
    cdef dict growth_by_ts = {}
    cdef Py_ssize_t events = 0, lists_made = 0
    cdef Py_ssize_t n = len(tss), i, k, j, start, paired, ulen
    cdef double g, wd, c
    cdef list u
    cdef dict mine, theirs, bought
    cdef tuple shared_ts
    if not (len(types) == len(user_ids) == len(sessions) == len(item_col) == len(cat_col) == n):
        raise ValueError("observe_events: columns of unequal length")
    for i in range(n):
        etype = types[i]
        w = weights.get(etype)
        item = item_col[i]
        if not w or item is None:
            continue
        user_id, session, cat, ts = user_ids[i], sessions[i], cat_col[i], tss[i]
        wd = w
        events += 1
        item = names.setdefault(item, item)
        if cat is not None:
            cat = cat_names.setdefault(cat, cat)
        shared_ts = growth_by_ts.get(ts)
        if shared_ts is None:
            if ref is None or (ts - ref) / hl > rebase_half_lives:
                growth_by_ts.clear()
                rec._dirty_user_count = dirty_user_count   # a rebase marks every user
                g = rec._growth(ts)
                ref, dirty_user_count = rec._ref_ms, rec._dirty_user_count
                ref_d = ref
            else:
                g = 2.0 ** ((ts - ref_d) / hl)
            growth_by_ts[ts] = (ts, g)
        else:
            ts, g = shared_ts
        count[item] = count.pop(item, 0.0) + wd * g
        if cat is not None:
            cats_of[item] = cat
        dirty_items.add(item)
        uo = users.pop(user_id, None)
        if uo is None:
            if cat is None:
                u = [ts, True, None, 4, item, ts, w, session]
            else:
                u = [ts, True, None, 6, cat, 0.0 + wd * g, item, ts, w, session]
            if etype == "purchase":
                u[2] = {item: ts}
            users[user_id] = u
            dirty_user_count += 1
            lists_made += 1
            if len(count) > max_items:
                rec._drop_item(next(iter(count)))
            continue
        if type(uo) is not list:
            u = from_record(uo, names, cat_names, type(uo) is bytearray)
            lists_made += 1
        else:
            u = <list>uo
        users[user_id] = u
        if ts > u[0]:
            u[0] = ts
        if not u[1]:
            u[1] = True
            dirty_user_count += 1
        start = u[3]
        if session is not None:
            paired = 0
            mine = nbrs.get(item)
            k = len(u) - 1
            while k > start:
                if u[k] == session and u[k - 3] != item:
                    session, other = u[k], u[k - 3]
                    c = sqrt(wd * <double>u[k - 1]) * g
                    if mine is None:
                        mine = {}
                        nbrs[item] = mine
                    mine[other] = mine.get(other, 0.0) + c
                    theirs = nbrs.get(other)
                    if theirs is None:
                        theirs = {}
                        nbrs[other] = theirs
                    theirs[item] = theirs.get(item, 0.0) + c
                    dirty_items.add(other)
                    if len(theirs) > limit:
                        prune(other)
                    if len(mine) > limit:
                        mine = prune(item)
                    paired += 1
                    if paired >= max_pairs:
                        break
                k -= 4
        k = 0
        ulen = len(u)
        j = start
        while j < ulen:
            if u[j] == item:
                k = j
                break
            j += 4
        if k:
            if u[k + 3] == session:
                session = u[k + 3]
                if u[k + 2] > w:
                    w = u[k + 2]
                    wd = w
        if etype == "purchase":
            bo = u[2]
            if bo is None:
                bought = {}
                u[2] = bought
            else:
                bought = <dict>bo
            bought[item] = ts
            if len(bought) > max_recent:
                del bought[min(bought, key=bought.__getitem__)]
        if cat is not None:
            j = 4
            while j < start:
                if u[j] == cat:
                    u[j + 1] = u[j + 1] + wd * g
                    break
                j += 2
            else:
                u[start:start] = (cat, 0.0 + wd * g)
                if start == max_cats_end:
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
            rec._drop_item(next(iter(count)))
    rec._dirty_user_count = dirty_user_count
    return events, lists_made


def trending_events(tr, list types, list item_col, list cat_col, list tss, dict overall, dict by_cat,
                    double rebase_half_lives):
    """`Trending.observe`'s loop (analyzers/trending.py), the same statements with C locals for the
    weights: the batch's decayed weights summed per item into `overall` and per category into `by_cat`
    (flushed into the scores on a rebase, as there); returns the events counted. The decay factor per
    timestamp is the same Python float arithmetic as there (once per distinct ts); each sum is the
    same IEEE double addition, so the sums are equal bit for bit (tests/unit/test_trending.py runs both)."""
    cdef dict weights = tr.weights
    cdef double hl = tr.half_life_ms
    cdef dict growth_by_ts = {}
    cdef dict sums
    cdef Py_ssize_t events = 0, i, n = len(tss)
    cdef double f, g
    if len(types) != n or len(item_col) != n or len(cat_col) != n:
        raise ValueError("trending_events: columns of unequal length")
    ref = tr._ref_ms
    for i in range(n):
        w = weights.get(types[i])
        item = item_col[i]
        if not w or item is None:
            continue
        ts = tss[i]
        fo = growth_by_ts.get(ts)
        if fo is None:
            if ref is None or (ts - ref) / hl > rebase_half_lives:
                tr._flush(overall, by_cat)
                growth_by_ts.clear()
                fo = tr.growth(ts)
                ref = tr._ref_ms
            else:
                fo = 2.0 ** ((ts - ref) / hl)
            growth_by_ts[ts] = fo
        f = fo
        g = f * <double>w
        events += 1
        prev = overall.get(item)
        overall[item] = (0.0 if prev is None else <double>prev) + g
        cat = cat_col[i]
        if cat is not None:
            sums = by_cat.get(cat)
            if sums is None:
                sums = by_cat[cat] = {}
            prev = sums.get(item)
            sums[item] = (0.0 if prev is None else <double>prev) + g
    return events


def trending_add(dict all_scores, list touched):
    """`Trending._flush`'s adding loop: each (category, sums) of `touched` added into the category's
    scores (made when missing), the same double additions in the same order as there."""
    cdef dict scores, sums
    for cat, sums in touched:
        scores = all_scores.get(cat)
        if scores is None:
            scores = all_scores[cat] = {}
        for item, g in sums.items():
            prev = scores.get(item)
            scores[item] = (0.0 if prev is None else <double>prev) + <double>g
