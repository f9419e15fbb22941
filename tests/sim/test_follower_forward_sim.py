"""A read forwarded by a node that does not hold a doc goes to a follower of the doc in its own
datacenter before a holder across the WAN (issue 14: followers answer their datacenter's reads),
in the simulator: 2 datacenters of 3 nodes, every replica in dc0 (`rf = {dc0 = 1}`), short timers.
A node of dc1 reads a doc hot and follows it; from then on another node of dc1 forwards its reads
of the doc to that follower, and its writes still to the holder in dc0; once the follower stops,
reads go to the holder again. The seed is printed and replays."""

from __future__ import annotations

import os
import random

from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import Replica, ReplicaConfig
from crdtsync.sim import SimCluster, SimConfig

SHORT = ReplicaConfig(load_half_life_ms=1_000.0, follow_reads_per_s=10.0, follow_cool_down_ms=5_000.0)
DOC_ID = "doc-0"


def _replicas(cluster: SimCluster) -> list[Replica]:
    return [node.replica for node in cluster.nodes if node.replica is not None]


def test_a_read_goes_to_the_follower_of_its_datacenter_before_a_holder_across_the_wan() -> None:
    seed = int(os.environ.get("CRDTSYNC_SIM_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (replay: CRDTSYNC_SIM_SEED={seed})")
    config = SimConfig(
        seed=seed, nodes=6, docs=8, ops=0, faults=frozenset(), datacenters=2,
        placement=PlacementPolicy((PlacementRule({"dc0": 1}),)), replica=SHORT,
    )  # fmt: skip
    cluster = SimCluster(config)
    cluster.start_nodes()
    cluster.advance(5_000.0)
    replicas = _replicas(cluster)
    holder = next(r for r in replicas if r.holds(DOC_ID))
    reader, other = [r for r in replicas if r.dc == "dc1"][:2]
    assert holder.dc == "dc0" and not reader.holds(DOC_ID) and not other.holds(DOC_ID)
    before = other.forward_target(DOC_ID, read=True)
    assert before is not None and before[0] == holder.node_id, f"seed {seed}: {before}"

    now_ms = 5_000.0
    while now_ms < 25_000.0 and DOC_ID not in reader.load.following:
        now_ms += 50.0
        cluster.advance(now_ms)
        reader.load.table.count("read", DOC_ID, reader.dc, now_ms, 2.0)  # 40 reads/s
    assert DOC_ID in reader.load.following, f"seed {seed}: {reader.node_id} does not follow after 20 s"
    # Its summary reaches the other node of its datacenter within a few gossip rounds.
    deadline_ms = now_ms + 10_000.0
    while now_ms < deadline_ms and other.forward_target(DOC_ID, read=True) != (
        reader.node_id,
        reader.address,
    ):
        now_ms += 50.0
        cluster.advance(now_ms)
        reader.load.table.count("read", DOC_ID, reader.dc, now_ms, 2.0)
    assert other.forward_target(DOC_ID, read=True) == (reader.node_id, reader.address), (
        f"seed {seed}: {other.node_id} forwards reads to {other.forward_target(DOC_ID, read=True)}"
    )
    write_target = other.forward_target(DOC_ID)
    assert write_target is not None and write_target[0] == holder.node_id, (
        f"seed {seed}: writes go to a holder"
    )

    # The reads stop: the follower goes after the cool-down, and reads go to the holder again.
    deadline_ms = now_ms + 40_000.0
    while now_ms < deadline_ms:
        now_ms += 500.0
        cluster.advance(now_ms)
        target = other.forward_target(DOC_ID, read=True)
        if DOC_ID not in reader.load.following and target is not None and target[0] == holder.node_id:
            break
    assert DOC_ID not in reader.load.following, f"seed {seed}: still followed after the cool-down"
    after = other.forward_target(DOC_ID, read=True)
    assert after is not None and after[0] == holder.node_id, f"seed {seed}: reads go to {after}"
