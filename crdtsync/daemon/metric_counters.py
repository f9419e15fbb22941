"""The node's counters as Prometheus metrics: how `crdtsync.daemon.metrics` reads each field of
`Counters` (metric name, help, labels). A misspelt field is a type error; docs/daemon.md has a row
for every metric (a test checks it)."""

from __future__ import annotations

from collections.abc import Callable

from crdtsync.core.counters import Counters

_FRAMES_DROPPED_HELP = (
    "Frames dropped before they were handled, by reason (rate: over peer_frames_per_second_max from one "
    "sender; quarantined: from a quarantined sender; identity: a node id sent from another key than its own)."
)
_EPHEMERAL_HELP = (
    "Ephemeral messages (awareness across nodes, never stored), by event: published for this node's "
    "clients, relayed into this datacenter, delivered to this node's listeners, not listened to here."
)
_SEQ_ACKS_HELP = "Sequence acknowledgements: of peers' deltas (sent), of this node's (received)."
_SEQ_ACKS_DROPPED_HELP = (
    "Sequence acknowledgements dropped: of an earlier incarnation, or naming numbers never published."
)
_EPHEMERAL_DROPPED_HELP = (
    "Ephemeral messages dropped, by reason: over the publish or relay rate, over the size bound, a doc "
    "not listened to because too many are."
)

