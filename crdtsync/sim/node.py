"""The state the simulator keeps for one simulated node, across its crashes and restarts: its replica
(None while down), its incarnation, what it subscribes to, its links and, with `SimConfig.durable`,
its durable store and the group commit on its way there."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from crdtsync.core.effects import DeliverEphemeral
from crdtsync.core.replica import Replica
from crdtsync.store.group_commit import CommitQueue
from crdtsync.store.memory import MemoryStore


@dataclass(slots=True)
class SimNode:
    index: int
    address: str
    publish_endpoint: str
    dc: str
    replica: Replica | None = None
    incarnation: int = 0
    departed: bool = False
    """Left the cluster gracefully and not restarted: not part of the convergence check."""
    subscriptions: dict[str, tuple[bool, frozenset[int] | None]] = field(default_factory=dict)
    """Publish endpoint -> (subscribed across the WAN: only frames not published dc_only; the
    buckets subscribed to besides frames published without one, None for every bucket)."""
    ephemeral_delivered: deque[DeliverEphemeral] = field(default_factory=lambda: deque(maxlen=1024))
    """The latest ephemeral messages the replica handed over (for docs it listens to)."""
    tick_token: int = 0
    tick_at_ms: float = float("inf")
    link_free_ms: dict[int, float] = field(default_factory=dict)
    # The durable store (only with `SimConfig.durable`): what completed commits hold survives crashes;
    # what is on its way there does not.
    store: MemoryStore = field(default_factory=MemoryStore)
    """The content of completed commits, with the doc state records, like the SQLite store's."""
    commits: CommitQueue = field(default_factory=CommitQueue)
    """Effects handed over and not yet committed (group ids never repeat, across incarnations too)."""
    sends_after_commit: deque[tuple[int, list[tuple[SimNode, bytes]]]] = field(default_factory=deque)
    """(effect number in `commits`, frames): acknowledgements of durability (`Send.after_commit`)
    held until the commits reach that effect; a crash loses them."""
    linger_token: int = 0
    """Negative while the pending group lingers (`COMMIT_LINGER_MS`): the token of the event that
    ends it; made positive again (a new value) when a commit starts or the node crashes."""
    waiting: deque[tuple[int, list[int]]] = field(default_factory=deque)
    """(effect number in `commits`, indexes into `SimCluster.writes`) in effect order: the writes are
    acknowledged when the commits reach the effect that held their updates."""
