"""What a `Node` is given (`NodeConfig`, checked when made) and what it reports (`NodeStatus`);
re-exported by `crdtsync.node` and `crdtsync`."""

from __future__ import annotations

from dataclasses import dataclass, field

from crdtsync.core.counters import Counters
from crdtsync.core.membership import MembershipConfig
from crdtsync.core.placement import PlacementPolicy
from crdtsync.core.replica import ReplicaConfig
from crdtsync.core.status import DcStatus, MemberStatus, PeerStatus
from crdtsync.core.wire import DC_BYTES_MAX, NODE_ID_BYTES_MAX, ZONE_BYTES_MAX
from crdtsync.store.base import Durability, check_durability
from crdtsync.transport.curve import CurveConfig
from crdtsync.transport.endpoint import check_source_host, is_wildcard, parse_endpoint


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """How one node runs.

    `listen` is where the node's request socket binds (`tcp://HOST:PORT`) and `advertise` the
    address peers reach it at (by default `listen`, which then must not be a wildcard such as
    `0.0.0.0`); `peers` are the advertised addresses of other nodes. Each node also binds a PUB
    socket, at `publish` or, by default, an ephemeral port on the listen host, and tells peers in the
    hello exchange where to subscribe: `publish_advertise`, or by default the bound PUB endpoint with
    the advertised host. So only the advertised address needs to be known in advance.
    """

    node_id: str
    listen: str
    peers: list[str] = field(default_factory=list)
    publish: str | None = None
    data_dir: str | None = None
    """Where the node keeps its SQLite store; None keeps everything in memory (lost at exit)."""
    durability: Durability = "fsync"
    """What `flush()` waits for with a data_dir: see `crdtsync.store.base.Durability`."""
    replication: ReplicaConfig = field(default_factory=ReplicaConfig)
    curve: CurveConfig | None = None
    """Encrypt and authenticate replication links with CurveZMQ; None sends them in plaintext."""
    dc: str = "default"
    """The node's datacenter: a full mesh inside it, relays between datacenters."""
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    placement: PlacementPolicy = field(default_factory=PlacementPolicy)
    """The cluster's partitions and placement rules: the same on every node. A node keeps only the
    docs it holds; others it opens follow a holder (see docs/placement.md)."""
    advertise: str | None = None
    """The address peers reach the request socket at (containers, NAT, a `0.0.0.0` listen); None:
    `listen` itself."""
    publish_advertise: str | None = None
    """The PUB endpoint peers subscribe to; None: the bound PUB endpoint with the advertised host."""
    source_host: str | None = None
    """The local IP address outgoing replication connections bind (a multi-homed host's interface;
    a fault proxy telling nodes apart on one host); None: the kernel chooses."""
    zone: str = ""
    """The node's zone inside its datacenter (a rack, an availability zone): placement puts a doc's
    replicas in different zones first. Gossiped with its member record."""
    weight: float = 1.0
    """The node's capacity relative to the others of its datacenter (0.001..1000): its expected
    share of partitions scales with it."""
    leave_on_close: bool = True
    """`close()` is a graceful leave (drained first under placement): the others count the node
    out at once. False: it stops as if it failed; the others keep its partitions for it (a restart,
    a rolling upgrade) and see it down after the failure detector's delay."""

    @property
    def advertised(self) -> str:
        """The address this node is known by: `advertise`, else `listen`."""
        return self.advertise or self.listen

    def __post_init__(self) -> None:
        if not self.node_id or len(self.node_id.encode()) > NODE_ID_BYTES_MAX:
            raise ValueError(f"node_id must be 1..{NODE_ID_BYTES_MAX} bytes of UTF-8, got {self.node_id!r}")
        parse_endpoint(self.listen, "listen")
        for index, peer in enumerate(self.peers):
            parse_endpoint(peer, f"peers[{index}]")
        if self.publish is not None:
            parse_endpoint(self.publish, "publish")
        self._check_advertised()
        if self.source_host is not None:
            check_source_host(self.source_host)
        if not self.dc or len(self.dc.encode()) > DC_BYTES_MAX:
            raise ValueError(f"dc must be 1..{DC_BYTES_MAX} bytes of UTF-8, got {self.dc!r}")
        check_durability(self.durability)
        if len(self.zone.encode()) > ZONE_BYTES_MAX:
            raise ValueError(f"zone must be at most {ZONE_BYTES_MAX} bytes of UTF-8, got {self.zone!r}")
        if not 0.001 <= self.weight <= 1000.0:
            raise ValueError(f"weight must be in 0.001..1000, got {self.weight!r}")

    def _check_advertised(self) -> None:
        for key, value in (("advertise", self.advertise), ("publish_advertise", self.publish_advertise)):
            if value is not None:
                parse_endpoint(value, key)
                if is_wildcard(value):
                    raise ValueError(
                        f"{key}: {value!r} binds every interface; advertise an address peers can reach"
                    )
        if self.advertise is None and is_wildcard(self.listen):
            raise ValueError(
                f"listen: {self.listen!r} binds every interface, so peers cannot use it: set advertise to "
                "the address they reach this node at (e.g. tcp://10.0.0.5:7400)"
            )


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A point-in-time view of a node, cheap to take."""

    node_id: str
    epoch: int
    listen: str
    publish_endpoint: str
    docs: int
    published_updates: int
    """Local transactions this node has published in this epoch."""
    pending_updates: int
    """Remote updates received but waiting for their causal dependencies."""
    peers: tuple[PeerStatus, ...]
    counters: Counters
    """Every counter of the node: the core's and the driver's (transport, store) in one typed set."""
    dc: str
    relay: bool
    """Whether this node relays between its datacenter and the others."""
    members: tuple[MemberStatus, ...]
    """Every other member this node knows of, with the failure detector's view of it."""
    datacenters: tuple[DcStatus, ...]
    store: str
    """`memory`, or `sqlite:` and the database path."""
    durability: str
    hinted_docs: int = 0
    """Docs this node has but does not hold (placement), waiting to be handed to a holder (writes
    made here, partitions that moved away): 0 once handoffs have settled."""
    hinted_bytes: int = 0
    """Bytes of local writes to hinted docs no holder has confirmed yet (bounded by `hint_bytes_max`)."""
    hints_overdue: int = 0
    """Hinted docs no holder confirmed within `hint_window_ms` (kept: they may be the only copy)."""
    weight: float = 1.0
    """This node's placement weight now: `weight_configured`, lowered by shedding (docs/placement.md)."""
    weight_configured: float = 1.0