# how to read each counter of NodeStatus.counters -> (metric, help, labels): a misspelt field is a type error
COUNTERS: tuple[tuple[Callable[[Counters], int], str, str, dict[str, str]], ...] = (
    (lambda c: c.deltas_published, "updates_published", "Local transactions published.", {}),
    (
        lambda c: c.deltas_merged,
        "updates_merged",
        "Local transactions published merged into the delta of the one before them.",
        {},
    ),
    (
        lambda c: c.delta_merges_refused,
        "update_merges_refused",
        "Runs of a doc's local transactions in a batch that pycrdt refused to merge: they left apart.",
        {},
    ),
    (lambda c: c.deltas_applied, "updates_applied", "Remote updates applied, by path.", {"path": "stream"}),
    (
        lambda c: c.sync_updates_applied,
        "updates_applied",
        "Remote updates applied, by path.",
        {"path": "sync"},
    ),
    (
        lambda c: c.deltas_duplicate,
        "updates_dropped",
        "Updates dropped, by reason.",
        {"reason": "duplicate_seq"},
    ),
    (
        lambda c: c.deltas_duplicate_state,
        "updates_dropped",
        "Updates dropped, by reason.",
        {"reason": "duplicate_state"},
    ),
    (
        lambda c: c.deltas_dropped_buffer_full,
        "updates_dropped",
        "Updates dropped, by reason.",
        {"reason": "buffer_full"},
    ),
    (lambda c: c.updates_rejected, "updates_dropped", "Updates dropped, by reason.", {"reason": "rejected"}),
    (
        lambda c: c.updates_dropped_too_large,
        "updates_dropped",
        "Updates dropped, by reason.",
        {"reason": "too_large"},
    ),
    (lambda c: c.deltas_dropped_doc, "updates_dropped", "Updates dropped, by reason.", {"reason": "bad_doc"}),
    (
        lambda c: c.updates_dropped_doc_quarantined,
        "updates_dropped",
        "Updates dropped, by reason.",
        {"reason": "doc_quarantined"},
    ),
    (lambda c: c.frames_dropped_rate, "frames_dropped", _FRAMES_DROPPED_HELP, {"reason": "rate"}),
    (
        lambda c: c.frames_dropped_quarantined,
        "frames_dropped",
        _FRAMES_DROPPED_HELP,
        {"reason": "quarantined"},
    ),
    (lambda c: c.frames_dropped_identity, "frames_dropped", _FRAMES_DROPPED_HELP, {"reason": "identity"}),
    (
        lambda c: c.frames_dropped_store_failing,
        "frames_dropped",
        _FRAMES_DROPPED_HELP,
        {"reason": "store_failing"},
    ),
    (
        lambda c: c.peers_quarantined,
        "peers_quarantined",
        "Senders quarantined (every frame ignored for quarantine_ms) after too many rejected updates.",
        {},
    ),
    (
        lambda c: c.docs_quarantined,
        "docs_quarantined",
        "Docs closed for quarantine_ms to senders with rejected updates, after too many rejected updates.",
        {},
    ),
    (
        lambda c: c.curve_refused,
        "curve_connections_refused",
        "Replication connections refused by the CURVE allowlist (a public key not in peer_keys).",
        {},
    ),
    (
        lambda c: c.bytes_published,
        "bytes_out",
        "Frame bytes sent (lz4-compressed where that paid), by socket.",
        {"socket": "pub"},
    ),
    (
        lambda c: c.bytes_sent,
        "bytes_out",
        "Frame bytes sent (lz4-compressed where that paid), by socket.",
        {"socket": "dealer"},
    ),
    (
        lambda c: c.bytes_published_raw,
        "bytes_out_raw",
        "Frame bytes sent, before compression, by socket.",
        {"socket": "pub"},
    ),
    (
        lambda c: c.bytes_sent_raw,
        "bytes_out_raw",
        "Frame bytes sent, before compression, by socket.",
        {"socket": "dealer"},
    ),
    (
        lambda c: c.bytes_received,
        "bytes_in",
        "Frame bytes received (as sent: compressed where that paid).",
        {},
    ),
    (lambda c: c.bytes_received_raw, "bytes_in_raw", "Frame bytes received, after decompression.", {}),
    (lambda c: c.frames_received, "frames_in", "Frames received.", {}),
    (lambda c: c.batches_published, "batches_published", "DELTAS messages published.", {}),
    (lambda c: c.retransmit_requests, "retransmit_requests", "Retransmissions asked of publishers.", {}),
    (
        lambda c: c.retransmits_served,
        "retransmits_served",
        "Retransmission batches served from the ring.",
        {},
    ),
    (
        lambda c: c.causal_pulls,
        "causal_pulls",
        "Docs pulled because a delta waited too long for its dependencies.",
        {},
    ),
    (lambda c: c.ae_rounds_completed, "anti_entropy_rounds", "Anti-entropy rounds completed.", {}),
    (
        lambda c: c.ae_rounds_in_sync,
        "anti_entropy_rounds_in_sync",
        "Anti-entropy rounds that found no difference.",
        {},
    ),
    (
        lambda c: c.ae_docs_repaired,
        "anti_entropy_docs_repaired",
        "Docs requested or pushed by anti-entropy rounds.",
        {},
    ),
    (lambda c: c.docs_evicted, "docs_evicted", "Docs evicted from memory.", {}),
    (
        lambda c: c.updates_not_held,
        "updates_not_held",
        "Remote updates dropped for docs this node neither holds (placement) nor has.",
        {},
    ),
    (
        lambda c: c.seqs_not_subscribed,
        "seqs_not_subscribed",
        "Publishers' sequence numbers of buckets this node does not subscribe to (placement).",
        {},
    ),
    (lambda c: c.handoff_offers_sent, "handoff_offers", "Handoff offers of docs not held.", {"way": "sent"}),
    (
        lambda c: c.handoff_offers_received,
        "handoff_offers",
        "Handoff offers of docs not held.",
        {"way": "received"},
    ),
    (lambda c: c.handoff_acks_received, "handoff_acks", "Answers to this node's handoff offers.", {}),
    (
        lambda c: c.hellos_refused_placement,
        "hellos_refused_placement",
        "Hellos refused because the peer has another partition count or placement version.",
        {},
    ),
    (
        lambda c: c.hellos_refused_version,
        "hellos_refused_version",
        "Hellos refused because the peer speaks no wire version this node speaks.",
        {},
    ),
    (
        lambda c: c.handoff_docs_dropped,
        "handoff_docs_dropped",
        "Docs handed to a holder (confirmed twice) and dropped here.",
        {},
    ),
    (
        lambda c: c.hints_overdue,
        "hints_overdue",
        "Hints no holder confirmed within hint_window_ms (kept: they may be the only copy).",
        {},
    ),
    (
        lambda c: c.writes_refused_hints_full,
        "writes_refused_hints_full",
        "Writes to docs this node does not hold refused before they were applied: hint_bytes_max reached.",
        {},
    ),
    (
        lambda c: c.follows_started,
        "follower_changes",
        "Docs this node started or stopped following as a read follower.",
        {"change": "added"},
    ),
    (
        lambda c: c.follows_stopped,
        "follower_changes",
        "Docs this node started or stopped following as a read follower.",
        {"change": "dropped"},
    ),
    (
        lambda c: c.weight_changes,
        "weight_changes",
        "Steps of this node's placement weight taken to shed load or take it back.",
        {},
    ),
    (lambda c: c.doc_loads, "doc_loads", "Docs loaded from the store.", {}),
    (lambda c: c.peer_down, "peer_state_changes", "Peer state changes.", {"to": "down"}),
    (lambda c: c.peer_alive, "peer_state_changes", "Peer state changes.", {"to": "alive"}),
    (lambda c: c.ae_rounds_started, "anti_entropy_rounds_started", "Anti-entropy rounds started.", {}),
    (
        lambda c: c.ae_round_timeouts,
        "anti_entropy_round_timeouts",
        "Anti-entropy rounds abandoned after a timeout.",
        {},
    ),
    (
        lambda c: c.transport_send_drops,
        "transport_send_drops",
        "Frames the transport could not queue (repaired later).",
        {},
    ),
    (
        lambda c: c.transport_subscriptions_refused,
        "transport_subscriptions_refused",
        "Publishers not subscribed to because the subscription bound was reached.",
        {},
    ),
    (
        lambda c: c.store_load_errors,
        "store_load_errors",
        "Docs whose stored content failed its checksum at load.",
        {},
    ),
    (lambda c: c.store_commits, "store_commits", "Store group commits.", {}),
    (lambda c: c.store_commit_failures, "store_commit_failures", "Store commits that failed (retried).", {}),
    (
        lambda c: c.member_alive,
        "member_state_changes",
        "Failure detector state changes of members.",
        {"to": "alive"},
    ),
    (
        lambda c: c.member_suspect,
        "member_state_changes",
        "Failure detector state changes of members.",
        {"to": "suspect"},
    ),
    (
        lambda c: c.member_down,
        "member_state_changes",
        "Failure detector state changes of members.",
        {"to": "down"},
    ),
    (
        lambda c: c.members_left,
        "member_state_changes",
        "Failure detector state changes of members.",
        {"to": "left"},
    ),
    (
        lambda c: c.relay_changes,
        "relay_changes",
        "Times this node became or stopped being a relay of its datacenter.",
        {},
    ),
    (
        lambda c: c.deltas_relayed_out,
        "updates_relayed",
        "Updates of other datacenters republished into this one (out: by this relay; in: received "
        "from a relay).",
        {"direction": "out"},
    ),
    (
        lambda c: c.deltas_relayed_in,
        "updates_relayed",
        "Updates of other datacenters republished into this one (out: by this relay; in: received "
        "from a relay).",
        {"direction": "in"},
    ),
    (lambda c: c.ephemeral_published, "ephemeral_messages", _EPHEMERAL_HELP, {"event": "published"}),
    (lambda c: c.ephemeral_relayed, "ephemeral_messages", _EPHEMERAL_HELP, {"event": "relayed"}),
    (lambda c: c.ephemeral_delivered, "ephemeral_messages", _EPHEMERAL_HELP, {"event": "delivered"}),
    (lambda c: c.ephemeral_not_listened, "ephemeral_messages", _EPHEMERAL_HELP, {"event": "not_listened"}),
    (
        lambda c: c.ephemeral_dropped_rate,
        "ephemeral_dropped",
        _EPHEMERAL_DROPPED_HELP,
        {"reason": "rate"},
    ),
    (
        lambda c: c.ephemeral_dropped_too_large,
        "ephemeral_dropped",
        _EPHEMERAL_DROPPED_HELP,
        {"reason": "too_large"},
    ),
    (
        lambda c: c.ephemeral_listen_refused,
        "ephemeral_dropped",
        _EPHEMERAL_DROPPED_HELP,
        {"reason": "listen_refused"},
    ),
    (lambda c: c.gossip_sent, "gossip_sent", "Membership gossip messages sent.", {}),
    (lambda c: c.seq_acks_sent, "seq_acks", _SEQ_ACKS_HELP, {"way": "sent"}),
    (lambda c: c.seq_acks_received, "seq_acks", _SEQ_ACKS_HELP, {"way": "received"}),
    (
        lambda c: c.seq_acks_relayed_sent,
        "seq_acks_relayed_sent",
        "Of the sequence acknowledgements sent, those of deltas received republished by a relay.",
        {},
    ),
    (lambda c: c.seq_acks_stale, "seq_acks_dropped", _SEQ_ACKS_DROPPED_HELP, {"reason": "stale"}),
    (lambda c: c.seq_acks_refused, "seq_acks_dropped", _SEQ_ACKS_DROPPED_HELP, {"reason": "refused"}),
    (lambda c: c.gossip_received, "gossip_received", "Membership gossip messages received.", {}),
)
