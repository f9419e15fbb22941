"""Stores: where a node keeps its updates. `Store` is the contract a node asks of one; `MemoryStore`
keeps docs in process memory, `crdtsync.store.sqlite.SqliteStore` on disk."""

from crdtsync.store.base import DocRecord, Durability, Store, StoreCommitError, StoreDescription, StoreError
from crdtsync.store.memory import MemoryStore
from crdtsync.store.writer import StoreStats

__all__ = [
    "DocRecord",
    "Durability",
    "MemoryStore",
    "Store",
    "StoreCommitError",
    "StoreDescription",
    "StoreError",
    "StoreStats",
]
