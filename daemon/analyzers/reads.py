"""Reads of analyser state from the event loop while the runner's worker thread updates it.

The runner folds in a worker thread (pipeline/runner.py), so a query may run while a dict it walks
grows or shrinks. CPython then raises (RuntimeError: dictionary changed size during iteration, or a
KeyError for an entry removed between two lookups); such a read is simply done again. Updates are
short, so a retry almost always finds the state still; the last attempt's error propagates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

ATTEMPTS = 16


def read_consistently(read: Callable[[], T]) -> T:
    """`read()`, again if a concurrent update tore it (see the module docstring)."""
    for _ in range(ATTEMPTS - 1):
        try:
            return read()
        except (RuntimeError, KeyError):
            continue
    return read()
