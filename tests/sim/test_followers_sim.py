"""Read followers in the simulator (issue 14): a doc read on a node that does not hold it, faster
than the budget, is followed there (fetched once, then kept current by its deltas, with no fetch
per read), and dropped once the reads stop for the cool-down. Short timers: a 2 s half-life, a
budget of 10 reads/s, a 5 s cool-down."""

from __future__ import annotations

from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import Replica, ReplicaConfig
from crdtsync.sim import SimCluster, SimConfig

SEED = 5
SHORT = ReplicaConfig(load_half_life_ms=2_000.0, follow_reads_per_s=10.0, follow_cool_down_ms=5_000.0)


def _replica(cluster: SimCluster, index: int) -> Replica:
    replica = cluster.nodes[index].replica
    assert replica is not None
    return replica


def test_a_doc_read_hot_on_a_non_holder_gains_a_follower_there_and_loses_it_after_the_reads_stop() -> None:
    print(f"seed {SEED}")
    config = SimConfig(
        seed=SEED, nodes=4, docs=8, ops=0, faults=frozenset(), placement=PlacementPolicy((PlacementRule(1),)),
        replica=SHORT,
    )  # fmt: skip
    cluster = SimCluster(config)
    cluster.start_nodes()
    cluster.advance(3_000.0)
    doc_index = 0
    doc_id = f"doc-{doc_index}"
    holder = next(i for i in range(4) if _replica(cluster, i).holds(doc_id))
    reader = next(i for i in range(4) if not _replica(cluster, i).holds(doc_id))
    cluster.schedule_op(3_100.0, 0, holder, doc_index)
    cluster.advance(3_500.0)
    board = _replica(cluster, reader).load
    now_ms = 3_500.0
    while now_ms < 9_500.0:  # 40 reads a second for 6 s
        now_ms += 25.0
        cluster.advance(now_ms)
        board.read(doc_id, now_ms)
    assert doc_id in board.following, f"n{reader} does not follow {doc_id} after 6 s of 40 reads/s"
    follower = _replica(cluster, reader)
    assert follower.doc_digest(doc_id) == _replica(cluster, holder).doc_digest(doc_id)

    # A write on the holder reaches the follower by its deltas, well before any check with the holder.
    received = follower.counters.deltas_applied
    cluster.schedule_op(now_ms + 100.0, 1, holder, doc_index)
    cluster.advance(now_ms + 600.0)
    assert follower.counters.deltas_applied > received
    assert follower.doc_digest(doc_id) == _replica(cluster, holder).doc_digest(doc_id)
    summary = _replica(cluster, holder).load.received[follower.node_id][0]
    assert any(doc.doc_id == doc_id and doc.following for doc in summary.docs), "followers are gossiped"

    # The reads stop: the rate falls under half the budget within a few half-lives, then the cool-down.
    cluster.advance(now_ms + 8_000.0)
    assert doc_id in board.following, "dropped before the cool-down ended"
    cluster.advance(now_ms + 20_000.0)
    assert doc_id not in board.following
