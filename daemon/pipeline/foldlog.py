"""The fold log: what the runner folded since the last full state write, replayed after a restart.

Writing every state an event touched at every 200 ms commit cost more than folding the event
(~2 KB per event with recommendations: neighbour maps, sessions, sketches). So a commit writes
the changed state only every `storage.state_interval`; the commits in between write the fold
steps instead: each accepted batch (after the late check and dedupe, so replay decides nothing
again) and each watermark the windows were closed at, in order, ~150 bytes per event.

Restore = the last written state + every logged step replayed through the same pure code
(`StateParts.observe`, `StateParts.close`). Folding is deterministic (event time decides decay,
expiry and closing), so the replayed state equals the one the crashed process held at its last
commit. What those closes emitted was committed already and is discarded on replay. A large close
runs in chunks (Runner.advance), each its own CLOSE step committed with its rows, so a replay stops
exactly where the committed chunks did and the restarted runner closes the rest.

Two cuts: the recommender is folded in its own process (daemon/replica/), whose state is stored
from its answers with a cut of its own. Each entry is kept under its commit seq until both the
parts' state (`state` cut) and the recommender's (`recs` cut) cover it; a restart replays the
entries after the state cut into the parts and sends those after the recs cut to the process.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from daemon.events import EventBatch

OBSERVE, CLOSE, MORE = 0, 1, 2
# A fold's batch is logged in pieces of at most this many events: `[OBSERVE, source, *columns]`, then
# `[MORE, *columns]` for each further piece (replay joins them into the one batch that was folded).
# Pieces are what the recommendations process parses between two reads (~0.3 ms each, not ~1.4 ms
# for a 4096-event fold); a multiple of its batch (replica/protocol.py FRAME_EVENTS), so it cuts a
# fold into the same batches whether it gets the pieces live or replays them.
PIECE_EVENTS = 1024


class Foldable(Protocol):
    def observe(self, batch: EventBatch) -> None: ...
    def close(self, watermark_ms: int, max_rows: int | None = None) -> Any: ...


class FoldLog:
    """The steps folded since the last `take` (in memory until a commit writes them).

    Each step is kept as its JSON bytes, dumped when it is folded (in the CPU lane): the same bytes
    go to the recommendations process (daemon/replica/) and, at the next commit, into the log entry.
    """

    def __init__(self) -> None:
        self._steps: list[bytes] = []
        self._last_close: int | None = None
        self.events = 0

    def observe(self, batch: EventBatch) -> list[bytes]:
        """Log one observed batch; return its steps' bytes (one per piece)."""
        n = len(batch)
        columns = batch.columns()
        if n <= PIECE_EVENTS:
            steps = [orjson.dumps([OBSERVE, batch.source, *columns])]
        else:
            steps = [orjson.dumps([OBSERVE, batch.source, *(c[:PIECE_EVENTS] for c in columns)])]
            steps += [orjson.dumps([MORE, *(c[i:i + PIECE_EVENTS] for c in columns)])
                      for i in range(PIECE_EVENTS, n, PIECE_EVENTS)]
        self._steps += steps
        self.events += n
        return steps

    def close(self, watermark_ms: int, max_rows: int | None = None) -> None:
        """Log a close: `[CLOSE, watermark]`, or `[CLOSE, watermark, max_rows]` for one that may stop
        inside a window end (the next close at the same watermark then goes on, so it is logged too)."""
        if max_rows is not None:
            self._steps.append(orjson.dumps([CLOSE, watermark_ms, max_rows]))
            self._last_close = None
        # Closing again at the same watermark changes nothing (every part ignores it), so it is not logged.
        elif watermark_ms != self._last_close:
            self._steps.append(orjson.dumps([CLOSE, watermark_ms]))
            self._last_close = watermark_ms

    def peek(self) -> bytes | None:
        """The steps logged since the last `take`, as `take` would return them, without taking them."""
        if not self._steps:
            return None
        # One join of the pieces and separators copies the blob once (b"[" + ... + b"]" did thrice).
        return b"".join([b"[", b",".join(self._steps), b"]"])

    def take(self) -> bytes | None:
        """The logged steps as one blob (None when there are none), and an empty log."""
        blob = self.peek()
        self._steps, self.events = [], 0
        return blob

    def clear(self) -> None:
        """Forget the steps: a full state write covers them."""
        self._steps, self.events = [], 0


def step_batch(step: list[Any], source: str = "") -> EventBatch:
    """The events of an OBSERVE or MORE step (decoded JSON); ValueError unless its columns are whole."""
    try:
        if step[0] == OBSERVE:
            return EventBatch.from_columns(step[1], step[2:])
        return EventBatch.from_columns(source, step[1:])
    except (ValueError, IndexError, TypeError):
        raise ValueError("fold log: an observe step without its full, equal-length columns") from None


def replay(blob: bytes, parts: Foldable) -> tuple[int, int]:
    """Fold the steps of one `take` blob into `parts`; return (steps, events)."""
    steps = orjson.loads(blob)
    events = 0
    batch: EventBatch | None = None    # an observed batch, until its last piece
    for step in steps:
        kind = step[0] if step else None
        if kind == MORE and batch is not None:
            batch.extend(step_batch(step, batch.source))
            continue
        if batch is not None:
            parts.observe(batch)
            events += len(batch)
            batch = None
        if kind == OBSERVE:
            batch = step_batch(step)
        elif kind == CLOSE:
            parts.close(*step[1:3])   # [CLOSE, watermark] or [CLOSE, watermark, max_rows]
        else:
            raise ValueError(f"fold log: unexpected step kind {kind!r}")
    if batch is not None:
        parts.observe(batch)
        events += len(batch)
    return len(steps), events
