"""The wire side of membership: hellos, gossip, leaves, liveness and the relay topology.

`membership.py` keeps the member table and the failure detector; this part feeds it from frames (a
hello is a direct record, gossip carries everybody's) and acts on what changes: links become alive,
suspect and down, a member that left loses its link, and every change re-derives the topology (links
to this datacenter's members and, on a relay or under partial placement, to every other
datacenter's: `Links.reaches_other_dcs`; subscriptions as `Links.sync_subscription` says). Across
the WAN only relays gossip; in a single datacenter periodic gossip only repairs a missed change, so
it runs `SINGLE_DC_GOSSIP_SLOWDOWN` times rarer.
"""

from __future__ import annotations

import logging
import zlib

from crdtsync.core import wire
from crdtsync.core.antientropy import AntiEntropy
from crdtsync.core.context import Context
from crdtsync.core.guard import Guard
from crdtsync.core.inbound import Inbound
from crdtsync.core.links import Links, PeerLink
from crdtsync.core.membership import LivenessChange, Membership
from crdtsync.core.outbound import Outbound
from crdtsync.core.placement import PLACEMENT_VERSION

log = logging.getLogger("crdtsync.replica")

SINGLE_DC_GOSSIP_SLOWDOWN = 5.0
"""How much rarer periodic gossip is while every known member is in this node's datacenter."""


