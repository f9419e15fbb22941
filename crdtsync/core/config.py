"""Limits and timings of the replication protocol: every buffer has a bound here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """Limits and timings of the replication protocol. Every buffer has a bound here."""

    batch_deltas_max: int = 512
    batch_bytes_max: int = 256 * 1024
    linger_ms: float = 0.0
    """How long a non-full batch may wait for more deltas; 0 sends at the driver's next turn."""
    ring_deltas_max: int = 65536
    ring_bytes_max: int = 64 * 1024 * 1024
    heartbeat_interval_ms: float = 1500.0
    hello_interval_ms: float = 500.0
    retransmit_enabled: bool = True
    """False leaves every lost delta to anti-entropy (used to test that anti-entropy alone converges)."""
    retransmit_timeout_ms: float = 200.0
    seq_ack_interval_ms: float = 5.0
    """The shortest time between two acks of one publisher's deltas (`crdtsync.core.seqacks`): under
    load, one ack covers every write of the interval."""
    seq_ack_wanted_ms: float = 60_000.0
    """How long after a publisher's write-ack question (a `HANDOFF_OFFER`) this node acknowledges its
    deltas; the publisher asks again when its acks are older than half of this. 0: acknowledge
    every publisher always (when nearly every write waits)."""
    retransmit_deltas_max: int = 4096
    out_of_order_seqs_max: int = 8192
    """Received sequence numbers held above a gap; beyond this the peer is resynchronised instead."""
    causal_wait_ms: float = 300.0
    """How long a delta may wait for its dependencies before the doc is pulled from its publisher."""
    pending_deltas_per_doc_max: int = 4096
    pending_bytes_max: int = 64 * 1024 * 1024
    pending_bytes_per_peer_max: int = 16 * 1024 * 1024
    """Update bytes one sender may hold in the causal buffer: a peer that sends deltas whose
    dependencies never come cannot take the whole buffer from the honest ones."""
    ae_interval_ms: float = 5000.0
    """Mean time between periodic anti-entropy rounds (each against one peer, round robin, jittered
    by +-25%); 0 disables the periodic rounds (rounds on connect and on lost gaps still run)."""
    ae_wan_interval_ms: float = 30_000.0
    """Mean time between periodic rounds against a node of another datacenter (also jittered), run
    by relays, and by every node under placement that not every node holds everything; rounds
    inside the datacenter follow `ae_interval_ms`. 0 disables them."""
    ae_round_timeout_ms: float = 1000.0
    """How long each step of a round may wait for the peer's answer before the round is abandoned
    and queued again (a peer that restarted may not know this node yet and cannot answer)."""
    ae_followup_delay_ms: float = 100.0
    """Pause before a round that continues what a budget-limited round left, so its repairs land."""
    ae_segments_per_round_max: int = 2048
    """Differing tree segments whose entries one round fetches; the rest wait for the next round."""
    ae_docs_per_round_max: int = 2048
    ae_bytes_per_round_max: int = 4 * 1024 * 1024
    """Bytes of full-doc pushes one round may send; requests beyond it wait for the next round."""
    peers_max: int = 256
    docs_max: int = 10_000_000
    docs_cached_max: int = 10_000
    """Loaded docs kept beyond those pinned or waiting on deltas; older ones are evicted (least
    recently used first) when the replica has a doc loader to bring them back."""
    docs_cached_bytes_max: int = 256 * 1024 * 1024
    """The same budget in bytes, estimated from the loaded docs' encoded sizes (a loaded Doc takes
    a few times its encoded size in memory, plus about 5 KB of fixed cost)."""
    load_waiters_max: int = 65536
    """Pieces of work (a sync answer, a push, a repair) waiting for evicted docs to load; beyond it
    the work is dropped and counted, and the protocol asks again."""
    load_waiting_bytes_max: int = 64 * 1024 * 1024
    """Update and state bytes those pieces of work hold."""
    update_bytes_max: int = 4 * 1024 * 1024
    tick_interval_ms: float = 50.0
    peer_frames_per_second_max: float = 20_000.0
    """Frames accepted per second from one sender (a token bucket holding one second's worth);
    beyond it frames are dropped and counted, and the protocol repairs what honest peers lose."""
    quarantine_after_rejects: int = 10
    """Updates from one sender, or for one doc, that pycrdt rejects within `quarantine_ms` before
    that sender is ignored, or remote updates for that doc are dropped, for `quarantine_ms`."""
    quarantine_ms: float = 300_000.0
    handoff_interval_ms: float = 1000.0
    """How often docs this node has but does not hold (placement) are offered to a holder."""
    handoff_grace_ms: float = 30_000.0
    """A handed-off doc is dropped only when a second offer, this long after the first confirmed
    one, is confirmed again with no local write in between: the holder has had time to commit it."""
    leave_drain_ms: float = 30_000.0
    """How long a leaving node (`Node.close`, a daemon's SIGTERM) may spend handing the docs it holds
    to the nodes that hold them without it (placement) before it leaves anyway."""
    follower_fetch_timeout_ms: float = 2000.0
    """How long `Node.open` of a doc this node does not hold waits for its nearest holder's answer."""
    load_half_life_ms: float = 300_000.0
    """Adaptive replication: the half-life of the decaying rates of reads and writes per doc and of
    the node's load (docs/placement.md#adaptive-replication)."""
    load_docs_tracked_max: int = 4096
    """Docs whose rates a node keeps (space-saving: the coldest gives its place to a newcomer)."""
    load_docs_gossiped: int = 16
    """Hottest docs in the load summary each node gossips (at most 32)."""
    follow_reads_per_s: float = 5.0
    """Read followers: when the nodes of a datacenter that do not hold a doc read it faster than
    this together, one of them follows it (receives its deltas and serves its reads from its own
    copy); 0 turns followers off."""
    follow_cool_down_ms: float = 600_000.0
    """A followed doc is dropped once its datacenter's read rate stayed below half the budget this long."""
    followers_per_doc_max: int = 3
    """Read followers of one doc in the cluster (from the gossiped summaries)."""
    followed_docs_max: int = 64
    """Docs one node follows at most."""
    follow_subscribe_after_ms: float = 1000.0
    """A doc open on a node that does not hold it subscribes to its holders' deltas once open this
    long (and is fetched again then); shorter opens rely on their fetch and the handoff."""
    shed_partitions: bool = True
    """Loaded nodes shed partitions: a node whose load stays more than `shed_load_over_mean` above its
    datacenter's mean lowers its placement weight a step at a time (docs/placement.md#shedding-load)."""
    shed_load_over_mean: float = 0.10
    """The margin above (and, to take a step back, below) the datacenter's mean load."""
    shed_cool_down_ms: float = 600_000.0
    """After a weight change in the datacenter, no node of it changes again for this long (+-25%)."""
    shed_step: float = 0.9
    """What one step multiplies the node's configured weight by."""
    shed_steps_max: int = 5
    """Steps a node may take down (0.9 ** 5: 59% of its configured weight at the least)."""
    shed_load_min_cores: float = 0.2
    """Below this mean load (CPU cores) a datacenter is not balanced: the noise is larger than the load."""
    handoff_docs_per_pass_max: int = 1024
    """Docs offered per handoff pass (every `handoff_interval_ms`), to every target together."""
    handoff_targets_max: int = 2
    """Handoffs in progress at once: nodes that offers go to while earlier ones wait for an answer."""
    handoff_target_bytes_per_s: int = 4 * 1024 * 1024
    """Update bytes offered to one target per second: with `handoff_targets_max`, the throttle of
    rebalancing (a pass offers at least one doc to each target, however large)."""
    handoff_in_flight_per_target_max: int = 256
    """Offers to one node that may wait for its answer; more wait for a later pass (a newcomer that
    every node hands docs to is not flooded)."""
    hint_bytes_max: int = 1024 * 1024 * 1024
    """Bytes of local writes to docs this node does not hold that no holder has confirmed yet: past
    it, writes opened for such docs are refused (`HintsFullError`, HTTP 507 `hints_full`)."""
    hint_window_ms: float = 3 * 3600 * 1000.0
    """A hint no holder confirmed within this long is counted overdue (`hints_overdue`); it is kept,
    since the node that took the write may hold its only copy."""
    wire_version_max: int = 4
    """The highest wire version this node speaks (1..4; see docs/daemon.md, rolling upgrades).
    1 pins it to what releases before negotiation speak, 2 to those before compact causal metadata,
    3 to those before anti-entropy cells, for a cluster that still has such nodes."""

    def __post_init__(self) -> None:
        if not 1 <= self.wire_version_max <= 4:  # 4: `crdtsync.core.envelope.WIRE_VERSION`
            raise ValueError(f"wire_version_max must be 1, 2, 3 or 4, got {self.wire_version_max!r}")
