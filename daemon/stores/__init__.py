"""Durable storage: LMDB state + Arrow IPC files, joined by the commit protocol in checkpoint.py.

Only the light vocabulary is re-exported here; import checkpoint/schemas for lmdb and pyarrow.
"""

from daemon.stores.base import ArrowStats, CommitUnit, LmdbStats, Restored, StoreStats

__all__ = ["ArrowStats", "CommitUnit", "LmdbStats", "Restored", "StoreStats"]