class Gossip:
    def __init__(
        self,
        ctx: Context,
        membership: Membership,
        guard: Guard,
        links: Links,
        outbound: Outbound,
        inbound: Inbound,
        antientropy: AntiEntropy,
    ) -> None:
        self._ctx = ctx
        self._membership = membership
        self._guard = guard
        self._links = links
        self._outbound = outbound
        self._inbound = inbound
        self._antientropy = antientropy
        self.next_gossip_ms = ctx.jittered(membership.config.gossip_interval_ms)
        # Each node starts its round robin over the peers at its own place: started alike, every
        # node would push to the same peer in the same round, and a node would hear its peers (and
        # their load summaries) in bursts a whole round robin apart.
        self._turn = zlib.crc32(ctx.node_id.encode())

    # ------------------------------------------------------------------ timers

    def evaluate_liveness(self) -> None:
        if self._ctx.now_ms >= self._membership.next_change_ms():
            changes = self._membership.evaluate(self._ctx.now_ms)
            for change in changes:
                self._on_liveness(change)
            if changes:
                self.retopologize()

    def gossip_if_due(self) -> None:
        ctx = self._ctx
        if ctx.now_ms < self.next_gossip_ms:
            return
        interval = self._membership.config.gossip_interval_ms
        if not self._membership.spans_datacenters():
            interval *= SINGLE_DC_GOSSIP_SLOWDOWN
        self.next_gossip_ms = ctx.now_ms + ctx.jittered(interval)
        self._membership.beat()
        # Across the WAN only relays gossip: the rest learn other datacenters through them.
        up = self._links.alive() if self._links.is_relay else self._links.alive(dc="same")
        if up:
            self._turn += 1
            link = up[self._turn % len(up)]
            self._gossip_to(link, reply=False)
            # Load summaries ride the same rounds (adaptive replication: crdtsync.core.load_board).
            self._links.send(link.address, ctx.load.message(ctx.now_ms))

    # ------------------------------------------------------------------ frames in

    def heard_frame(self, node_id: str, version: int, frame_bytes: int) -> None:
        """An admitted frame of `frame_bytes` in wire `version` from `node_id`: its link's version,
        the sender's liveness (any frame is evidence of life), the traffic with its datacenter."""
        ctx = self._ctx
        self._links.heard_in(node_id, version)
        change = self._membership.heard(node_id, ctx.now_ms)
        self._links.heard(node_id)
        if change is not None:
            self._on_liveness(change)
            self.retopologize()
        sender_dc = self._membership.dc_of(node_id)
        if sender_dc is not None and sender_dc != ctx.dc:
            traffic = ctx.traffic_with(sender_dc)
            traffic.frames_in += 1
            traffic.bytes_in += frame_bytes

    def on_hello(self, message: wire.Hello | wire.HelloAck) -> None:
        ctx = self._ctx
        if not message.address or message.address == ctx.address:
            return
        if (message.partitions, message.placement_version) != (ctx.partitions, PLACEMENT_VERSION):
            # Fixed for the life of a cluster: the two would place every doc differently.
            ctx.counters.hellos_refused_placement += 1
            ctx.warn(
                "placement_mismatch",
                "refused a hello from %s at %s: it has %d partitions and placement version %d, this node "
                "%d and %d (the partition count is fixed for the life of a cluster)",
                message.node_id, message.address, message.partitions, message.placement_version,
                ctx.partitions, PLACEMENT_VERSION,
            )  # fmt: skip
            return
        version = self._wire_version_with(message)
        if version is None:
            return
        link = self._links.link_for(message.address, configured=False)
        if link is None:
            return
        if message.wire_version_max == 1 and (link.wire_version or 1) > 1 and link.epoch == message.epoch:
            return  # the version-1 copy of a greeting this node took in a newer version
        self._links.set_wire_version(link, version)
        self._bind(link, message)
        record = wire.MemberEntry(
            message.node_id,
            message.dc,
            message.address,
            message.publish_endpoint,
            message.epoch,
            0,
            False,
            message.zone,
            message.weight,
        )
        changed, _alive = self._membership.merge(record, ctx.now_ms, direct=True)
        if isinstance(message, wire.Hello):
            # Answer first: the resync below makes the peer reply to us, which it can only do once
            # our HelloAck has told it who we are.
            self._links.send(message.address, self._links.hello(wire.HelloAck, self._outbound.last_seq))
            if message.wire_version_max == 1 < ctx.config.wire_version_max:
                self._links.offer_wire_version(message.address, self._outbound.last_seq)
        first_contact = link.epoch is None
        round_now = False
        if link.epoch is None or message.epoch > link.epoch:
            round_now = self._starts_round_with(message.node_id, message.dc, first_contact=first_contact)
            link.epoch = message.epoch
            self._inbound.start_track(message.node_id, message.epoch, message.last_seq)
        if not link.reachable:
            log.info(
                "peer %s at %s (dc %s) is alive (epoch %d)",
                message.node_id, message.address, message.dc, message.epoch,
            )  # fmt: skip
            ctx.counters.peer_alive += 1
        self._links.set_state(link, "alive")
        if changed:
            self.retopologize()
        else:
            self._links.sync_subscription(link)
        if first_contact:
            # A newcomer started from one seed learns the whole cluster from its first contacts.
            self._gossip_to(link, reply=False)
        if round_now:
            self._antientropy.want_round(link)
        elif isinstance(message, wire.Hello) and not first_contact:
            # A peer greets again only when it never got our HelloAck: what else we sent it since was
            # lost as well (a request socket drops frames until its connection is up), the first
            # request of a round with it included. Without this the round waited ae_round_timeout_ms.
            self._antientropy.restart_round(link.address)

    def _wire_version_with(self, message: wire.Hello | wire.HelloAck) -> int | None:
        """The highest wire version both this node and the hello's sender speak; None (refused,
        counted and logged) when there is none."""
        ctx = self._ctx
        common = min(ctx.config.wire_version_max, message.wire_version_max)
        if common >= max(wire.WIRE_VERSION_MIN, message.wire_version_min):
            return common
        ctx.counters.hellos_refused_version += 1
        ctx.warn(
            "wire_version_mismatch",
            "refused a hello from %s at %s: it speaks wire versions %d..%d, this node %d..%d",
            message.node_id, message.address, message.wire_version_min, message.wire_version_max,
            wire.WIRE_VERSION_MIN, ctx.config.wire_version_max,
        )  # fmt: skip
        return None

    def _bind(self, link: PeerLink, message: wire.Hello | wire.HelloAck) -> None:
        """Make `link` the link of the node that said hello from its address."""
        links = self._links
        if link.node_id is not None and link.node_id != message.node_id:
            # Another node now answers at this address: forget what we knew of the old one.
            links.address_of.pop(link.node_id, None)
            self._inbound.tracks.pop(link.node_id, None)
            link.epoch = None
        previous = links.address_of.get(message.node_id)
        if previous is not None and previous != message.address and previous in links.by_address:
            self._drop(links.by_address[previous])
        link.node_id = message.node_id
        links.address_of[message.node_id] = message.address
        link.last_heard_ms = self._ctx.now_ms
        link.publish_endpoint = message.publish_endpoint

    def _starts_round_with(self, node_id: str, dc: str, *, first_contact: bool) -> bool:
        """Whether this node runs the round on (re)contact with `node_id`. Rounds repair both ways,
        so one per pair is enough: at first contact the lower node id starts it, and a peer seen
        again with a new epoch (a restart) gets one at once. Across datacenters only the nodes
        that link there run rounds: relays, and every node under placement that not every node
        holds everything (`Links.reaches_other_dcs`)."""
        if dc != self._ctx.dc:
            if not self._links.reaches_other_dcs:
                return False
            if not first_contact:
                return True
            # Relays are the only nodes linked across unless placement is partial (then all are).
            peer_links_too = node_id in self._membership.relays(dc) or self._links.every_node_reaches
            return not peer_links_too or self._ctx.node_id < node_id
        return not first_contact or self._ctx.node_id < node_id

    def _drop(self, link: PeerLink) -> None:
        self._antientropy.forget(link.address)
        self._links.drop(link)

    def _gossip_to(self, link: PeerLink, *, reply: bool) -> None:
        records = self._membership.records()
        if len(records) > wire.MEMBERS_PER_MESSAGE_MAX:
            # Own record first, then a rotating window of the rest: every record gets its turn.
            rest = records[1:]
            start = (self._turn * (wire.MEMBERS_PER_MESSAGE_MAX - 1)) % len(rest)
            window = (rest + rest)[start : start + wire.MEMBERS_PER_MESSAGE_MAX - 1]
            records = [records[0], *window]
        self._ctx.counters.gossip_sent += 1
        self._links.send(link.address, wire.Members(self._ctx.node_id, reply, tuple(records)))

    def on_members(self, message: wire.Members) -> None:
        ctx = self._ctx
        membership = self._membership
        ctx.counters.gossip_received += 1
        records = list(message.members)
        changed = False
        for record in records:
            if record.node_id != message.node_id and record.address == ctx.address:
                continue  # nobody else may claim this node's address
            was_changed, alive = membership.merge(
                record, ctx.now_ms, direct=record.node_id == message.node_id
            )
            changed = changed or was_changed
            if alive:
                change = membership.heard(record.node_id, ctx.now_ms)
                if change is not None:
                    self._on_liveness(change)
                    changed = True
            if was_changed and record.left:
                self._on_left(record)
        if changed:
            self.retopologize()
        sender_dc = membership.dc_of(message.node_id)
        if not message.reply and sender_dc is not None and membership.newer_than(records, sender_dc):
            link = self._links.of_node(message.node_id)
            if link is not None:
                self._gossip_to(link, reply=True)

    def _on_left(self, record: wire.MemberEntry) -> None:
        log.info("member %s (dc %s) left the cluster", record.node_id, record.dc)
        self._ctx.counters.members_left += 1
        link = self._links.by_address.get(self._links.address_of.get(record.node_id, record.address))
        if link is not None and link.node_id == record.node_id:
            if link.configured:
                self._links.set_state(link, "down")  # a seed: keep asking, it may come back
                self._links.sync_subscription(link)
            else:
                self._drop(link)
        self._inbound.tracks.pop(record.node_id, None)
        self._guard.forget_identity(record.node_id)

    def _on_liveness(self, change: LivenessChange) -> None:
        ctx = self._ctx
        counters = ctx.counters
        match change.after:
            case "alive":
                counters.member_alive += 1
            case "suspect":
                counters.member_suspect += 1
            case "down":
                counters.member_down += 1
            case "left":
                counters.member_left += 1
        if change.after in ("suspect", "down"):
            ctx.traffic_with(change.dc).failures += 1
        log.info("member %s (dc %s): %s -> %s", change.node_id, change.dc, change.before, change.after)
        link = self._links.of_node(change.node_id)
        if link is None or link.epoch is None:
            return
        if change.after == "down":
            self._links.set_state(link, "down")
            link.hello_backoff_ms = 0.0
            ctx.counters.peer_down += 1
        elif change.after == "suspect":
            self._links.set_state(link, "suspect")
        elif change.after == "alive" and link.state != "alive":
            self._links.set_state(link, "alive")
            ctx.counters.peer_alive += 1

    def retopologize(self) -> None:
        """Bring links and subscriptions in line with the member table (see the module doc)."""
        ctx = self._ctx
        links = self._links
        relay = self._membership.is_relay()
        if relay != links.is_relay:
            links.is_relay = relay
            ctx.counters.relay_changes += 1
            log.info("this node is %s a relay of dc %s", "now" if relay else "no longer", ctx.dc)
        across = links.reaches_other_dcs
        for member in self._membership.members.values():
            record = member.record
            if member.liveness == "left" or record.address in links.by_address:
                continue
            if (record.dc == ctx.dc or across) and record.address and record.address != ctx.address:
                links.link_for(record.address, configured=False)
        for link in links.by_address.values():
            links.sync_subscription(link)

    def leave(self) -> None:
        """Announce a graceful leave to every peer this node is in contact with."""
        self._membership.leave()
        self.announce()

    def announce(self) -> None:
        """This node's own record changed (a leave, a new weight): tell every peer in contact now,
        not in turn (the others accept a change of a member's record only from the member itself)."""
        for link in self._links.by_address.values():
            if link.reachable:
                self._gossip_to(link, reply=True)
