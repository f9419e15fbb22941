"""Prometheus metrics, read from the node's status at scrape time (nothing is counted twice)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from crdtsync.node import Node, commit_latency
from crdtsync.store.writer import COMMIT_LATENCY_BUCKETS_MS

PREFIX = "crdtsync"

# counter name in NodeStatus.counters -> (metric, help, labels)
_COUNTERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "deltas_published": ("updates_published", "Local transactions published.", {}),
    "deltas_applied": ("updates_applied", "Remote updates applied, by path.", {"path": "stream"}),
    "sync_updates_applied": ("updates_applied", "Remote updates applied, by path.", {"path": "sync"}),
    "deltas_duplicate": ("updates_dropped", "Updates dropped, by reason.", {"reason": "duplicate_seq"}),
    "deltas_duplicate_state": (
        "updates_dropped",
        "Updates dropped, by reason.",
        {"reason": "duplicate_state"},
    ),
    "deltas_dropped_buffer_full": (
        "updates_dropped",
        "Updates dropped, by reason.",
        {"reason": "buffer_full"},
    ),
    "updates_rejected": ("updates_dropped", "Updates dropped, by reason.", {"reason": "rejected"}),
    "updates_dropped_too_large": ("updates_dropped", "Updates dropped, by reason.", {"reason": "too_large"}),
    "deltas_dropped_doc": ("updates_dropped", "Updates dropped, by reason.", {"reason": "bad_doc"}),
    "bytes_published": (
        "bytes_out",
        "Frame bytes sent (lz4-compressed where that paid), by socket.",
        {"socket": "pub"},
    ),
    "bytes_sent": (
        "bytes_out",
        "Frame bytes sent (lz4-compressed where that paid), by socket.",
        {"socket": "dealer"},
    ),
    "bytes_published_raw": (
        "bytes_out_raw",
        "Frame bytes sent, before compression, by socket.",
        {"socket": "pub"},
    ),
    "bytes_sent_raw": (
        "bytes_out_raw",
        "Frame bytes sent, before compression, by socket.",
        {"socket": "dealer"},
    ),
    "bytes_received": ("bytes_in", "Frame bytes received (as sent: compressed where that paid).", {}),
    "bytes_received_raw": ("bytes_in_raw", "Frame bytes received, after decompression.", {}),
    "frames_received": ("frames_in", "Frames received.", {}),
    "batches_published": ("batches_published", "DELTAS messages published.", {}),
    "retransmit_requests": ("retransmit_requests", "Retransmissions asked of publishers.", {}),
    "retransmits_served": ("retransmits_served", "Retransmission batches served from the ring.", {}),
    "causal_pulls": ("causal_pulls", "Docs pulled because a delta waited too long for its dependencies.", {}),
    "ae_rounds_completed": ("anti_entropy_rounds", "Anti-entropy rounds completed.", {}),
    "ae_rounds_in_sync": ("anti_entropy_rounds_in_sync", "Anti-entropy rounds that found no difference.", {}),
    "ae_docs_repaired": (
        "anti_entropy_docs_repaired",
        "Docs requested or pushed by anti-entropy rounds.",
        {},
    ),
    "docs_evicted": ("docs_evicted", "Docs evicted from memory.", {}),
    "doc_loads": ("doc_loads", "Docs loaded from the store.", {}),
    "peer_down": ("peer_state_changes", "Peer state changes.", {"to": "down"}),
    "peer_up": ("peer_state_changes", "Peer state changes.", {"to": "up"}),
    "ae_rounds_started": ("anti_entropy_rounds_started", "Anti-entropy rounds started.", {}),
    "ae_round_timeouts": (
        "anti_entropy_round_timeouts",
        "Anti-entropy rounds abandoned after a timeout.",
        {},
    ),
    "transport_send_drops": (
        "transport_send_drops",
        "Frames the transport could not queue (repaired later).",
        {},
    ),
    "store_load_errors": ("store_load_errors", "Docs whose stored content failed its checksum at load.", {}),
    "store_commits": ("store_commits", "Store group commits.", {}),
    "store_commit_failures": ("store_commit_failures", "Store commits that failed (retried).", {}),
}


class NodeCollector(Collector):
    def __init__(self, node: Node, started_monotonic: float, dc: str) -> None:
        self.node = node
        self.started = started_monotonic
        self.dc = dc

    def collect(self) -> Iterator[Metric]:
        status = self.node.status()
        counters = status.counters
        families: dict[str, CounterMetricFamily] = {}
        for name, (metric, help_text, labels) in _COUNTERS.items():
            family = families.get(metric)
            if family is None:
                family = families[metric] = CounterMetricFamily(
                    f"{PREFIX}_{metric}", help_text, labels=list(labels)
                )
            family.add_metric(list(labels.values()), counters.get(name, 0))
        wire_errors = CounterMetricFamily(
            f"{PREFIX}_wire_errors", "Malformed frames dropped, by reason.", labels=["reason"]
        )
        for name, value in counters.items():
            if name.startswith("wire_errors_"):
                wire_errors.add_metric([name.removeprefix("wire_errors_")], value)
        yield from families.values()
        yield wire_errors

        info = GaugeMetricFamily(
            f"{PREFIX}_node_info",
            "Constant 1, labelled with the node's identity.",
            labels=["node_id", "dc", "epoch"],
        )
        info.add_metric([status.node_id, self.dc, str(status.epoch)], 1.0)
        yield info

        batches = counters.get("batches_published", 0)
        batch_size = GaugeMetricFamily(
            f"{PREFIX}_batch_size_mean", "Mean deltas per published DELTAS message."
        )
        batch_size.add_metric([], counters.get("deltas_published", 0) / batches if batches else 0.0)
        yield batch_size

        gauges: tuple[tuple[str, str, float], ...] = (
            ("docs", "Docs held (loaded or not).", status.docs),
            ("docs_loaded", "Docs loaded in memory.", counters.get("docs_loaded", 0)),
            ("docs_loaded_bytes", "Estimated bytes of loaded docs.", counters.get("docs_loaded_bytes", 0)),
            (
                "updates_buffered",
                "Remote updates waiting for their causal dependencies.",
                status.pending_updates,
            ),
            ("uptime_seconds", "Seconds since the daemon started.", time.monotonic() - self.started),
        )
        for metric, help_text, amount in gauges:
            gauge = GaugeMetricFamily(f"{PREFIX}_{metric}", help_text)
            gauge.add_metric([], amount)
            yield gauge

        peer_up = GaugeMetricFamily(f"{PREFIX}_peer_up", "1 if the peer is up.", labels=["peer", "address"])
        lag_updates = GaugeMetricFamily(
            f"{PREFIX}_peer_lag_updates",
            "Updates the peer announced that this node has not received.",
            labels=["peer"],
        )
        lag_seconds = GaugeMetricFamily(
            f"{PREFIX}_peer_last_heard_seconds", "Seconds since the peer was last heard.", labels=["peer"]
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
        for peer in status.peers:
            name = peer.node_id or peer.address
            peer_up.add_metric([name, peer.address], 1.0 if peer.state == "up" else 0.0)
            lag_updates.add_metric([name], peer.behind_updates)
            if peer.last_heard_ago_ms is not None:
                lag_seconds.add_metric([name], peer.last_heard_ago_ms / 1000.0)
            ae_bytes.add_metric([name], peer.ae_bytes_repaired)
            if peer.ae_divergence is not None:
                divergence.add_metric([name], peer.ae_divergence)
        yield from (peer_up, lag_updates, lag_seconds, ae_bytes, divergence)

        latency = commit_latency(self.node)
        if latency is not None:
            buckets, total_ms = latency
            cumulative = 0.0
            points: list[tuple[str, float]] = []
            for bound, count in zip(COMMIT_LATENCY_BUCKETS_MS, buckets, strict=False):
                cumulative += count
                points.append((str(bound / 1000.0), cumulative))
            cumulative += buckets[-1]
            points.append(("+Inf", cumulative))
            histogram = HistogramMetricFamily(
                f"{PREFIX}_store_commit_seconds",
                "Store group commit latency.",
                buckets=points,
                sum_value=total_ms / 1000.0,
            )
            yield histogram


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
