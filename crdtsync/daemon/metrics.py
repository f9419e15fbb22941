"""Prometheus metrics, read from the node's status at scrape time (nothing is counted twice)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from crdtsync.core.counters import Counters
from crdtsync.daemon.metric_counters import COUNTERS
from crdtsync.node import Node, NodeStatus
from crdtsync.store.writer import COMMIT_LATENCY_BUCKETS_MS, StoreStats

PREFIX = "crdtsync"

MEMBER_STATES = ("alive", "suspect", "down", "left")

# the per-datacenter families, by metric name -> (help, DcStatus field)
_DC_GAUGES: dict[str, tuple[str, str]] = {
    "members": ("Members of the datacenter this node knows of (itself included).", "members"),
    "members_alive": ("Members of the datacenter that are alive or suspect.", "alive"),
    "behind_updates": (
        "Updates announced by the datacenter's publishers that this node has not received (the "
        "publishers it tracks: its own datacenter's, and every one's on a relay).",
        "behind_updates",
    ),
}
_DC_COUNTERS: dict[str, tuple[str, str]] = {
    "frames_received": (
        "Frames received from another datacenter's nodes (WAN traffic; not counted for this "
        "node's own datacenter).",
        "frames_in",
    ),
    "bytes_received": (
        "Frame bytes received from another datacenter's nodes (WAN traffic; not counted for "
        "this node's own datacenter).",
        "bytes_in",
    ),
    "frames_sent": (
        "Frames sent directly to another datacenter's nodes (published frames are counted by "
        "their receivers).",
        "frames_out",
    ),
    "bytes_sent": (
        "Frame bytes sent directly to another datacenter's nodes (published frames are counted "
        "by their receivers).",
        "bytes_out",
    ),
    "failures": (
        "Suspicions, downs and anti-entropy round timeouts of the datacenter's nodes.",
        "failures",
    ),
}


class NodeCollector(Collector):
    def __init__(self, node: Node, started_monotonic: float, dc: str) -> None:
        self.node = node
        self.started = started_monotonic
        self.dc = dc

    def collect(self) -> Iterator[Metric]:
        status = self.node.status()
        yield from _counter_families(status.counters)
        yield _node_info(status, self.dc)
        yield _batch_size(status.counters)
        yield from _gauges(status, self.started)
        yield from _peer_families(status)
        yield from _membership(status)
        histogram = _commit_latency(self.node.store_stats())
        if histogram is not None:
            yield histogram


def _counter_families(counters: Counters) -> Iterator[Metric]:
    """Every counter of `COUNTERS` (those sharing a metric name in one family), then the wire errors."""
    families: dict[str, CounterMetricFamily] = {}
    for read, metric, help_text, labels in COUNTERS:
        family = families.get(metric)
        if family is None:
            family = families[metric] = CounterMetricFamily(
                f"{PREFIX}_{metric}", help_text, labels=list(labels)
            )
        family.add_metric(list(labels.values()), read(counters))
    wire_errors = CounterMetricFamily(
        f"{PREFIX}_wire_errors", "Malformed frames dropped, by reason.", labels=["reason"]
    )
    for reason, value in counters.wire_errors.items():
        wire_errors.add_metric([reason], value)
    yield from families.values()
    yield wire_errors


def _node_info(status: NodeStatus, dc: str) -> Metric:
    info = GaugeMetricFamily(
        f"{PREFIX}_node_info",
        "Constant 1, labelled with the node's identity.",
        labels=["node_id", "dc", "epoch"],
    )
    info.add_metric([status.node_id, dc, str(status.epoch)], 1.0)
    return info


def _batch_size(counters: Counters) -> Metric:
    batches = counters.batches_published
    batch_size = GaugeMetricFamily(f"{PREFIX}_batch_size_mean", "Mean deltas per published DELTAS message.")
    batch_size.add_metric([], counters.deltas_published / batches if batches else 0.0)
    return batch_size


def _gauges(status: NodeStatus, started_monotonic: float) -> Iterator[Metric]:
    """The node-wide gauges without labels: docs, buffered updates, uptime."""
    counters = status.counters
    gauges: tuple[tuple[str, str, float], ...] = (
        ("docs", "Docs held (loaded or not).", status.docs),
        ("docs_loaded", "Docs loaded in memory.", counters.docs_loaded),
        ("docs_loaded_bytes", "Estimated bytes of loaded docs.", counters.docs_loaded_bytes),
        (
            "updates_buffered",
            "Remote updates waiting for their causal dependencies.",
            status.pending_updates,
        ),
        (
            "hinted_docs",
            "Docs this node has but does not hold (placement), waiting to be handed to a holder.",
            status.hinted_docs,
        ),
        (
            "hinted_bytes",
            "Bytes of local writes to hinted docs no holder has confirmed yet (hint_bytes_max).",
            status.hinted_bytes,
        ),
        ("uptime_seconds", "Seconds since the daemon started.", time.monotonic() - started_monotonic),
    )
    for metric, help_text, amount in gauges:
        gauge = GaugeMetricFamily(f"{PREFIX}_{metric}", help_text)
        gauge.add_metric([], amount)
        yield gauge


def _peer_families(status: NodeStatus) -> Iterator[Metric]:
    """Per peer: liveness, lag and anti-entropy."""
    peer_alive = GaugeMetricFamily(
        f"{PREFIX}_peer_alive", "1 if the peer is alive.", labels=["peer", "address"]
    )
    lag_updates = GaugeMetricFamily(
        f"{PREFIX}_peer_lag_updates",
        "Updates the peer announced that this node has not received.",
        labels=["peer"],
    )
    lag_seconds = GaugeMetricFamily(
        f"{PREFIX}_peer_last_heard_seconds", "Seconds since the peer was last heard.", labels=["peer"]
    )
    peer_lag = GaugeMetricFamily(
        f"{PREFIX}_peer_lag_seconds",
        "How long this node has been missing some of the updates the peer announced (0: caught up).",
        labels=["peer"],
    )
    ae_bytes = CounterMetricFamily(
        f"{PREFIX}_anti_entropy_bytes_repaired",
        "Bytes repaired in anti-entropy with the peer.",
        labels=["peer"],
    )
    divergence = GaugeMetricFamily(
        f"{PREFIX}_anti_entropy_divergence_segments",
        "Differing tree segments the last round found.",
        labels=["peer"],
    )
    wire_version = GaugeMetricFamily(
        f"{PREFIX}_peer_wire_version",
        "The wire version of frames to the peer (the highest both speak).",
        labels=["peer"],
    )
    for peer in status.peers:
        name = peer.node_id or peer.address
        peer_alive.add_metric([name, peer.address], 1.0 if peer.state == "alive" else 0.0)
        if peer.wire_version is not None:
            wire_version.add_metric([name], peer.wire_version)
        lag_updates.add_metric([name], peer.behind_updates)
        peer_lag.add_metric([name], peer.lag_ms / 1000.0)
        if peer.last_heard_ago_ms is not None:
            lag_seconds.add_metric([name], peer.last_heard_ago_ms / 1000.0)
        ae_bytes.add_metric([name], peer.ae_bytes_repaired)
        if peer.ae_divergence is not None:
            divergence.add_metric([name], peer.ae_divergence)
    yield from (peer_alive, lag_updates, lag_seconds, peer_lag, ae_bytes, divergence, wire_version)


def _membership(status: NodeStatus) -> Iterator[Metric]:
    """This node's role, the failure detector's view of every member, and each datacenter."""
    relay = GaugeMetricFamily(f"{PREFIX}_relay", "1 if this node is a relay of its datacenter.")
    relay.add_metric([], 1.0 if status.relay else 0.0)
    yield relay
    yield from _member_families(status)
    yield from _dc_families(status)


def _member_families(status: NodeStatus) -> Iterator[Metric]:
    """The failure detector's view of every member, labelled by member and datacenter."""
    labels = ["member", "dc"]
    state = GaugeMetricFamily(
        f"{PREFIX}_member_state",
        "1 for the member's current failure detector state (alive, suspect, down, left), else 0.",
        labels=[*labels, "state"],
    )
    state_seconds = GaugeMetricFamily(
        f"{PREFIX}_member_state_seconds",
        "Seconds the member has been in its current state.",
        labels=labels,
    )
    last_seen = GaugeMetricFamily(
        f"{PREFIX}_member_last_seen_seconds",
        "Seconds since the last evidence that the member lives (a frame from it, or a newer "
        "heartbeat in gossip).",
        labels=labels,
    )
    phi = GaugeMetricFamily(
        f"{PREFIX}_member_phi",
        "The phi-accrual failure detector's suspicion level of the member (suspect at "
        "membership.phi_suspect).",
        labels=labels,
    )
    member_relay = GaugeMetricFamily(
        f"{PREFIX}_member_relay", "1 if the member is a relay of its datacenter.", labels=labels
    )
    suspicions = CounterMetricFamily(
        f"{PREFIX}_member_suspicions", "Times the member went from alive to suspect.", labels=labels
    )
    downs = CounterMetricFamily(
        f"{PREFIX}_member_downs", "Times the member went from suspect to down.", labels=labels
    )
    for member in status.members:
        key = [member.node_id, member.dc]
        for name in MEMBER_STATES:
            state.add_metric([*key, name], 1.0 if member.state == name else 0.0)
        state_seconds.add_metric(key, member.state_for_ms / 1000.0)
        last_seen.add_metric(key, member.last_seen_ago_ms / 1000.0)
        phi.add_metric(key, member.phi)
        member_relay.add_metric(key, 1.0 if member.relay else 0.0)
        suspicions.add_metric(key, member.suspicions)
        downs.add_metric(key, member.downs)
    yield from (state, state_seconds, last_seen, phi, member_relay, suspicions, downs)


