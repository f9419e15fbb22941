"""Loaded nodes shed partitions (adaptive replication, docs/placement.md#shedding-load).

A node whose load (CPU, from the gossiped summaries) stays more than `shed_load_over_mean` above the
mean of its datacenter's members lowers its own placement weight by one step (times `shed_step`,
0.9 by default); placement then gives it fewer partitions, and the partitions it no longer holds
leave through the handoff, with its throttle, exactly as when a member joins. A node that has shed
and is now more than the same margin below the mean takes a step back. Weights move in steps, so
the corrected weights of placement see few distinct values (their cost grows with that number).

Guards, each from the issue's anchors (Ceph, CockroachDB, ScyllaDB):
- one step at a time: a step moves about a tenth of the node's partitions (bounded data in motion);
- no balancing while degraded: a member of this datacenter not alive, or more docs waiting to be
  handed off here than one handoff pass takes (the last step's moves are not done, or handoffs
  fail; a few hinted docs are the normal state of a node that takes writes for docs it does not
  hold);
- no oscillation: after a weight change in the datacenter (this node's, or one it saw in another
  member's record) nobody of the datacenter changes again for `shed_cool_down_ms`, spread by
  +-25% of jitter per node, so a partition moves at most once per cool-down;
- no balancing of an idle datacenter: below `shed_load_min_cores` of mean load, noise dominates;
- relays (in a cluster that spans datacenters) neither shed nor count in the mean: besides their
  share they carry the WAN (every remote delta, forwarded into the datacenter), so their load says
  little of their partitions' (they could shed by a weight that discounts the forwarding: not yet).

`decide_step` is the pure decision; `Balancer` feeds it and changes the node's weight.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from crdtsync.core.context import Context
from crdtsync.core.load_board import FORWARD_AGE_MS, LoadBoard
from crdtsync.core.membership import Membership

log = logging.getLogger("crdtsync.adaptive")

DECIDE_INTERVAL_MS = 5_000.0
"""How often a node looks at the loads of its datacenter."""


@dataclass(frozen=True, slots=True)
class Loads:
    """What one decision sees: this node's load, its datacenter's mean (every alive member's,
    this node's included), and whether the datacenter is degraded."""

    own_cores: float
    mean_cores: float
    degraded: bool


def decide_step(
    step: int,
    loads: Loads,
    quiet_for_ms: float,
    cool_down_ms: float,
    over_mean: float,
    steps_max: int,
    min_cores: float,
) -> int:
    """The node's next weight step (0: its configured weight; each step multiplies it by `shed_step`).
    `quiet_for_ms`: time since the last weight change in the datacenter (already jittered)."""
    if loads.degraded or quiet_for_ms < cool_down_ms or loads.mean_cores < min_cores:
        return step
    if loads.own_cores > loads.mean_cores * (1 + over_mean) and step < steps_max:
        return step + 1
    if loads.own_cores < loads.mean_cores * (1 - over_mean) and step > 0:
        return step - 1
    return step


class Balancer:
    """This node's weight step, changed by `decide_step` with what the board and the member table say."""

    def __init__(self, ctx: Context, membership: Membership, board: LoadBoard) -> None:
        self._ctx = ctx
        self._membership = membership
        self._board = board
        self.base_weight = ctx.weight
        self.step = 0
        self._next_ms = 0.0
        self._changed_ms: float | None = None
        """The last weight change seen in this datacenter (None: none since this node started)."""
        self._started_ms: float | None = None
        self._weights: dict[str, float] = {}
        """The weights last seen in this datacenter's member records (a change there restarts the
        cool-down)."""
        self._jitter = 0.75 + 0.5 * ctx.jitter()

    def _loads(self, now_ms: float, handing_off: int) -> Loads | None:
        """This datacenter's loads, relays left out; None while some alive member's summary is
        missing, or older than a half-life (or `FORWARD_AGE_MS`), and for a relay itself."""
        membership, dc = self._membership, self._ctx.dc
        # Relays carry the WAN (every delta across it, forwarded into this datacenter) besides their
        # share: their load says little of their partitions', and would weigh on the mean.
        relays = set(membership.relays(dc)) if membership.spans_datacenters() else set()
        if self._ctx.node_id in relays:
            return None
        members = [m for m in membership.members.values() if m.record.dc == dc and m.liveness != "left"]
        own = self._board.cpu.per_second(now_ms)
        backlog = handing_off > self._ctx.config.handoff_docs_per_pass_max
        if backlog or any(member.liveness != "alive" for member in members):
            return Loads(own, own, degraded=True)
        loads = [own]
        for member in members:
            if member.record.node_id in relays:
                continue
            known = self._board.received.get(member.record.node_id)
            if known is None or now_ms - known[1] >= min(FORWARD_AGE_MS, self._ctx.config.load_half_life_ms):
                return None  # unknown, or too old to compare with this node's load now
            loads.append(known[0].load_cores)
        return Loads(own, sum(loads) / len(loads), degraded=False)

    def _saw_changes(self, now_ms: float) -> None:
        for node_id, member in self._membership.members.items():
            if member.record.dc != self._ctx.dc:
                continue
            if self._weights.get(node_id, member.record.weight) != member.record.weight:
                self._changed_ms = now_ms
            self._weights[node_id] = member.record.weight

    def tick(self, now_ms: float, handing_off: int) -> bool:
        """Timer duty, every `DECIDE_INTERVAL_MS` (`handing_off`: docs this node has but does not
        hold, waiting to be handed off): True when this node changed its weight (the caller
        announces its record)."""
        if now_ms < self._next_ms:
            return False
        self._next_ms = now_ms + DECIDE_INTERVAL_MS
        if self._started_ms is None:
            self._started_ms = now_ms
        self._saw_changes(now_ms)
        config = self._ctx.config
        loads = self._loads(now_ms, handing_off)
        if not config.shed_partitions or loads is None:
            return False
        since = self._changed_ms if self._changed_ms is not None else self._started_ms
        quiet_for_ms = (now_ms - since) / self._jitter
        step = decide_step(
            self.step, loads, quiet_for_ms, config.shed_cool_down_ms, config.shed_load_over_mean,
            config.shed_steps_max, config.shed_load_min_cores,
        )  # fmt: skip
        if step == self.step:
            return False
        weight = round(self.base_weight * config.shed_step**step, 3)
        log.info(
            "placement weight %g -> %g: load %.2f cores, datacenter mean %.2f (%s partitions)",
            self._ctx.weight, weight, loads.own_cores, loads.mean_cores, "shedding" if step > self.step else "taking back",
        )  # fmt: skip
        self.step = step
        self._changed_ms = now_ms
        self._jitter = 0.75 + 0.5 * self._ctx.jitter()
        self._ctx.weight = weight
        membership = self._membership
        own = membership.own
        membership.own = dataclasses.replace(own, weight=weight, heartbeat=own.heartbeat + 1)
        membership.revision += 1
        self._ctx.counters.weight_changes += 1
        return True
