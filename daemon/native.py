"""The compiled forms of hot loops (setup.py builds them from daemon/**/_*.pyx), found at import.

Each has its pure-Python original in the module that uses it: that runs when the build had no C
compiler (setup.py marks the extensions optional) or when STOREPULSE_NO_EXTENSIONS is set (non-empty),
and it is the reference the compiled form must equal (the tests run both).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

NO_EXTENSIONS_ENV = "STOREPULSE_NO_EXTENSIONS"


def compiled(module: str) -> ModuleType | None:
    """The compiled module `module` (e.g. "daemon.metrics._distinct"), or None: not built, or not wanted."""
    if os.environ.get(NO_EXTENSIONS_ENV):
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        return None
