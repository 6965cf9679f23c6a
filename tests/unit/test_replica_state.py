"""The recommender's exactly-once across two processes (daemon/replica/server.py `Replica.apply`).

The daemon writes the recommender's state from the process's CHANGES answers (at the cuts it sends
after full state writes) and keeps the fold-log entries after the stored cut. A process started
after a crash gets the stored records, then the entries after the cut, then the steps folded
since the last commit: it must hold exactly what the crashed one held, and answer the same.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import RecommendationsConfig
from daemon.pipeline.foldlog import FoldLog
from daemon.pipeline.validate import Validator
from daemon.replica import protocol
from daemon.replica.server import Replica
from daemon.analyzers.recommend import Recommender
from daemon.storefront.generator import Generator

START_MS = 1_700_000_000_000


class NoCollector:
    """The process's GC schedule is beside the point here (and would turn the test process's GC off)."""

    def folded(self, events: int) -> None:
        pass

    def collect(self) -> None:
        pass


def new_replica(answers: list[bytes], part_bytes: int = protocol.ANSWER_PART_BYTES) -> Replica:
    async def answer(*pieces: bytes) -> None:
        answers.append(b"".join(pieces))
    rep = Replica(Recommender(RecommendationsConfig(half_life_s=600.0, user_ttl_s=120.0)), NoCollector(), answer)
    rep.answer_part_bytes = part_bytes
    return rep


def take_answer(answers: list[bytes], seq: int) -> list[bytes]:
    """The answer to CUT seq, as the daemon's feed takes it: its PART payloads, then its CHANGES payload."""
    frames = [f for data in answers for f in protocol.FrameReader().feed(data)]
    answers.clear()
    assert [k for k, _ in frames] == [protocol.PART] * (len(frames) - 1) + [protocol.CHANGES]
    assert all(protocol.read_changes(p)[0] == seq for _, p in frames)
    return [p for _, p in frames]


def apply(rep: Replica, frames: list[bytes]) -> None:
    async def run() -> None:
        for data in frames:
            for kind, payload in protocol.FrameReader().feed(data):
                await rep.apply(kind, payload)
    asyncio.run(run())


def everything(rep: Replica) -> dict[bytes, bytes | None]:
    rec = rep.recommender
    return {**rec.records(list(rec._count), list(rec._users)), **rec.trending.records()}


def batches(seed: int, n: int, size: int):
    gen = Generator(seed=seed, start_ms=START_MS, rate=4)   # 120 events span ~30 s: users expire (ttl 120 s)
    v = Validator("s")
    return [v.decode_items(gen.next_batch(size), START_MS + 10**9).batch for _ in range(n)]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 500), n_folds=st.integers(2, 14), crash_after=st.integers(0, 14),
       commits=st.sets(st.integers(1, 14)), state_writes=st.sets(st.integers(1, 14)),
       part_bytes=st.sampled_from([300, 5000, protocol.ANSWER_PART_BYTES]))
