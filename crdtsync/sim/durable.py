"""Each simulated node's durable store (`SimConfig.durable`), driven as `StoreWriter` drives a real
one: `Persist` effects join the node's `CommitQueue`; when no commit runs, the next group starts
(after `COMMIT_LINGER_MS` when neither a client write nor an acknowledgement waits on it) and
completes `commit_ms` later; a crash loses the pending group and the running commit. Client writes
are acknowledged, and acknowledgements of durability sent, when the commits reach them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crdtsync.core.effects import Persist
from crdtsync.sim.node import SimNode
from crdtsync.store.writer import COMMIT_LINGER_MS

if TYPE_CHECKING:
    from crdtsync.sim.cluster import EventKind, SimCluster


class SimStores:
    def __init__(self, cluster: SimCluster, schedule: Callable[[float, EventKind, Any], None]) -> None:
        self._cluster = cluster
        self._schedule = schedule

    def load_doc(self, node: SimNode, doc_id: str) -> bytes | None:
        """`StoreWriter.load_doc`: committed content plus what is still on its way to the store."""
        return node.commits.load_doc(node.store, doc_id)

    def persist(self, node: SimNode, persist: Persist) -> int:
        """Hand an effect to the node's store (`StoreWriter.submit`); return its number."""
        number = node.commits.submit(persist)
        self.start_or_linger(node)
        return number

    def start_or_linger(self, node: SimNode) -> None:
        """`StoreWriter`: a group nothing waits on lingers `COMMIT_LINGER_MS` before it starts."""
        if node.waiting or node.sends_after_commit:
            self.start_commit(node)
        elif node.commits.group_id is None and node.commits.pending_effects and node.linger_token >= 0:
            node.linger_token = -node.linger_token - 1  # lingering: `on_linger_end` starts it
            self._schedule(self._cluster.now_ms + COMMIT_LINGER_MS, "linger", (node.index, node.linger_token))

    def on_linger_end(self, payload: tuple[int, int]) -> None:
        node = self._cluster.nodes[payload[0]]
        if node.linger_token == payload[1]:  # not started since (by a wait, a crash or a commit)
            self.start_commit(node)

    def start_commit(self, node: SimNode) -> None:
        started = node.commits.next_group()
        if started is not None:
            node.linger_token = abs(node.linger_token)
            group_id, _group = started
            cluster = self._cluster
            self._schedule(
                cluster.now_ms + cluster.rng.uniform(*cluster.config.commit_ms),
                "commit",
                (node.index, group_id),
            )

    def commit_done(self, node: SimNode, group_id: int) -> None:
        if node.commits.group_id != group_id:
            return  # the commit was running when the node crashed: lost
        node.store.append(node.commits.group_committed())
        while node.waiting and node.waiting[0][0] <= node.commits.committed:
            for position in node.waiting.popleft()[1]:
                self._cluster.acknowledged[position] = self._cluster.now_ms
        self.release_sends(node)
        self.start_or_linger(node)

    def lose_uncommitted(self, node: SimNode) -> None:
        """A crash: the pending group and the running commit are gone; completed commits stay."""
        node.commits.lose()
        node.linger_token = abs(node.linger_token)
        node.waiting.clear()
        node.sends_after_commit.clear()

    def release_sends(self, node: SimNode) -> None:
        """Send the acknowledgements of durability whose effects the commits have reached."""
        while node.sends_after_commit and node.sends_after_commit[0][0] <= node.commits.committed:
            for target, frame in node.sends_after_commit.popleft()[1]:
                self._cluster._transmit(node, target, frame)
