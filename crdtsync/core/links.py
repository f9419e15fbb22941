"""Peer links: one per peer address, with what the hello exchange told of the node behind it, and the
way out of the core for every frame (`publish` to subscribers, `send` to one peer's request socket).

A link is wanted (hellos keep going to it) for configured seeds, peers not identified yet, this
node's datacenter and, on a relay or under placement that not every node holds everything (every
node then compares what it holds with its holders in other datacenters: `antientropy`), every other
datacenter's nodes. Subscriptions follow the topology: every node of this datacenter; across
datacenters only a relay, and only to the publishers' own streams (ZeroMQ filters at the
publisher, so relayed frames never cross the WAN twice). Links to other datacenters carry requests
only (rounds, pulls, handoffs) unless this node is a relay.

With placement that not every node holds everything (`Holding.partitioned`), a node subscribes in
its datacenter to the frames for every subscriber (heartbeats), the sequence indexes and the buckets
it holds or follows (docs an application holds open), and no others; a relay takes whole batches
across the WAN (see `outbound`), since it forwards every delta into its datacenter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crdtsync.core import wire
from crdtsync.core.context import Context
from crdtsync.core.effects import Audience, Publish, Send, Subscribe, Unsubscribe
from crdtsync.core.holding import BucketKey, Holding
from crdtsync.core.membership import Membership
from crdtsync.core.placement import PLACEMENT_VERSION

PeerState = Literal["connecting", "alive", "suspect", "down"]
"""The same words as a member's liveness (`membership.Liveness`): a link is `connecting` until the
hello exchange names the node behind it, then follows that member's liveness."""


@dataclass(slots=True)
class PeerLink:
    address: str
    configured: bool
    node_id: str | None = None
    epoch: int | None = None
    publish_endpoint: str | None = None
    state: PeerState = "connecting"
    last_heard_ms: float | None = None
    next_hello_ms: float = 0.0
    hello_backoff_ms: float = 0.0
    ae_rounds: int = 0
    ae_last_round_ms: float | None = None
    ae_docs_repaired: int = 0
    ae_bytes_repaired: int = 0
    ae_divergence: int | None = None
    subscribed: Literal["dc", "wan"] | None = None
    subscribed_endpoint: str | None = None
    subscribed_buckets: frozenset[BucketKey] | None = None
    """The buckets subscribed to (with the frames published without one); None: every frame."""
    subscribed_topic_keys: frozenset[int] | None = None
    """The topic keys that bring those buckets (`Links._buckets_wanted`)."""
    wire_version: int | None = None
    """The highest wire version both ends speak, from the peer's hello (`Links.set_wire_version`)."""

    @property
    def reachable(self) -> bool:
        return self.state in ("alive", "suspect")


