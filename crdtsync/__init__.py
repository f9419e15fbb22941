"""crdtsync: leaderless multi-master replication of pycrdt documents over ZeroMQ.

The public API is what this module exports; everything else is internal and may change.
"""

from crdtsync.core.replica import PeerStatus, ReplicaConfig
from crdtsync.node import Node, NodeConfig, NodeStatus
from crdtsync.store import MemoryStore, Store
from crdtsync.store.sqlite import StoreError

__all__ = [
    "MemoryStore",
    "Node",
    "NodeConfig",
    "NodeStatus",
    "PeerStatus",
    "ReplicaConfig",
    "Store",
    "StoreError",
]
__version__ = "0.1.0"
