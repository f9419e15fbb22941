"""What every part of the replica shares: who this node is, its limits, the time of the current input,
the effects produced so far, its counters and a rate-limited log.

The parts of the core (`docs`, `guard`, `links`, `outbound`, `causal`, `inbound`, `sync`,
`antientropy`, `gossip`) each own their state and write their effects here; the `Replica` facade
sets `now_ms` from every input before any part runs, and hands the effects to the driver.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crdtsync.core import wire
from crdtsync.core.config import ReplicaConfig
from crdtsync.core.counters import Counters
from crdtsync.core.effects import Effect

if TYPE_CHECKING:
    from crdtsync.core.load_board import LoadBoard

log = logging.getLogger("crdtsync.replica")

WARN_INTERVAL_MS = 1000.0
"""At most one warning per reason in this time: hostile input must not flood the log."""


@dataclass(slots=True)
class DcTraffic:
    """Frames and failures exchanged with the nodes of one other datacenter."""

    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    failures: int = 0


def check_identity(node_id: str, client_id: int, dc: str, zone: str, weight: float) -> None:
    """Refuse an identity that the wire could not carry (or Yjs could not use)."""
    if not node_id or len(node_id.encode()) > wire.NODE_ID_BYTES_MAX:
        raise ValueError(f"node_id must be 1..{wire.NODE_ID_BYTES_MAX} bytes, got {node_id!r}")
    if not 0 < client_id < 1 << 53:
        raise ValueError("client_id must be in 1..2**53-1 (a Yjs client id)")
    if not dc or len(dc.encode()) > wire.DC_BYTES_MAX:
        raise ValueError(f"dc must be 1..{wire.DC_BYTES_MAX} bytes, got {dc!r}")
    if len(zone.encode()) > wire.ZONE_BYTES_MAX:
        raise ValueError(f"zone must be at most {wire.ZONE_BYTES_MAX} bytes, got {zone!r}")
    if not 0.001 <= weight <= 1000.0:
        raise ValueError(f"weight must be in 0.001..1000, got {weight!r}")


class Context:
    """The identity, configuration, clock reading and output buffer shared by the replica's parts."""

    load: LoadBoard
    """Rates of reads and writes and the members' load summaries (set by the replica once its member
    table exists; see `crdtsync.core.load_board`)."""

    def __init__(
        self,
        *,
        node_id: str,
        epoch: int,
        client_id: int,
        address: str,
        publish_endpoint: str,
        dc: str,
        config: ReplicaConfig,
        datacenters_max: int,
        zone: str = "",
        weight: float = 1.0,
        partitions: int = 4096,
    ) -> None:
        self.node_id = node_id
        self.epoch = epoch
        self.client_id = client_id
        self.address = address
        self.publish_endpoint = publish_endpoint
        self.dc = dc
        self.zone = zone
        self.weight = weight
        self.partitions = partitions
        """The placement partition count: a hello with another is refused (see `gossip`)."""
        self.config = config
        self.now_ms = 0.0
        """The time the current input carried; set by the facade before any part runs."""
        self.effects: list[Effect] = []
        self.counters = Counters()
        self.dc_traffic: dict[str, DcTraffic] = {}
        self._datacenters_max = datacenters_max
        self._warned_ms: dict[str, float] = {}
        self._jitter_state = client_id

    def warn(self, reason: str, message: str, *args: object) -> None:
        """Log at most one warning per reason per `WARN_INTERVAL_MS`."""
        last = self._warned_ms.get(reason)
        if last is not None and self.now_ms - last < WARN_INTERVAL_MS:
            self.counters.warnings_suppressed += 1
            return
        self._warned_ms[reason] = self.now_ms
        log.warning(message, *args)

    def traffic_with(self, dc: str) -> DcTraffic:
        traffic = self.dc_traffic.get(dc)
        if traffic is None:
            if len(self.dc_traffic) >= self._datacenters_max:
                return DcTraffic()  # not kept: a bounded table even under forged datacenter names
            traffic = self.dc_traffic[dc] = DcTraffic()
        return traffic

    def jitter(self) -> float:
        """A deterministic value in [0, 1) (splitmix64 seeded by the client id): no global randomness."""
        mask = (1 << 64) - 1
        self._jitter_state = (self._jitter_state + 0x9E3779B97F4A7C15) & mask
        z = self._jitter_state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return (z ^ (z >> 31)) / float(1 << 64)

    def fresh_client_id(self) -> int:
        """A new random Yjs client id (53 bits, not 0), from the same deterministic stream."""
        return int(self.jitter() * float(1 << 53)) or 1

    def jittered(self, interval_ms: float) -> float:
        """`interval_ms` spread by +-25%."""
        return interval_ms * (0.75 + 0.5 * self.jitter())