def test_stored_changes_plus_replayed_log_equal_the_process_that_folded_everything(
        seed, n_folds, crash_after, commits, state_writes, part_bytes):
    """Folds go to process A as OBSERVE frames; after fold i the daemon commits if i in `commits`
    (a fold-log entry) and also writes its full state if i in `state_writes` (a CUT, whose answer
    the next commit stores). After `crash_after` folds the daemon dies (answers not yet stored are
    lost with it); process B is synced from what was stored and both go on.

    (An answer is never lost while the daemon lives: a process's answers stop only when it dies,
    and a new process starts from the stored records, dropping the uncommitted answers with it.)"""
    stream = batches(seed, 16, 120)
    crash_after = min(crash_after, n_folds)
    answers: list[bytes] = []
    a = new_replica(answers, part_bytes)
    apply(a, list(protocol.records_frames([])))
    log = FoldLog()
    stored: dict[bytes, bytes] = {}
    recs_cut, seq = 0, 0
    entries: dict[int, bytes] = {}    # committed fold-log entries by commit seq
    waiting: list[tuple[int, list[bytes]]] = []
    for i, batch in enumerate(stream[:crash_after], start=1):
        apply(a, [protocol.observe_frame(step, batch.ts[-1]) for step in log.observe(batch)])
        if i in commits or i in state_writes:
            seq += 1
            for cut, payloads in waiting:         # answers received: written by this commit
                for payload in payloads:          # its parts in order, then the rest
                    for k, v in protocol.unpack_changes(protocol.read_changes(payload)[1]).items():
                        if v is None:
                            stored.pop(k, None)
                        else:
                            stored[k] = v
                recs_cut = cut
            waiting = []
            blob = log.take()
            if blob is not None:
                entries[seq] = blob
            for s in [s for s in entries if s <= recs_cut]:
                del entries[s]                    # the lower cut is the recommender's here
            if i in state_writes:
                apply(a, [protocol.cut_frame(seq)])
                waiting.append((seq, take_answer(answers, seq)))
    pending = log.peek()

    b = new_replica([])
    frames = list(protocol.records_frames(sorted(stored.items()), chunk_bytes=2000))
    frames += [protocol.frame(protocol.LOG, entries[s]) for s in sorted(entries) if s > recs_cut]
    if pending is not None:
        frames.append(protocol.frame(protocol.LOG, pending))
    apply(b, frames)
    assert everything(b) == everything(a)

    for batch in stream[crash_after:n_folds + 2]:     # both go on with the same folds
        frames = [protocol.observe_frame(step, batch.ts[-1]) for step in FoldLog().observe(batch)]
        apply(a, frames)
        apply(b, frames)
    assert everything(b) == everything(a)
    now = stream[n_folds + 1].ts[-1]
    users = sorted(a.recommender._users)[:20]
    assert [b.recommender.recommend(u, 10, now) for u in users] == [a.recommender.recommend(u, 10, now) for u in users]
    assert b.recommender.trending.top(None, 10, now) == a.recommender.trending.top(None, 10, now)


def test_records_pack_and_unpack_with_deletes():
    records = {b"i:a": b"[1,null,{}]", b"u:\xc3\xa9": None, b"r#": b"{}", b"": b""}
    assert protocol.unpack_records(protocol.pack_records(records)) == records
    assert protocol.unpack_records(protocol.pack_records({})) == {}


def test_a_truncated_records_payload_is_an_error():
    import pytest
    data = protocol.pack_records({b"k": b"value"})
    with pytest.raises(protocol.ProtocolError):
        protocol.unpack_records(data[:-1])
    with pytest.raises(protocol.ProtocolError):
        protocol.unpack_records(data[:3])


from hypothesis import given as _given
from hypothesis import strategies as _st


@_given(_st.integers(0, 2**64 - 1),
        _st.dictionaries(_st.binary(max_size=20), _st.none() | _st.binary(max_size=40), max_size=60))
def test_a_changes_answer_round_trips_as_one_segment_per_bucket(seq, records):
    """The process packs its answer per bucket (the daemon stores each segment as it is); every record
    comes back, each in the segment of its own bucket."""
    from daemon.stores import segments
    frame = protocol.changes_frame(seq, records)
    (kind, payload), = protocol.FrameReader().feed(frame)
    got_seq, body = protocol.read_changes(payload)
    assert kind == protocol.CHANGES and got_seq == seq
    assert protocol.unpack_changes(body) == records
    for bucket, segment in protocol.change_segments(body):
        assert all(segments.bucket_of(k) == bucket for k, _ in segments.unpack(segment))


def test_a_bad_bucket_index_in_a_changes_answer_is_an_error():
    import pytest
    body = protocol.read_changes(protocol.changes_frame(7, {b"u:a": b"1", b"u:b": None})[protocol.HEADER.size:])[1].tobytes()
    for bad in (body[:1], body[:-1], body + b"x", protocol.U16.pack(1) + protocol._BUCKET.pack(64, 0)):
        with pytest.raises(protocol.ProtocolError):
            protocol.change_segments(bad)
