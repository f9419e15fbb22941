"""Effects: what the sans-IO core asks its driver to do. Frozen data, executed by `node.py` or `sim/`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Audience = Literal["every", "whole", "partial"]
"""Who a published frame is for: every subscriber; those that take every bucket (a batch as it is);
or those that take only some (with `topic_key`, those subscribed to that key; without, all of them:
an index). A topic key is a holder set's (`Holding.holder_set_key`) or, for peers of wire version 1,
a bucket's."""


@dataclass(frozen=True, slots=True)
class Publish:
    """Send `frame` on this node's PUB socket to the subscribers of its `audience`; with `dc_only`,
    only to those subscribed from this datacenter (relayed frames must not cross the WAN again)."""

    frame: bytes
    dc_only: bool = False
    topic_key: int | None = None
    audience: Audience = "every"


@dataclass(frozen=True, slots=True)
class Send:
    """Send `frame` to the request socket of the peer advertised at `address`; with `after_commit`,
    only once every `Persist` handed over with or before it is committed (an acknowledgement that
    promises durability), and not at all if the node stops first."""

    address: str
    frame: bytes
    after_commit: bool = False


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Connect to a peer's PUB endpoint (the peer advertised at `peer_address`): in full, or with
    `wan` (a relay subscribing to another datacenter) only to frames not published `dc_only`; to the
    frames for every subscriber and, with `topic_keys` None, those for subscribers of every bucket,
    else those for subscribers of some buckets, of these topic keys. Repeated for an endpoint already
    subscribed, it replaces that subscription's keys."""

    endpoint: str
    peer_address: str
    wan: bool = False
    topic_keys: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    endpoint: str


@dataclass(frozen=True, slots=True)
class Persist:
    """Append these (doc id, update) pairs to the store, local and remote changes alike; then record
    these (doc id, encoded state vector, digest) so a restart can rebuild its tree without loading."""

    updates: tuple[tuple[str, bytes], ...]
    doc_states: tuple[tuple[str, bytes, bytes | None], ...] = ()
    drops: tuple[str, ...] = ()
    """Docs to delete, after the updates and states above: this node does not hold them (placement)
    and a holder has confirmed it has all of them."""


@dataclass(frozen=True, slots=True)
class LoadDoc:
    """Read the doc's whole stored content (committed and in flight) and hand it back with
    `Replica.doc_loaded`; what needs the doc waits in the core meanwhile."""

    doc_id: str


@dataclass(frozen=True, slots=True)
class DeliverEphemeral:
    """An ephemeral message (an awareness update) from node `origin` about a doc the driver listens
    to (`Replica.listen_ephemeral`): hand it to the listener; never stored."""

    doc_id: str
    payload: bytes
    origin: str


Effect = Publish | Send | Subscribe | Unsubscribe | Persist | LoadDoc | DeliverEphemeral
