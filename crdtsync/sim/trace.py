"""Tracing a simulated cluster: `SimTracer`, the callbacks a `SimCluster` makes while it runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from crdtsync.sim.workload import Write

Step = Literal["receive", "tick"]
"""What a node's replica is doing: taking in one frame, or running its timers."""


class SimTracer:
    """Observe a `SimCluster` (`SimCluster(config, workload, tracer=...)`): subclass and override the
    callbacks you need; each one here does nothing.

    Calls are synchronous and in simulated-time order (read `cluster.now_ms` for the time). A tracer
    may read the cluster (its `nodes`, their replicas and docs) but must not change it, nor draw from
    its random generator: the run must replay the same with and without a tracer. Nodes are given by
    index into `cluster.nodes`.
    """

    def on_frame(self, source: int, target: int, frame: bytes, wan: bool) -> None:
        """A frame (wire bytes) handed to the simulated network from node `source` to node `target`;
        `wan`: between datacenters. Called before partitions, loss, duplication and delay apply:
        those decide whether, how often and when it is delivered."""

    def on_client_op(self, node: int, doc_id: str, op_index: int, writes: Sequence[Write] | None) -> None:
        """Client operation `op_index` was just applied to node `node`'s doc `doc_id` by the workload
        (the node's effects, among them the delta it publishes, are not pumped yet). `writes`: what
        the workload promised; None for an operation scheduled on a node that is down (skipped)."""

    def before_step(self, node: int, step: Step) -> None:
        """Node `node`'s replica is about to receive a frame or run its timers."""

    def after_step(self, node: int, step: Step) -> None:
        """...and is done with it (its effects are not pumped yet)."""