class Links:
    def __init__(self, ctx: Context, membership: Membership, holding: Holding) -> None:
        self._ctx = ctx
        self._membership = membership
        self._holding = holding
        self._followed: dict[BucketKey, tuple[dict[str, None], float]] = {}
        """Bucket -> (its pinned docs, in order, since when it has some): an application holds
        them open. A bucket pinned for `follow_subscribe_after_ms` is subscribed to as if held."""
        self._subscribed_view = -1
        self._followed_extra: frozenset[BucketKey] = frozenset()
        """The followed buckets not held, as last subscribed to (replaced only when it changes)."""
        self._wanted: tuple[int, frozenset[BucketKey], frozenset[BucketKey] | None, frozenset[int] | None]
        self._wanted = (-1, self._followed_extra, None, None)
        """(holding version, followed buckets, the buckets wanted, their topic keys), reused while
        the holding version and the followed buckets are the same."""
        self.by_address: dict[str, PeerLink] = {}
        self.address_of: dict[str, str] = {}
        """Node id -> the address of its link."""
        self.is_relay = True
        self._publish_version: int | None = None
        """The lowest version of the links (see `publish_version`); None: to be found again."""
        self._greeting: dict[str, None] = {}
        """Addresses of the links that are neither alive nor suspect: the only ones hellos go to, so
        the next hello's deadline is found without a scan of every link."""

    def link_for(self, address: str, *, configured: bool) -> PeerLink | None:
        link = self.by_address.get(address)
        if link is None:
            if len(self.by_address) >= self._ctx.config.peers_max:
                self._ctx.counters.peers_max_reached += 1
                return None
            link = PeerLink(address, configured, next_hello_ms=self._ctx.now_ms)
            self.by_address[address] = link
            self._greeting[address] = None
        link.configured = link.configured or configured
        return link

    def of_node(self, node_id: str) -> PeerLink | None:
        address = self.address_of.get(node_id)
        return None if address is None else self.by_address[address]

    def drop(self, link: PeerLink) -> None:
        if link.subscribed_endpoint is not None:
            self._ctx.effects.append(Unsubscribe(link.subscribed_endpoint))
        if link.node_id is not None and self.address_of.get(link.node_id) == link.address:
            del self.address_of[link.node_id]
        del self.by_address[link.address]
        self._greeting.pop(link.address, None)
        self._publish_version = None

    def set_state(self, link: PeerLink, state: PeerState) -> None:
        link.state = state
        if link.reachable:
            self._greeting.pop(link.address, None)
        else:
            self._greeting[link.address] = None

    def dc(self, link: PeerLink) -> str | None:
        return None if link.node_id is None else self._membership.dc_of(link.node_id)

    def wanted(self, link: PeerLink) -> bool:
        """Whether this node keeps saying hello to the peer."""
        dc = self.dc(link)
        return link.configured or dc is None or dc == self._ctx.dc or self.reaches_other_dcs

    @property
    def reaches_other_dcs(self) -> bool:
        """Whether this node links to every node of the other datacenters: a relay (it subscribes to
        them), and every node when not every node holds everything (it runs anti-entropy rounds with
        the holders of its docs there)."""
        return self.is_relay or self.every_node_reaches

    @property
    def every_node_reaches(self) -> bool:
        """Whether every node links to the other datacenters' nodes, relay or not."""
        return self._holding.partitioned

    def heard(self, node_id: str) -> None:
        link = self.of_node(node_id)
        if link is not None:
            link.last_heard_ms = self._ctx.now_ms

    def follow(self, doc_id: str, pinned: bool) -> None:
        """An open doc was pinned (or its last pin came off), under placement. Its bucket is
        subscribed to once pinned for `follow_subscribe_after_ms` (`sync_subscriptions_if_changed`):
        that brings every delta of the bucket's holder set, so a doc open only for a write or a read
        (an HTTP request, a write through a non-holder) costs none; its fetch and the handoff serve it."""
        if not self._holding.enforced:
            return
        bucket = self._holding.bucket_of(doc_id)
        if pinned:
            self._followed.setdefault(bucket, ({}, self._ctx.now_ms))[0][doc_id] = None
            return
        followed = self._followed.get(bucket)
        if followed is not None:
            followed[0].pop(doc_id, None)
            if not followed[0]:
                del self._followed[bucket]

    def sync_subscriptions_if_changed(self) -> list[str]:
        """Timer duty: resubscribe when the member view that decides holding changed, or the
        followed buckets that are not held did. The open docs of buckets newly followed: they
        missed the deltas before (the caller fetches them again)."""
        holding = self._holding
        holding.refresh()
        held = holding.buckets_held()
        followed: frozenset[BucketKey] = frozenset()
        if held is not None:
            old_enough_ms = self._ctx.now_ms - self._ctx.config.follow_subscribe_after_ms
            followed = frozenset(
                bucket
                for bucket, (_docs, since_ms) in self._followed.items()
                if since_ms <= old_enough_ms and bucket not in held
            )
        newly = followed - self._followed_extra
        if holding.version != self._subscribed_view or followed != self._followed_extra:
            self._subscribed_view = holding.version
            self._followed_extra = followed
            self.sync_subscriptions()
        return [doc_id for bucket in newly for doc_id in self._followed[bucket][0]]

    def sync_subscriptions(self) -> None:
        for link in self.by_address.values():
            self.sync_subscription(link)

    def _buckets_wanted(self) -> tuple[frozenset[BucketKey] | None, frozenset[int] | None]:
        """The buckets this node takes (None: every one) and the topic keys that bring them: their
        holder sets, and the buckets themselves for publishers still on wire version 1 (`outbound`)."""
        holding = self._holding
        held = holding.buckets_held()
        version, followed, wanted, keys = self._wanted
        if version != holding.version or followed is not self._followed_extra:
            wanted = keys = None
            if held is not None:
                wanted = held | self._followed_extra
                keys = wanted | {holding.holder_set_key(bucket) for bucket in wanted}
            self._wanted = (holding.version, self._followed_extra, wanted, keys)
        return wanted, keys

    def sync_subscription(self, link: PeerLink) -> None:
        """Subscribe to the peer's stream as the topology says (see the module doc)."""
        dc = self.dc(link)
        wanted: Literal["dc", "wan"] | None = None
        # Kept while the peer is down: ZeroMQ reconnects by itself, and its first frames are the evidence.
        if link.publish_endpoint is not None and dc is not None and link.epoch is not None:
            if dc == self._ctx.dc:
                wanted = "dc"
            elif self.is_relay:
                wanted = "wan"
        # A relay takes every delta across the WAN: it forwards the docs it does not hold too.
        buckets, keys = self._buckets_wanted() if wanted == "dc" else (None, None)
        endpoint = link.publish_endpoint
        if link.subscribed == wanted and link.subscribed_endpoint == endpoint:
            if wanted is not None and endpoint is not None and link.subscribed_topic_keys != keys:
                self._ctx.effects.append(Subscribe(endpoint, link.address, wanted == "wan", keys))
                link.subscribed_buckets, link.subscribed_topic_keys = buckets, keys
            return
        if link.subscribed_endpoint is not None:
            self._ctx.effects.append(Unsubscribe(link.subscribed_endpoint))
        link.subscribed, link.subscribed_endpoint = None, None
        link.subscribed_buckets, link.subscribed_topic_keys = None, None
        if wanted is not None and link.publish_endpoint is not None:
            self._ctx.effects.append(Subscribe(link.publish_endpoint, link.address, wanted == "wan", keys))
            link.subscribed, link.subscribed_endpoint = wanted, link.publish_endpoint
            link.subscribed_buckets, link.subscribed_topic_keys = buckets, keys

    def hello(self, cls: type[wire.Hello] | type[wire.HelloAck], last_seq: int) -> wire.Hello | wire.HelloAck:
        ctx = self._ctx
        return cls(
            ctx.node_id,
            ctx.epoch,
            ctx.address,
            ctx.publish_endpoint,
            last_seq,
            ctx.dc,
            ctx.zone,
            ctx.weight,
            ctx.partitions,
            PLACEMENT_VERSION,
            wire.WIRE_VERSION_MIN,
            ctx.config.wire_version_max,
        )

    def set_wire_version(self, link: PeerLink, version: int) -> None:
        link.wire_version = version
        self._publish_version = None

    def publish_version(self) -> int:
        """The wire version of published frames: the lowest any link speaks, so that every
        subscriber reads them (PUB/SUB is one copy for all; see docs/architecture.md)."""
        if self._publish_version is None:
            versions = (link.wire_version for link in self.by_address.values() if link.wire_version)
            self._publish_version = min(versions, default=self._ctx.config.wire_version_max)
        return self._publish_version

    def offer_wire_version(self, address: str, last_seq: int) -> None:
        """A hello in this node's highest version to a peer that greeted in version 1 only: a newer
        peer whose newer copy was lost answers in kind, and the link does not stay at version 1."""
        frame = self.encode(self.hello(wire.Hello, last_seq), "sent", self._ctx.config.wire_version_max)
        self._send_frame(self.by_address.get(address), address, frame, False)

    def _versions_to(self, link: PeerLink | None, message: wire.Message) -> tuple[int, ...]:
        """Before a peer's hello told its versions, frames to it go in version 1, which every node
        reads; a hello to a peer not known to speak this node's highest goes in that version first,
        which a newer peer answers in kind, then in the version known to work."""
        known = None if link is None else link.wire_version
        highest = self._ctx.config.wire_version_max
        if isinstance(message, wire.Hello) and (known or 1) < highest:
            return (highest, known or 1)  # offered again at each greeting: a lost copy is not final
        return (known or 1,)

    def heard_in(self, node_id: str, version: int) -> None:
        """A frame in `version` from `node_id`: it speaks that version (no node writes one it does not
        speak), and so does this node (it read it), so the link speaks at least that."""
        link = self.of_node(node_id)
        if link is not None and link.wire_version is not None and link.wire_version < version:
            self.set_wire_version(link, version)

    def send_hellos(self, last_seq: int) -> None:
        """Greet every wanted link that is not alive or suspect, backing off from a quick first retry (peers often
        start together) to `hello_interval_ms`."""
        config = self._ctx.config
        now_ms = self._ctx.now_ms
        for address in self._greeting:
            link = self.by_address[address]
            if now_ms >= link.next_hello_ms and self.wanted(link):
                link.hello_backoff_ms = min(
                    config.hello_interval_ms, max(config.tick_interval_ms, link.hello_backoff_ms * 2)
                )
                link.next_hello_ms = now_ms + link.hello_backoff_ms
                self.send(link.address, self.hello(wire.Hello, last_seq))

    def next_hello_ms(self) -> float:
        if not self._greeting:  # the usual case, asked after every pump: every link is alive
            return float("inf")
        links = self.by_address
        return min(
            (links[a].next_hello_ms for a in self._greeting if self.wanted(links[a])), default=float("inf")
        )

    def alive(self, *, dc: Literal["same", "other", "any"] = "any") -> list[PeerLink]:
        """Links that are alive: all, those of this datacenter, or those of known other datacenters."""
        out = []
        for link in self.by_address.values():
            if link.state != "alive":
                continue
            link_dc = self.dc(link)
            if dc == "same" and link_dc != self._ctx.dc:
                continue
            if dc == "other" and link_dc in (None, self._ctx.dc):
                continue
            out.append(link)
        return out

    # ------------------------------------------------------------------ frames out

    def encode(self, message: wire.Message, way: Literal["published", "sent"], version: int) -> bytes | None:
        ctx = self._ctx
        try:
            frame, raw_size = wire.encode_counted(message, version)
        except wire.WireError as exc:
            # Only a single transaction larger than a frame gets here (batches split well below).
            # Peers cannot receive it as a delta; it stays in the doc and in the store.
            if way == "published":
                ctx.counters.published_too_large += 1
            else:
                ctx.counters.sent_too_large += 1
            ctx.warn(f"{way}_too_large", "not %s %s: %s", way, type(message).__name__, exc)
            return None
        counters = ctx.counters
        if way == "published":
            counters.frames_published += 1
            counters.bytes_published += len(frame)
            counters.bytes_published_raw += raw_size
        else:
            counters.frames_sent += 1
            counters.bytes_sent += len(frame)
            counters.bytes_sent_raw += raw_size
        return frame

    def topic_keys(self, buckets: list[BucketKey]) -> list[int]:
        """The topic key a frame of each bucket's deltas goes out on: its holder set's, or the bucket
        itself while some link speaks wire version 1, whose nodes subscribe to buckets (`outbound`)."""
        if self.publish_version() < 2:
            return buckets
        return [self._holding.holder_set_key(bucket) for bucket in buckets]

    def publish(
        self,
        message: wire.Message,
        *,
        dc_only: bool = False,
        topic_key: int | None = None,
        audience: Audience = "every",
    ) -> None:
        frame = self.encode(message, "published", self.publish_version())
        if frame is not None:
            if isinstance(message, wire.Deltas):
                self._ctx.counters.batches_published += 1
            self._ctx.effects.append(Publish(frame, dc_only, topic_key, audience))

    def send(self, address: str, message: wire.Message, *, after_commit: bool = False) -> None:
        link = self.by_address.get(address)
        for version in self._versions_to(link, message):
            self._send_frame(link, address, self.encode(message, "sent", version), after_commit)

    def _send_frame(
        self, link: PeerLink | None, address: str, frame: bytes | None, after_commit: bool
    ) -> None:
        if frame is not None:
            dc = self.dc(link) if link is not None else None
            if dc is not None and dc != self._ctx.dc:
                traffic = self._ctx.traffic_with(dc)
                traffic.frames_out += 1
                traffic.bytes_out += len(frame)
            self._ctx.effects.append(Send(address, frame, after_commit))

    def send_to_node(self, node_id: str, message: wire.Message) -> None:
        address = self.address_of.get(node_id)
        if address is None:
            self._ctx.counters.unknown_peer += 1
            return
        self.send(address, message)