def _dc_families(status: NodeStatus) -> Iterator[Metric]:
    """Per datacenter: members, lag and WAN traffic (`_DC_GAUGES`, the lag, then `_DC_COUNTERS`)."""
    dc_gauges = {
        name: GaugeMetricFamily(f"{PREFIX}_dc_{name}", help_text, labels=["dc"])
        for name, (help_text, _field) in _DC_GAUGES.items()
    }
    dc_lag = GaugeMetricFamily(
        f"{PREFIX}_dc_lag_seconds",
        "The longest time this node has been missing updates of one of the datacenter's publishers.",
        labels=["dc"],
    )
    dc_counters = {
        name: CounterMetricFamily(f"{PREFIX}_dc_{name}", help_text, labels=["dc"])
        for name, (help_text, _field) in _DC_COUNTERS.items()
    }
    for dc in status.datacenters:
        for name, (_help, field_name) in _DC_GAUGES.items():
            dc_gauges[name].add_metric([dc.dc], getattr(dc, field_name))
        dc_lag.add_metric([dc.dc], dc.lag_ms / 1000.0)
        for name, (_help, field_name) in _DC_COUNTERS.items():
            dc_counters[name].add_metric([dc.dc], getattr(dc, field_name))
    yield from dc_gauges.values()
    yield dc_lag
    yield from dc_counters.values()


def _commit_latency(stats: StoreStats) -> Metric | None:
    """The store's group commit latency histogram (None for a store appended to inline: nothing is timed)."""
    buckets = stats.commit_latency_counts
    if buckets is None:
        return None
    cumulative = 0.0
    points: list[tuple[str, float]] = []
    for bound, count in zip(COMMIT_LATENCY_BUCKETS_MS, buckets, strict=False):
        cumulative += count
        points.append((str(bound / 1000.0), cumulative))
    cumulative += buckets[-1]
    points.append(("+Inf", cumulative))
    return HistogramMetricFamily(
        f"{PREFIX}_store_commit_seconds",
        "Store group commit latency.",
        buckets=points,
        sum_value=stats.commit_latency_sum_ms / 1000.0,
    )


class RefusalCollector(Collector):
    """HTTP requests refused by the token check, by reason (counted by the HTTP API, not the node)."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            f"{PREFIX}_http_requests_refused",
            "HTTP requests refused by the bearer token check, by reason (unauthorized: no or unknown "
            "token; forbidden: a read token on a write).",
            labels=["reason"],
        )
        for reason, count in self.counts().items():
            refused.add_metric([reason], count)
        yield refused
