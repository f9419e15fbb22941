"""Every counter of a node, as one typed set: the core increments fields, so a misspelt counter is a
type error, and the same names reach `NodeStatus`, the HTTP status and `/metrics`.

The flat form (`as_dict`) is what the HTTP status shows: each field by its name, and the malformed
frames by reason as `wire_errors_<reason>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

WireErrorReason = Literal[
    "truncated",
    "bad_magic",
    "bad_version",
    "bad_header",
    "bad_kind",
    "bad_flags",
    "bad_length",
    "bad_checksum",
    "bad_compression",
    "bad_body",
    "bad_state",
    "too_large",
]
"""Why a frame was dropped as malformed (`bad_state`: a state vector inside it did not decode;
`bad_header`: a version-2 header's sender id or varints are malformed)."""


@dataclass(slots=True)
class Counters:
    # frames and bytes
    frames_received: int = 0
    bytes_received: int = 0
    bytes_received_raw: int = 0
    """What the received frames would have been without compression."""
    frames_published: int = 0
    bytes_published: int = 0
    bytes_published_raw: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    bytes_sent_raw: int = 0
    published_too_large: int = 0
    """Single transactions larger than a frame: they stay local (and in the store) and reach peers by
    anti-entropy's full-doc transfer only if that fits."""
    sent_too_large: int = 0
    own_frames_dropped: int = 0
    unknown_peer: int = 0
    """Frames that could not be sent because the peer's address is not known (yet)."""
    wire_errors: dict[WireErrorReason, int] = field(default_factory=dict)
    # admission
    frames_dropped_rate: int = 0
    frames_dropped_quarantined: int = 0
    frames_dropped_identity: int = 0
    frames_dropped_store_failing: int = 0
    """Frames with doc content received while the store could not commit (`Replica.store_failing`)."""
    peers_quarantined: int = 0
    docs_quarantined: int = 0
    updates_rejected: int = 0
    updates_left_pending: int = 0
    """Remote updates pycrdt applied only in part (dependencies missing): the doc's recorded state
    vector is corrected so that anti-entropy repairs it."""
    updates_dropped_too_large: int = 0
    updates_dropped_doc_quarantined: int = 0
    warnings_suppressed: int = 0
    # the publisher stream
    deltas_published: int = 0
    deltas_merged: int = 0
    """Of `deltas_published`, those that left merged into the delta of the one before them
    (`crdtsync.core.outbound.merge_runs`): the publisher's stream carries the difference."""
    delta_merges_refused: int = 0
    """Runs of a doc's transactions in a batch that pycrdt refused to merge: they left apart, as the
    transactions they were."""
    batches_published: int = 0
    retransmits_served: int = 0
    retransmits_gone: int = 0
    # peers' streams and the causal buffer
    deltas_applied: int = 0
    deltas_duplicate: int = 0
    seqs_not_subscribed: int = 0
    """Sequence numbers a publisher's index named for buckets this node does not subscribe to."""
    deltas_duplicate_state: int = 0
    deltas_stale_epoch: int = 0
    deltas_dropped_doc: int = 0
    deltas_dropped_buffer_full: int = 0
    deltas_relayed_out: int = 0
    deltas_relayed_in: int = 0
    merge_failures: int = 0
    causal_pulls: int = 0
    gap_too_large: int = 0
    retransmit_requests: int = 0
    retransmits_gone_received: int = 0
    # sequence acknowledgements (crdtsync.core.seqacks)
    seq_acks_sent: int = 0
    seq_acks_relayed_sent: int = 0
    """Of `seq_acks_sent`, those of deltas this node received republished by a relay."""
    seq_acks_received: int = 0
    seq_acks_stale: int = 0
    """Acks of an earlier incarnation of this node (dropped)."""
    seq_acks_refused: int = 0
    """Acks naming sequence numbers this node never published (dropped, logged)."""
    # state sync and anti-entropy
    syncs_requested: int = 0
    syncs_served: int = 0
    syncs_rejected: int = 0
    syncs_dropped_doc: int = 0
    sync_pushes: int = 0
    sync_updates_applied: int = 0
    ae_rounds_started: int = 0
    ae_rounds_completed: int = 0
    ae_rounds_in_sync: int = 0
    ae_round_timeouts: int = 0
    ae_answers_stale: int = 0
    ae_docs_repaired: int = 0
    # docs
    doc_loads: int = 0
    docs_evicted: int = 0
    load_waiters_dropped: int = 0
    """Work dropped because too much waited for docs to load (`load_waiters_max`)."""
    # placement: docs this node does not hold
    updates_not_held: int = 0
    """Remote updates (deltas, sync answers, pushes, offers) dropped for docs this node neither holds
    by placement nor has."""
    handoff_offers_sent: int = 0
    handoff_offers_received: int = 0
    handoff_acks_received: int = 0
    hellos_refused_placement: int = 0
    """Hellos from nodes with another partition count or placement version (never linked)."""
    hellos_refused_version: int = 0
    """Hellos from nodes that speak no wire version this node speaks (never linked)."""
    handoff_docs_dropped: int = 0
    """Docs handed to a holder (confirmed twice, `handoff_grace_ms` apart) and dropped here."""
    hints_overdue: int = 0
    """Hints (docs this node took writes for and does not hold) no holder confirmed within
    `hint_window_ms`; they are kept."""
    writes_refused_hints_full: int = 0
    """Writes to docs this node does not hold refused before they were applied: its unconfirmed
    hints reached `hint_bytes_max`."""
    follows_started: int = 0
    follows_stopped: int = 0
    """Docs this node started and stopped following as a read follower (adaptive replication)."""
    weight_changes: int = 0
    """Steps of this node's placement weight taken to shed load or take it back (adaptive replication)."""
    # ephemeral messages (awareness across nodes, never stored)
    ephemeral_published: int = 0
    ephemeral_relayed: int = 0
    ephemeral_delivered: int = 0
    ephemeral_not_listened: int = 0
    """Received for docs nothing on this node listens to (no WebSocket client has them open)."""
    ephemeral_dropped_rate: int = 0
    """Not published or not relayed: over the publish or relay rate (`crdtsync.core.ephemeral`)."""
    ephemeral_dropped_too_large: int = 0
    ephemeral_listen_refused: int = 0
    # peers and membership
    peer_alive: int = 0
    """Links that became alive (first hello, or evidence after suspect or down)."""
    peer_down: int = 0
    peers_max_reached: int = 0
    member_alive: int = 0
    member_suspect: int = 0
    member_down: int = 0
    member_left: int = 0
    members_left: int = 0
    gossip_sent: int = 0
    gossip_received: int = 0
    relay_changes: int = 0
    own_pauses: int = 0
    """Ticks that came later than any timer allows: this node was stopped or stalled."""
    # filled in by the driver (Node.status), never by the core
    transport_send_drops: int = 0
    transport_subscriptions_refused: int = 0
    curve_refused: int = 0
    curve_no_key: int = 0
    docs_loaded: int = 0
    docs_loaded_bytes: int = 0
    store_commits: int = 0
    store_commit_failures: int = 0
    store_load_errors: int = 0

    def wire_error(self, reason: WireErrorReason) -> None:
        self.wire_errors[reason] = self.wire_errors.get(reason, 0) + 1

    def wire_errors_total(self) -> int:
        return sum(self.wire_errors.values())

    def as_dict(self) -> dict[str, int]:
        """Every counter by name, the malformed frames as `wire_errors_<reason>` (those seen only)."""
        out: dict[str, int] = {}
        for item in fields(self):
            if item.name != "wire_errors":
                out[item.name] = getattr(self, item.name)
        for reason, count in self.wire_errors.items():
            out[f"wire_errors_{reason}"] = count
        return out

    def copy(self) -> Counters:
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        values["wire_errors"] = dict(self.wire_errors)
        return Counters(**values)
