"""The invariants of DESIGN.md a simulation checks: every replica converges (canonical digests and
JSON), and no write is lost but those a crash of their writer may take before it replicated them
(never one a durable-store commit acknowledged)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pycrdt import Doc

if TYPE_CHECKING:
    from crdtsync.sim.cluster import SimCluster


def check(cluster: SimCluster) -> list[str]:
    """What `SimCluster.check` finds wrong now (nothing: the replicas converged, no write lost)."""
    problems: list[str] = []
    present = [node for node in cluster.nodes if not node.departed]
    replicas = [node.replica for node in present]
    if any(replica is None for replica in replicas):
        return ["a node is down"]
    live = [replica for replica in replicas if replica is not None]
    if live[0].placement_enforced:
        return _check_placed(cluster)
    # A doc opened but never written exists only locally; peers learn of docs through changes.
    doc_sets = [tuple(d for d in replica.doc_ids() if not replica.doc_is_empty(d)) for replica in live]
    if len(set(doc_sets)) != 1:
        return [f"replicas hold different doc sets: {[len(ids) for ids in doc_sets]} docs"]
    states = [cluster.materialized(node.index) for node in present]
    empty = cluster.workload.materialize(Doc())
    for doc_id in doc_sets[0]:
        digests = {replica.doc_digest(doc_id) for replica in live}
        if len(digests) != 1:
            problems.append(f"{doc_id}: {len(digests)} different digests")
        elif any(state[doc_id] != states[0][doc_id] for state in states):
            problems.append(f"{doc_id}: equal digests but different JSON")
    if problems:
        return problems
    for state in states:
        for doc_id in set(state) - set(doc_sets[0]):
            if state[doc_id] != empty:
                problems.append(f"{doc_id}: has content but an empty state vector")
    return problems + lost_writes(cluster, states[0])


def _check_placed(cluster: SimCluster) -> list[str]:
    """With placement: every holder of a doc (as its own member table says) has it, all equal, no
    node keeps a doc it does not hold unless an application holds it open there (a follower), and a
    follower's copy equals the holders'."""
    problems: list[str] = []
    present = [node for node in cluster.nodes if not node.departed and node.replica is not None]
    states = {node.index: cluster.materialized(node.index) for node in present}
    followed = {node.index: cluster.follows.open_on(node.index) for node in present}
    written: dict[str, None] = {}
    for node in present:
        replica = node.replica
        assert replica is not None
        for doc_id in replica.doc_ids():
            if not replica.doc_is_empty(doc_id):
                written[doc_id] = None
                if not replica.holds(doc_id) and doc_id not in followed[node.index]:
                    problems.append(f"n{node.index} still has {doc_id}, which it does not hold")
    reference: dict[str, Any] = {}
    for doc_id in written:
        holders = [node for node in present if node.replica is not None and node.replica.holds(doc_id)]
        if not holders:
            problems.append(f"{doc_id}: no node holds it")
            continue
        digests: set[bytes] = set()
        for node in holders:
            replica = node.replica
            assert replica is not None
            if not replica.has_doc(doc_id) or replica.doc_is_empty(doc_id):
                problems.append(f"{doc_id}: missing on its holder n{node.index}")
                continue
            digests.add(replica.doc_digest(doc_id))
        if len(digests) > 1:
            problems.append(f"{doc_id}: {len(digests)} different digests among its holders")
        elif any(states[node.index].get(doc_id) != states[holders[0].index].get(doc_id) for node in holders):
            problems.append(f"{doc_id}: equal digests but different JSON among its holders")
        reference[doc_id] = states[holders[0].index].get(doc_id, {})
        followers = [node.index for node in present if doc_id in followed[node.index] and node not in holders]
        problems += [
            f"{doc_id}: its follower n{index} differs from its holders"
            for index in followers
            if states[index].get(doc_id) != reference[doc_id]
        ]
    # Without a durable store a crash loses what only that node held; under placement a write may
    # be on its holders only (the writer handed it over), so crashes may take it: then only
    # convergence and acknowledged writes are checked. With no crash, nothing may be lost.
    memory_crashes = not cluster.config.durable and cluster.crashes > 0
    return problems or lost_writes(cluster, reference, holders_may_lose=memory_crashes)


def lost_writes(
    cluster: SimCluster, reference: dict[str, Any], *, holders_may_lose: bool = False
) -> list[str]:
    """The writes `reference` (a converged replica's content) should hold and does not: a value
    nobody wrote in a shared key, a write of a node that never crashed (unless `holders_may_lose`:
    placement with memory stores and crashes), an acknowledged write."""
    problems: list[str] = []
    for position, (write, writer, incarnation) in enumerate(cluster.writes):
        content = reference.get(write.doc_id, {}).get(write.root, {})
        if write.shared:
            key = (write.doc_id, write.root, write.key)
            if write.key in content and content[write.key] not in cluster.shared_values[key]:
                problems.append(f"{write.doc_id}/{write.key} holds a value nobody wrote")
        elif content.get(write.key) != write.value:
            if (writer, incarnation) not in cluster.ever_crashed_incarnations and not holders_may_lose:
                problems.append(f"lost write {write.doc_id}/{write.key}={write.value!r} by n{writer}")
            elif position in cluster.acknowledged:
                problems.append(
                    f"lost acknowledged write {write.doc_id}/{write.key}={write.value!r} by n{writer}"
                    f" (acknowledged at {cluster.acknowledged[position]:.1f} ms, then the writer crashed)"
                )
    return problems


def writes_lost_to_crashes(cluster: SimCluster, final_state: dict[str, Any]) -> int:
    """Unique writes absent from `final_state` whose writer crashed (or left) before they were
    replicated or acknowledged by a commit: what the checker allows to be lost."""
    return sum(
        1
        for position, (write, writer, incarnation) in enumerate(cluster.writes)
        if (writer, incarnation) in cluster.ever_crashed_incarnations
        and position not in cluster.acknowledged
        and not write.shared
        and final_state.get(write.doc_id, {}).get(write.root, {}).get(write.key) != write.value
    )


def final_state(cluster: SimCluster) -> dict[str, Any]:
    """Every doc's content as a node that holds it has it (any node, without placement)."""
    present = [node for node in cluster.nodes if not node.departed and node.replica is not None]
    if not present:
        return {}
    state: dict[str, Any] = {}
    for node in present:
        replica = node.replica
        assert replica is not None
        if not replica.placement_enforced:
            return cluster.materialized(node.index)
        for doc_id, content in cluster.materialized(node.index).items():
            if replica.holds(doc_id) and doc_id not in state:
                state[doc_id] = content
    return state
