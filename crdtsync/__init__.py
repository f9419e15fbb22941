"""crdtsync: leaderless multi-master replication of pycrdt documents over ZeroMQ.

The public API is what this module exports; everything else is internal and may change.
"""

from crdtsync.consistency import CausalToken, DocState, NotCoveredError, TokenError, TooManyWaitersError
from crdtsync.core.config import ReplicaConfig
from crdtsync.core.membership import MembershipConfig
from crdtsync.core.placement import (
    ClusterPlacement,
    DocPlacement,
    PlacedReplica,
    PlacementPolicy,
    PlacementRule,
)
from crdtsync.core.status import DcStatus, MemberStatus, PeerStatus
from crdtsync.holders import HintsFullError, WriteAcks, WriteAcksTimeoutError
from crdtsync.node import Node, NodeConfig, NodeStatus
from crdtsync.store import DocRecord, MemoryStore, Store, StoreDescription, StoreError, StoreStats
from crdtsync.transport.curve import CurveConfig, CurveKeyError

__all__ = [
    "CausalToken",
    "ClusterPlacement",
    "CurveConfig",
    "CurveKeyError",
    "DcStatus",
    "DocPlacement",
    "DocRecord",
    "DocState",
    "HintsFullError",
    "MemberStatus",
    "MembershipConfig",
    "MemoryStore",
    "Node",
    "NodeConfig",
    "NodeStatus",
    "NotCoveredError",
    "PeerStatus",
    "PlacedReplica",
    "PlacementPolicy",
    "PlacementRule",
    "ReplicaConfig",
    "Store",
    "StoreDescription",
    "StoreError",
    "StoreStats",
    "TokenError",
    "TooManyWaitersError",
    "WriteAcks",
    "WriteAcksTimeoutError",
]


def _installed_version() -> str:
    """The version of the installed crdtsync (pyproject.toml's, as the wheel or `pip install -e`
    recorded it); "0+unknown" in a checkout that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crdtsync")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _installed_version()
