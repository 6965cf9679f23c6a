"""Frames between the daemon and its recommendations process: u32 payload length, one kind byte, payload.

Daemon → process (its stdin), in this order:
  CONFIG (once, first): the settings as JSON (ReplicaSettings).
  RECORDS*: chunks of the stored `recs` records (`pack_records`), then RESTORE: build the
    recommender from them (the state at the stored cut).
  LOG*: fold-log entries committed after that cut, then the steps folded since the last commit
    (pipeline/foldlog.py blobs); the process folds their OBSERVE steps.
  SYNCED: the process now holds the daemon's state; it answers reads from here on.
  then, live: OBSERVE (u64 read clock + one fold step, the very bytes the fold log holds) per fold,
    and CUT (u64 commit seq) after each commit that wrote the daemon's full state.
Process → daemon (its stdout):
  READY (JSON {"port": n}): synced and listening; the daemon forwards reads there.
  CHANGES (u64 seq + `changes_frame`'s bucket segments): the records changed since its last CHANGES,
    answering CUT seq: its state equals the stored one plus these once every step up to commit seq
    is folded. They come as one state segment per bucket (stores/segments.py), so the daemon stores
    them as they are, without unpacking a million records into objects first.
  PART (the same payload): an answer of more than ANSWER_PART_BYTES comes as PART frames, then its
    CHANGES frame with the rest; the answer is all of them, in order (later records win). Parts
    without their CHANGES frame (the process died meanwhile) are no answer: the daemon drops them.
Pure: no I/O here, so the parser is tested byte by byte.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from daemon.config import RecommendationsConfig
from daemon.events import EventBatch
from daemon.pipeline import foldlog
from daemon.stores import segments

CONFIG, RECORDS, RESTORE, LOG, SYNCED, OBSERVE, CUT = b"C", b"R", b"S", b"L", b"Y", b"O", b"K"
READY, CHANGES, PART = b"P", b"A", b"B"
KINDS = frozenset({CONFIG, RECORDS, RESTORE, LOG, SYNCED, OBSERVE, CUT, READY, CHANGES, PART})
HEADER = struct.Struct(">Ic")
U64 = struct.Struct(">Q")
U16 = struct.Struct(">H")
_BUCKET = struct.Struct(">HI")   # a changes frame's index entry: bucket, segment length
NO_CLOCK = 2**64 - 1      # OBSERVE before the first watermark: the process reads its own clock
FRAME_EVENTS = 16         # events per recommender batch in the process (reads are answered between two)
MAX_FRAME_BYTES = 2**31   # anything bigger is corruption
RECORDS_CHUNK_BYTES = 8 << 20
# The process sends an answer's records in parts of about this much as it makes them (PART): an answer
# of ~150k changed users was ~50 MiB held at once before its frame was written.
ANSWER_PART_BYTES = 4 << 20


class ProtocolError(ValueError):
    """The byte stream is not a sequence of frames (the reader exits or restarts its peer)."""


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    if kind not in KINDS:
        raise ValueError(f"unknown frame kind {kind!r}")
    return HEADER.pack(len(payload), kind) + payload


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """What the process needs from the daemon's config (sent in the CONFIG frame, never on argv)."""

    recommendations: RecommendationsConfig
    token: bytes | None = None              # http.token_file's token: the process requires it too
    max_connections: int = 2048             # http.max_connections
    idle_timeout_s: float = 30.0            # http.idle_timeout


def config_frame(settings: ReplicaSettings) -> bytes:
    body = {"recommendations": dataclasses.asdict(settings.recommendations),
            "token": settings.token.decode() if settings.token else None,
            "max_connections": settings.max_connections, "idle_timeout_s": settings.idle_timeout_s}
    return frame(CONFIG, orjson.dumps(body))


def read_config(payload: bytes) -> ReplicaSettings:
    body = orjson.loads(payload)
    token = body.get("token")
    return ReplicaSettings(RecommendationsConfig(**body["recommendations"]), token.encode() if token else None,
                           int(body["max_connections"]), float(body["idle_timeout_s"]))


# ---- records: key → value (None deletes), the `recs` namespace of the daemon's state ---------------

