"""Follow sessions in the simulator: an application opens a doc on a node that does not hold it, as
`Node.open` does (the doc is pinned, fetched from its nearest holder, and followed while open), and
releases it after a while, or keeps it open to the end of the run.

The invariants then ask more of placement (`crdtsync.sim.invariants`): a doc still open on a
follower must equal the doc on its holders once the cluster settles, and a released one must be gone
from the follower like any doc it does not hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crdtsync.sim.cluster import EventKind, SimCluster

KEPT_OPEN_ONE_IN = 3
"""One follow session in this many stays open to the end of the run."""


class Follows:
    def __init__(self, cluster: SimCluster, schedule: Callable[[float, EventKind, Any], None]) -> None:
        self._cluster = cluster
        self._schedule = schedule
        self._open: dict[tuple[int, str], int] = {}
        """(node index, doc id) -> the node's incarnation that holds the doc open."""
        self.sessions = 0

    def plan(self) -> None:
        """Schedule `SimConfig.follows` sessions at random times of the write window."""
        config = self._cluster.config
        for _ in range(config.follows):
            self._schedule(self._cluster.rng.uniform(0.0, config.write_window_ms), "follow", None)

    def open_on(self, index: int) -> frozenset[str]:
        """The docs an application holds open on node `index` (its current incarnation)."""
        incarnation = self._cluster.nodes[index].incarnation
        return frozenset(
            doc for (node, doc), held in self._open.items() if node == index and held == incarnation
        )

    def on_follow(self, _payload: None) -> None:
        """Open a doc a random live node does not hold, and plan its release (or keep it open)."""
        cluster = self._cluster
        rng = cluster.rng
        alive = [node for node in cluster.nodes if node.replica is not None]
        if not alive:
            return
        node = rng.choice(alive)
        replica = node.replica
        assert replica is not None
        candidates = [f"doc-{i}" for i in range(cluster.config.docs)]
        not_held = [doc_id for doc_id in candidates if not replica.holds(doc_id)]
        if not not_held:
            return
        doc_id = rng.choice(not_held)
        key = (node.index, doc_id)
        if self._open.get(key) == node.incarnation:
            return
        cluster.open_doc(node.index, doc_id, pin=True)
        replica.fetch_doc(doc_id, cluster.now_ms)
        self._open[key] = node.incarnation
        self.sessions += 1
        if rng.randrange(KEPT_OPEN_ONE_IN):
            release_at = cluster.now_ms + rng.uniform(*cluster.config.follow_ms)
            self._schedule(release_at, "unfollow", (node.index, node.incarnation, doc_id))
        cluster.pump_node(node.index)

    def on_unfollow(self, payload: tuple[int, int, str]) -> None:
        index, incarnation, doc_id = payload
        node = self._cluster.nodes[index]
        if self._open.get((index, doc_id)) != incarnation:
            return
        del self._open[(index, doc_id)]
        if node.replica is not None and node.incarnation == incarnation:
            node.replica.release_doc(doc_id)
            self._cluster.pump_node(index)
