"""The recommender's stored state moved forward without its process (pure; the runner's fallback).

The fold log keeps every entry after the recommender's cut, for the process to replay. A process
that cannot run (it crashes at start, the machine is out of memory) answers no cut, so the log
would grow without bound. Past `RECS_LOG_MAX_BYTES` the runner folds the entries into the stored
records here, in the daemon, exactly as the process would have (the same 16-event batches), and
stores the result with the new cut: the log shrinks, and a process that starts later begins from
there. It costs the daemon a restore of the whole recommender, so it is a fallback, not the path.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from daemon.analyzers.recommend import Recommender
from daemon.config import RecommendationsConfig
from daemon.pipeline.foldlog import MORE, OBSERVE
from daemon.replica.protocol import cut, step_piece

RECS_LOG_MAX_BYTES = 256 * 2**20


def fold_log_into_records(cfg: RecommendationsConfig, records: Iterable[tuple[bytes, bytes]],
                          blobs: Iterable[bytes]) -> tuple[dict[bytes, bytes | None], int]:
    """(the changes to the stored records after folding the fold-log `blobs` in, events folded)."""
    rec = Recommender(cfg)
    rec.restore_items(records)
    events = 0
    for blob in blobs:
        for step in orjson.loads(blob):
            if step and step[0] in (OBSERVE, MORE):   # as replica/server.py Replica._fold does
                piece = step_piece(step)
                rec.trending.observe(piece)
                for batch in cut(piece):
                    rec.observe(batch, trending=False)
                    events += len(batch)
    return rec.take_changes(), events