def pack_records(records: dict[bytes, bytes | None] | Iterable[tuple[bytes, bytes | None]]) -> bytes:
    """The records as one state segment (stores/segments.py: u32 n, n × u32 key length, n × u32 value
    length (0xFFFFFFFF: deleted), the keys, the values)."""
    return segments.pack(records)


def unpack_records(data: bytes) -> dict[bytes, bytes | None]:
    try:
        return dict(segments.unpack(data))
    except ValueError as exc:
        raise ProtocolError(f"a records payload: {exc}") from None


def records_frames(items: Iterable[tuple[bytes, bytes]], chunk_bytes: int = RECORDS_CHUNK_BYTES) -> Iterator[bytes]:
    """RECORDS frames of about `chunk_bytes` each, then the RESTORE frame."""
    chunk: list[tuple[bytes, bytes]] = []
    size = 0
    for k, v in items:
        chunk.append((k, v))
        size += len(k) + len(v) + 8
        if size >= chunk_bytes:
            yield frame(RECORDS, pack_records(chunk))
            chunk, size = [], 0
    if chunk:
        yield frame(RECORDS, pack_records(chunk))
    yield frame(RESTORE)


def changes_frame(seq: int, records: Mapping[bytes, bytes | None] | segments.SegmentBuilder) -> bytes:
    """frame(CHANGES, u64 seq, u16 n, n × (u16 bucket, u32 length), the n segments), joined once (an
    answer is ~20-40 MiB: each concatenation copied it again)."""
    return b"".join(changes_frame_pieces(seq, records))


def changes_frame_pieces(seq: int, records: Mapping[bytes, bytes | None] | segments.SegmentBuilder) -> list[bytes]:
    """`changes_frame` as the pieces to write one after the other (the process does not join them: a
    whole answer's copy was one more ~20-40 MiB at once). A SegmentBuilder is emptied as it is read."""
    built = records if isinstance(records, segments.SegmentBuilder) else segments.SegmentBuilder.of(records)
    return _answer_pieces(CHANGES, seq, list(built.take_segments()))


def part_frame_pieces(seq: int, packed: list[tuple[int, bytes]]) -> list[bytes]:
    """A PART frame of an answer to CUT `seq`: (bucket, segment) pairs, as a SegmentBuilder spills them."""
    return _answer_pieces(PART, seq, packed)


def _answer_pieces(kind: bytes, seq: int, packed: list[tuple[int, bytes]]) -> list[bytes]:
    head = U64.pack(seq) + U16.pack(len(packed)) + b"".join(_BUCKET.pack(b, len(seg)) for b, seg in packed)
    size = len(head) + sum(len(seg) for _, seg in packed)
    return [HEADER.pack(size, kind) + head, *(seg for _, seg in packed)]


def read_changes(payload: bytes | bytearray) -> tuple[int, memoryview]:
    """(commit seq, the bucket segments, still packed: see change_segments), without a copy."""
    if len(payload) < U64.size:
        raise ProtocolError("a changes frame without its commit seq")
    return U64.unpack_from(payload)[0], memoryview(payload)[U64.size:]


def change_segments(body: bytes | memoryview) -> list[tuple[int, bytes | memoryview]]:
    """(bucket, segment) of a CHANGES answer's records, as `read_changes` returns them (slices of
    `body`: views into the payload when it is a memoryview; LMDB stores them as they are)."""
    try:
        (n,) = U16.unpack_from(body)
        index = [_BUCKET.unpack_from(body, U16.size + i * _BUCKET.size) for i in range(n)]
    except struct.error:
        raise ProtocolError("a changes frame shorter than its bucket index") from None
    pos = U16.size + n * _BUCKET.size
    if pos + sum(size for _, size in index) != len(body):
        raise ProtocolError(f"a changes frame of {len(body)} bytes, its bucket index says otherwise")
    out = []
    for bucket, size in index:
        if bucket >= segments.BUCKETS:
            raise ProtocolError(f"a changes frame names bucket {bucket} of {segments.BUCKETS}")
        out.append((bucket, body[pos:pos + size]))
        pos += size
    return out


def unpack_changes(body: bytes | memoryview) -> dict[bytes, bytes | None]:
    """Every record of a CHANGES answer (tests and tools; the daemon stores the segments as they are)."""
    out: dict[bytes, bytes | None] = {}
    for _, segment in change_segments(body):
        out.update(unpack_records(segment))
    return out


