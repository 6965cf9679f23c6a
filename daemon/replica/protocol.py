"""Frames the daemon writes to its replica's stdin: u32 payload length, one kind byte, the payload.

CONFIG (first, once): the replica's settings as JSON (ReplicaSettings: recommendations config, token,
HTTP bounds).
SNAPSHOT: `Recommender.snapshot()` bytes; the replica replaces its state with it.
OBSERVE: one folded batch of accepted events and the read clock after it, as JSON
`[now_ms | null, source, *columns]` (columns in `events.FIELDS` order, like the fold log's steps).
Pure: no I/O here, so the parser is tested byte by byte.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from daemon.config import RecommendationsConfig
from daemon.events import EventBatch

CONFIG, SNAPSHOT, OBSERVE = b"C", b"S", b"O"
KINDS = frozenset({CONFIG, SNAPSHOT, OBSERVE})
HEADER = struct.Struct(">Ic")
FRAME_EVENTS = 16         # events per OBSERVE frame (~0.1 ms of folding in the replica)
MAX_FRAME_BYTES = 2**31   # a snapshot of a very large state still fits; anything bigger is corruption


class ProtocolError(ValueError):
    """The byte stream is not a sequence of frames (the replica exits: its parent is broken)."""


def frame(kind: bytes, payload: bytes) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"unknown frame kind {kind!r}")
    return HEADER.pack(len(payload), kind) + payload


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """What the replica needs from the daemon's config (sent in the CONFIG frame, never on argv)."""

    recommendations: RecommendationsConfig
    token: bytes | None = None              # http.token_file's token: the replica requires it too
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


def observe_frame(batch: EventBatch, now_ms: int | None) -> bytes:
    return frame(OBSERVE, orjson.dumps([now_ms, batch.source, *batch.columns()]))


def observe_frames(batches: Iterable[EventBatch], now_ms: int | None, max_events: int = FRAME_EVENTS) -> list[bytes]:
    """OBSERVE frames of at most `max_events` events each: the replica decodes and folds one frame
    between two reads, so a frame's size bounds how long a read can wait there."""
    out = []
    for batch in batches:
        for start in range(0, len(batch), max_events):
            part = batch if len(batch) <= max_events else batch.slice(start, start + max_events)
            out.append(observe_frame(part, now_ms))
    return out


def read_observe(payload: bytes) -> tuple[int | None, EventBatch]:
    step: list[Any] = orjson.loads(payload)
    try:
        return step[0], EventBatch.from_columns(step[1], step[2:])
    except ValueError:
        raise ProtocolError("an observe frame without its full, equal-length columns") from None


class FrameReader:
    """Incremental parser: `feed` bytes as they arrive, get the complete frames so far."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buf += data
        out: list[tuple[bytes, bytes]] = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= HEADER.size:
            n, kind = HEADER.unpack_from(buf, pos)
            if kind not in KINDS or n > MAX_FRAME_BYTES:
                raise ProtocolError(f"bad frame header at byte {pos}: kind {kind!r}, length {n}")
            end = pos + HEADER.size + n
            if len(buf) < end:
                break
            out.append((kind, bytes(buf[pos + HEADER.size:end])))
            pos = end
        del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
