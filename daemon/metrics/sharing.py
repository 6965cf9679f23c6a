"""One copy per distinct string value kept in state: pane keys and small distinct sets (pure).

Every event decodes to fresh str objects, so a state that keeps a value (the item ids in a
session's distinct tuple, the user ids in an item pane's, an item pane's key) kept a ~55-byte copy
of it per event that put it there. Interned strings (sys.intern) are one object per value, freed
with their last reference (interned strings are mortal), at ~35 bytes per value in the
interpreter's table. A lookup there costs ~0.3 us, so values are interned only where a state
keeps them, not per event: session keys are not (one state each; measured, it saved ~8 MB per
1M sessions for ~0.15 us per new session).
"""

from __future__ import annotations

from sys import intern
from typing import Any


def shared(value: Any) -> Any:
    """The interned copy of a str (an equal value, the same object for every caller); others as given."""
    return intern(value) if type(value) is str else value


def shared_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """A group key tuple whose str parts are interned."""
    return tuple(intern(v) if type(v) is str else v for v in key)