# ---- fold steps -------------------------------------------------------------------------------------

def observe_frame(step: bytes, now_ms: int | None) -> bytes:
    """One fold step (pipeline/foldlog.py's JSON `[0, source, *columns]`) and the read clock after it."""
    return frame(OBSERVE, U64.pack(NO_CLOCK if now_ms is None else now_ms) + step)


def read_observe(payload: bytes) -> tuple[int | None, bytes]:
    if len(payload) < U64.size:
        raise ProtocolError("an observe frame without its clock")
    now = U64.unpack_from(payload)[0]
    return (None if now == NO_CLOCK else now), payload[U64.size:]


def cut_frame(seq: int) -> bytes:
    return frame(CUT, U64.pack(seq))


def read_cut(payload: bytes) -> int:
    if len(payload) != U64.size:
        raise ProtocolError(f"a cut frame of {len(payload)} bytes")
    return U64.unpack(payload)[0]


def step_piece(step: list[Any]) -> EventBatch:
    """The events of one OBSERVE or MORE step (decoded JSON; pipeline/foldlog.py)."""
    try:
        return foldlog.step_batch(step)
    except ValueError:
        raise ProtocolError("an observe step without its full, equal-length columns") from None


def cut(batch: EventBatch, max_events: int = FRAME_EVENTS) -> Iterator[EventBatch]:
    """`batch` as batches of at most `max_events`, made as they are taken (slicing a whole piece at
    once is ~0.25 ms).

    Live and replayed steps are cut the same way, so a restarted process folds exactly what the
    one before it folded (the recommender's user expiry runs at the end of each batch)."""
    n = len(batch)
    if n <= max_events:
        if n:
            yield batch
        return
    for i in range(0, n, max_events):
        yield batch.slice(i, i + max_events)


class FrameReader:
    """Incremental parser: `feed` bytes as they arrive, get the complete frames so far.

    A payload of at least `large` bytes (a CHANGES answer is 20-40 MiB) is read into a bytearray of
    its size as the bytes come and handed over as it is: no growing buffer that reallocates and
    keeps twice its size, no copy of the whole payload at the end (2-3 payload-sized copies were
    alive at once before). Smaller frames come out as bytes."""

    LARGE = 1 << 20

    def __init__(self, large: int = LARGE) -> None:
        self._buf = bytearray()
        self._large = large
        self._kind = b""
        self._payload: bytearray | None = None   # the large payload being filled
        self._filled = 0

    def feed(self, data: bytes) -> list[tuple[bytes, bytes | bytearray]]:
        out: list[tuple[bytes, bytes | bytearray]] = []
        view = memoryview(data)
        if self._payload is not None:
            view = self._fill(view, out)
            if self._payload is not None:
                return out
        self._buf += view
        pos = 0
        buf = self._buf
        while len(buf) - pos >= HEADER.size:
            n, kind = HEADER.unpack_from(buf, pos)
            if kind not in KINDS or n > MAX_FRAME_BYTES:
                raise ProtocolError(f"bad frame header at byte {pos}: kind {kind!r}, length {n}")
            start, end = pos + HEADER.size, pos + HEADER.size + n
            if len(buf) < end:
                if n >= self._large:
                    self._kind, self._payload, self._filled = kind, bytearray(n), len(buf) - start
                    with memoryview(buf) as have:
                        self._payload[:self._filled] = have[start:]
                    pos = len(buf)
                break
            with memoryview(buf) as have:
                out.append((kind, bytes(have[start:end])))
            pos = end
        del buf[:pos]
        return out

    def _fill(self, view: memoryview, out: list[tuple[bytes, bytes | bytearray]]) -> memoryview:
        """Copy the next bytes into the large payload; once it is whole, emit it. Returns the rest."""
        assert self._payload is not None
        take = min(len(view), len(self._payload) - self._filled)
        self._payload[self._filled:self._filled + take] = view[:take]
        self._filled += take
        if self._filled == len(self._payload):
            out.append((self._kind, self._payload))
            self._payload = None
        return view[take:]

    @property
    def buffered(self) -> int:
        return len(self._buf) + (self._filled if self._payload is not None else 0)
