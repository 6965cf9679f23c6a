"""Windows: the registry of window types (one line per type) and build_windower."""

from __future__ import annotations

from daemon.aggconfig import WindowSpec
from daemon.windows.base import FixedWindower, SessionWindower, Window
from daemon.windows.fixed import Hopping, Tumbling
from daemon.windows.session import Session

WINDOWS = {
    "tumbling": Tumbling,
    "hopping": Hopping,
    "session": Session,
}


def build_windower(spec: WindowSpec) -> FixedWindower | SessionWindower:
    """The windower for a window spec; ValueError for an unknown type."""
    cls = WINDOWS.get(spec.type)
    if cls is None:
        raise ValueError(f"unknown window type {spec.type!r} (one of {', '.join(WINDOWS)})")
    return cls.from_spec(spec)


__all__ = ["WINDOWS", "FixedWindower", "SessionWindower", "Window", "build_windower"]
