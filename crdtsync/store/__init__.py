"""Stores: where a node keeps its updates. `MemoryStore` for now; SQLite is the durable default to come."""

from crdtsync.store.base import Store
from crdtsync.store.memory import MemoryStore

__all__ = ["MemoryStore", "Store"]
