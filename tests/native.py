"""Run a module's hot loop compiled (daemon/native.py) or as its pure-Python original, in one test."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from types import ModuleType

import pytest

from daemon.native import NO_EXTENSIONS_ENV

LOOPS = ["compiled", "python"]


@contextmanager
def loop(module: ModuleType, kind: str) -> Iterator[None]:
    """Within the block, `module` folds with its compiled loop (`module._compiled`) or without it.

    A compiled loop that was not built fails the test (the build needs gcc and the Python headers),
    unless STOREPULSE_NO_EXTENSIONS asked for none."""
    built = module._compiled
    if kind == "compiled" and built is None:
        if os.environ.get(NO_EXTENSIONS_ENV):
            pytest.skip(f"{NO_EXTENSIONS_ENV} is set")
        pytest.fail(f"{module.__name__}'s compiled loop was not built: `pip install -e .` (setup.py) "
                    "needs gcc and the Python headers")
    module._compiled = built if kind == "compiled" else None
    try:
        yield
    finally:
        module._compiled = built


@contextmanager
def loops(modules: Sequence[ModuleType], kind: str) -> Iterator[None]:
    """`loop` for several modules at once (a fold that runs more than one compiled loop)."""
    with ExitStack() as stack:
        for module in modules:
            stack.enter_context(loop(module, kind))
        yield
