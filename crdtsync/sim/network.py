"""The simulated network between the nodes of a `SimCluster`: each frame is delivered after a drawn
latency (plus a WAN latency between datacenters, drawn once per pair), and, while faults are on, may
be lost, duplicated, reordered, delayed, or held back by a partition. It counts what it carried."""

from __future__ import annotations

import random
from collections.abc import Callable

from crdtsync.sim.config import SimConfig
from crdtsync.sim.node import SimNode
from crdtsync.sim.trace import SimTracer


class SimNetwork:
    def __init__(
        self,
        config: SimConfig,
        rng: random.Random,
        dcs: list[str],
        deliver: Callable[[float, SimNode, bytes], None],
        tracer: SimTracer | None,
    ) -> None:
        """`deliver(at_ms, target, frame)` schedules a frame's arrival; `rng` is the run's."""
        self._config = config
        self._rng = rng
        self._deliver = deliver
        self._tracer = tracer
        self.wan_latency_ms = {(a, b): rng.uniform(*config.wan_latency_ms) for a in dcs for b in dcs if a < b}
        self.groups: dict[int, int] | None = None
        """Node index -> partition group while partitioned: frames between groups are lost."""
        self.faults_on = True
        """Until healing: the configured faults apply."""
        self.messages_sent = 0
        self.messages_dropped = 0
        self.messages_duplicated = 0
        self.wan_messages = 0
        self.wan_bytes = 0
        self.partitions = 0

    def partition(self, groups: dict[int, int] | None) -> None:
        """Split the nodes into the given groups (None: 2 or 3 random ones), unless already split."""
        if self.groups is not None:
            return
        config = self._config
        self.partitions += 1
        if groups is not None:
            self.groups = {index: groups.get(index, -1) for index in range(config.nodes)}
            return
        group_count = config.partition_groups or self._rng.randint(2, min(3, config.nodes))
        order = list(range(config.nodes))
        self._rng.shuffle(order)
        self.groups = {index: position % group_count for position, index in enumerate(order)}

    def heal(self) -> None:
        self.groups = None

    def transmit(self, source: SimNode, target: SimNode, frame: bytes, now_ms: float) -> None:
        config, rng = self._config, self._rng
        if self._tracer is not None:
            self._tracer.on_frame(source.index, target.index, frame, source.dc != target.dc)
        self.messages_sent += 1
        faults = config.faults if self.faults_on else frozenset()
        if self.groups is not None and self.groups[source.index] != self.groups[target.index]:
            self.messages_dropped += 1
            return
        wan = source.dc != target.dc
        if wan:
            self.wan_messages += 1
            self.wan_bytes += len(frame)
        if "loss" in faults and rng.random() < config.loss_rate:
            self.messages_dropped += 1
            return
        if wan and self.faults_on and rng.random() < config.wan_loss_rate:
            self.messages_dropped += 1
            return
        copies = 2 if "dup" in faults and rng.random() < config.dup_rate else 1
        self.messages_duplicated += copies - 1
        for _ in range(copies):
            delay = rng.uniform(*config.latency_ms)
            if wan:
                delay += self.wan_latency_ms[min(source.dc, target.dc), max(source.dc, target.dc)]
            if "reorder" in faults:
                delay += rng.uniform(0.0, config.reorder_jitter_ms)
            if "delay" in faults and rng.random() < config.delay_rate:
                delay += rng.uniform(*config.delay_ms)
            at = now_ms + delay
            if "reorder" not in faults and "delay" not in faults:
                # Without reordering faults a link is FIFO, like a TCP connection.
                at = max(at, source.link_free_ms.get(target.index, 0.0))
                source.link_free_ms[target.index] = at
            self._deliver(at, target, frame)
