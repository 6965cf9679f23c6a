"""Frames between the daemon and its replica (daemon/replica/protocol.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import RecommendationsConfig
from daemon.events import FIELDS
from daemon.pipeline.foldlog import FoldLog
from daemon.replica import protocol
from daemon.stores.segments import SegmentBuilder
from tests.strategies import event_batches

frames = st.lists(st.tuples(st.sampled_from(sorted(protocol.KINDS)), st.binary(max_size=300)), max_size=20)


@settings(max_examples=200, deadline=None)
@given(frames, st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
       st.sampled_from([1, 16, protocol.FrameReader.LARGE]))
def test_frames_come_out_whole_and_in_order_however_the_bytes_are_cut(sent, cuts, large):
    """`large`: payloads from this size on are filled in place (a CHANGES answer), smaller ones buffered."""
    stream = b"".join(protocol.frame(k, p) for k, p in sent)
    reader, got, start = protocol.FrameReader(large=large), [], 0
    for cut in sorted({min(c, len(stream)) for c in cuts}) + [len(stream)]:
        got += reader.feed(stream[start:cut])
        start = cut
    assert got == sent
    assert reader.buffered == 0


def test_a_corrupt_header_is_an_error_not_a_guess():
    with pytest.raises(protocol.ProtocolError):
        protocol.FrameReader().feed(b"\x00\x00\x00\x01Xz")
    with pytest.raises(ValueError):
        protocol.frame(b"X", b"")


@settings(max_examples=50, deadline=None)
@given(event_batches(max_size=120), st.integers(min_value=1, max_value=100),
       st.one_of(st.none(), st.integers(min_value=0, max_value=2**53)))
def test_an_observe_frame_carries_the_fold_step_and_the_clock_and_is_cut_in_order(batch, max_events, now_ms):
    (step,) = FoldLog().observe(batch)
    (kind, payload), = protocol.FrameReader().feed(protocol.observe_frame(step, now_ms))
    assert kind == protocol.OBSERVE
    got_now, got_step = protocol.read_observe(payload)
    assert got_now == now_ms and got_step == step
    pieces = list(protocol.cut(protocol.step_piece(orjson.loads(got_step)), max_events))
    assert all(0 < len(b) <= max_events for b in pieces)
    for name in FIELDS:
        assert [v for b in pieces for v in b.column(name)] == batch.column(name)


def test_config_frame_round_trip_carries_the_token_and_bounds():
    cfg = RecommendationsConfig(half_life_s=60.0, listen_host="127.0.0.1", listen_port=9999)
    settings = protocol.ReplicaSettings(cfg, b"secret-token-0123456789", max_connections=7, idle_timeout_s=2.5)
    (kind, payload), = protocol.FrameReader().feed(protocol.config_frame(settings))
    assert kind == protocol.CONFIG
    assert protocol.read_config(payload) == settings


def test_an_observe_step_with_ragged_columns_is_refused():
    with pytest.raises(protocol.ProtocolError):
        list(protocol.cut(protocol.step_piece(orjson.loads(b'[0, "s", ["a"], [1, 2], [], [], [], [], [], [], [], []]'))))


def test_the_replica_process_exits_2_on_a_corrupt_stream_and_says_why():
    """A broken parent (bytes that are not frames) ends the replica with a log line, not a traceback."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = protocol.ReplicaSettings(RecommendationsConfig(listen_host="127.0.0.1", listen_port=port))
    data = protocol.config_frame(settings) + b"\x00\x00\x00\x01Zjunk"
    p = subprocess.run([sys.executable, "-m", "daemon.replica"], input=data, capture_output=True, timeout=30,
                       cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 2, p.stderr.decode()[-2000:]
    assert b'"event":"replica_bad_input"' in p.stderr and b"bad frame header" in p.stderr   # stdout carries frames
    assert b"Traceback" not in p.stderr


def test_a_big_fold_is_logged_in_pieces_that_replay_as_one_batch_and_cut_like_the_whole():
    """A 3000-event fold: three pieces (1024, 1024, 952). Replay folds them as the one batch that was
    folded live; the process cuts the pieces into the same 16-event batches as the whole step."""
    from daemon.pipeline.foldlog import MORE, OBSERVE, PIECE_EVENTS, replay
    from daemon.pipeline.validate import Validator
    from daemon.storefront.generator import Generator

    assert PIECE_EVENTS % protocol.FRAME_EVENTS == 0
    batch = Validator("s").decode_items(Generator(seed=1, start_ms=10**12, rate=50).next_batch(3000), 10**13).batch
    log = FoldLog()
    steps = log.observe(batch)
    log.close(5)
    assert [orjson.loads(s)[0] for s in steps] == [OBSERVE, MORE, MORE]

    class Seen:
        def __init__(self) -> None:
            self.calls: list = []

        def observe(self, b) -> None:
            self.calls.append(("observe", b.columns()))

        def close(self, wm: int) -> None:
            self.calls.append(("close", wm))

    seen = Seen()
    assert replay(log.take(), seen) == (4, 3000)
    assert seen.calls == [("observe", batch.columns()), ("close", 5)]
    cut = [b.columns() for s in steps for b in protocol.cut(protocol.step_piece(orjson.loads(s)))]
    whole = [batch.slice(i, i + protocol.FRAME_EVENTS).columns() for i in range(0, 3000, protocol.FRAME_EVENTS)]
    assert cut == whole


@given(st.dictionaries(st.binary(max_size=20), st.none() | st.binary(max_size=40), max_size=50),
       st.integers(min_value=0, max_value=2**64 - 1))
def test_a_changes_answer_packed_as_made_is_the_frame_of_its_records(records, seq):
    """The process writes its answer in pieces from a SegmentBuilder: the same bytes as the frame of the
    records as a dict, and the daemon reads the same records back."""
    builder = SegmentBuilder()
    for k, v in records.items():
        builder.put(k, v)
    pieces = protocol.changes_frame_pieces(seq, builder)
    assert b"".join(pieces) == protocol.changes_frame(seq, records)
    assert len(builder) == 0 and list(builder.segments()) == []   # emptied as it was read
    (kind, payload), = protocol.FrameReader(large=64).feed(b"".join(pieces))
    got_seq, body = protocol.read_changes(payload)
    assert kind == protocol.CHANGES and got_seq == seq and protocol.unpack_changes(body) == records
