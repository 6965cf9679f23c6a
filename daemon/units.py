"""Parse durations ("250ms", "5s", "1m", "2h", "1d") and sizes ("4MiB", "1GB") (pure)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_B = {
    None: 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}


def parse_duration_s(text: str) -> float:
    """Return seconds for a duration string; ValueError names what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string like \"5s\", got {type(text).__name__}")
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"bad duration {text!r}: use a number and one of ms, s, m, h, d (e.g. \"250ms\", \"5s\")")
    return float(match.group(1)) * _DURATION_S[match.group(2)]


def parse_duration_ms(text: str) -> int:
    """Return whole milliseconds for a duration string."""
    return round(parse_duration_s(text) * 1000)


def parse_size_bytes(text: str | int) -> int:
    """Return bytes for a size string ("4MiB") or a plain int."""
    if isinstance(text, bool):
        raise ValueError("expected a size like \"4MiB\", got a boolean")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
    if not isinstance(text, str):
        raise ValueError(f"expected a size string like \"4MiB\", got {type(text).__name__}")
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"bad size {text!r}: use a number and one of B, KB, MB, GB, KiB, MiB, GiB")
    return int(float(match.group(1)) * _SIZE_B[match.group(2)])
