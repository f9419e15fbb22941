"""Ephemeral messages: bytes about a doc that matter only while they travel, never stored, never
repaired (y-protocols awareness: who has a doc open, their cursors and selections).

A node publishes one for its own clients (`EphemeralChannel.publish`, an `EPHEMERAL` frame with
this node as `origin`) on its PUB socket like a delta: every node of its datacenter subscribes to it,
and the relays of other datacenters do too. A relay republishes what it receives from another
datacenter into its own (`dc_only`, so it never crosses the WAN again), with the same `origin`.
Nothing tracks sequence numbers or retransmits: a lost message is made good by the next one
(awareness clients renew their state every 15 s, and expire states not renewed for 30 s).

A node hands a message to its driver (`DeliverEphemeral`) only for a doc something listens to
(`listen`: the WebSocket endpoint's rooms); the others are dropped after the decode, counted. Bounded:
`wire.EPHEMERAL_BYTES_MAX` per message (checked on both sides), a token bucket for what this node
publishes and another for what it relays (drops counted), and the listened docs (`listened_max`).
"""

from __future__ import annotations

from dataclasses import dataclass

from crdtsync.core import wire
from crdtsync.core.context import Context
from crdtsync.core.effects import DeliverEphemeral
from crdtsync.core.links import Links
from crdtsync.core.membership import Membership

PUBLISH_PER_SECOND_MAX = 2000.0
"""Messages this node publishes for its own clients per second (a burst of as many): an active
editor sends its cursor a few times a second (some 500 of them at once on one node), an idle one its
renewal every 15 s; every node of the cluster handles each message."""
RELAY_PER_SECOND_MAX = 8000.0
"""Messages a relay republishes per second from the other datacenters into its own."""
LISTENED_DOCS_MAX = 100_000
"""Docs the driver may listen to at once (the WebSocket endpoint has a room per doc with clients)."""


@dataclass(slots=True)
class TokenBucket:
    """`rate_per_s` tokens a second, at most as many held; one per message."""

    rate_per_s: float
    tokens: float
    last_ms: float | None = None

    def take(self, now_ms: float) -> bool:
        if self.last_ms is not None:
            elapsed_ms = max(0.0, now_ms - self.last_ms)
            self.tokens = min(self.rate_per_s, self.tokens + elapsed_ms * self.rate_per_s / 1000.0)
        self.last_ms = now_ms
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class EphemeralChannel:
    def __init__(
        self,
        ctx: Context,
        links: Links,
        membership: Membership,
        *,
        publish_per_second_max: float = PUBLISH_PER_SECOND_MAX,
        relay_per_second_max: float = RELAY_PER_SECOND_MAX,
        listened_max: int = LISTENED_DOCS_MAX,
    ) -> None:
        self._ctx = ctx
        self._links = links
        self._membership = membership
        self._publishing = TokenBucket(publish_per_second_max, publish_per_second_max)
        self._relaying = TokenBucket(relay_per_second_max, relay_per_second_max)
        self._listened_max = listened_max
        self.listened: set[str] = set()

    def listen(self, doc_id: str, listening: bool) -> bool:
        """Start or stop handing the doc's messages to the driver; False when `listened_max` docs
        are listened to already (counted)."""
        if not listening:
            self.listened.discard(doc_id)
            return True
        if doc_id not in self.listened and len(self.listened) >= self._listened_max:
            self._ctx.counters.ephemeral_listen_refused += 1
            self._ctx.warn("ephemeral_listen", "not listening to %s: %d docs are", doc_id, self._listened_max)
            return False
        self.listened.add(doc_id)
        return True

    def publish(self, doc_id: str, payload: bytes) -> bool:
        """Publish `payload` about `doc_id` to every node of every datacenter; False when it is over
        `wire.EPHEMERAL_BYTES_MAX` or over the publish rate (both counted, and logged at most once a
        second)."""
        ctx = self._ctx
        if len(payload) > wire.EPHEMERAL_BYTES_MAX or len(doc_id.encode()) > wire.DOC_ID_BYTES_MAX:
            ctx.counters.ephemeral_dropped_too_large += 1
            ctx.warn("ephemeral_size", "not published: an ephemeral message of %d bytes", len(payload))
            return False
        if not self._publishing.take(ctx.now_ms):
            ctx.counters.ephemeral_dropped_rate += 1
            ctx.warn(
                "ephemeral_rate", "not published: over %.0f ephemeral messages/s", self._publishing.rate_per_s
            )
            return False
        ctx.counters.ephemeral_published += 1
        self._links.publish(wire.Ephemeral(ctx.node_id, ctx.node_id, doc_id, payload))
        return True

    def on_message(self, message: wire.Ephemeral) -> None:
        ctx = self._ctx
        if message.origin == ctx.node_id:
            return  # its own, back through a relay
        sender_dc = self._membership.dc_of(message.node_id)
        if self._links.is_relay and sender_dc is not None and sender_dc != ctx.dc:
            if self._relaying.take(ctx.now_ms):
                ctx.counters.ephemeral_relayed += 1
                relayed = wire.Ephemeral(ctx.node_id, message.origin, message.doc_id, message.payload)
                self._links.publish(relayed, dc_only=True)
            else:
                ctx.counters.ephemeral_dropped_rate += 1
                ctx.warn(
                    "ephemeral_relay_rate",
                    "not relayed: over %.0f ephemeral messages/s",
                    self._relaying.rate_per_s,
                )
        if message.doc_id in self.listened:
            ctx.counters.ephemeral_delivered += 1
            ctx.effects.append(DeliverEphemeral(message.doc_id, message.payload, message.origin))
        else:
            ctx.counters.ephemeral_not_listened += 1
