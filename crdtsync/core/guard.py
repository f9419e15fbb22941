"""Admission: what a frame or an update must pass before it reaches the rest of the core.

- a token bucket per sender (`peer_frames_per_second_max`);
- identity binding: the first node id seen with an authenticated key stays bound to it;
- the structural check of every peer's update before pycrdt sees it;
- quarantine: a sender, or a doc, with `quarantine_after_rejects` rejected updates within
  `quarantine_ms` is ignored (the sender) or closed to updates from senders with strikes (the doc)
  for `quarantine_ms`. Every table here is bounded by a multiple of `peers_max`.
"""

from __future__ import annotations

import logging

from crdtsync.core.context import Context
from crdtsync.core.update_check import UpdateError, check_update

log = logging.getLogger("crdtsync.replica")


class Guard:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._keys_max = 4 * ctx.config.peers_max
        self._strikes: dict[str, tuple[int, float]] = {}
        self._quarantined: dict[str, float] = {}
        self._doc_strikes: dict[str, tuple[int, float]] = {}
        self._docs_quarantined: dict[str, float] = {}
        self._key_of: dict[str, str] = {}
        """Node id -> the authenticated key it first spoke with."""
        self._node_of_key: dict[str, str] = {}
        self._buckets: dict[str, tuple[float, float]] = {}

    def admit_frame(self, sender: str, key: str | None) -> bool:
        """Whether a frame from node id `sender` (on a connection authenticated as `key`, if known)
        goes on to be handled: not this node's own, not quarantined, within its rate, and from the
        key bound to that node id."""
        if sender == self._ctx.node_id:
            self._ctx.counters.own_frames_dropped += 1
            return False
        return self.admit(sender) and (key is None or self.identity_matches(sender, key))

    def admit(self, sender: str) -> bool:
        """Quarantine and per-sender rate limit, checked before a frame is handled."""
        ctx = self._ctx
        now_ms = ctx.now_ms
        until = self._quarantined.get(sender)
        if until is not None:
            if now_ms < until:
                ctx.counters.frames_dropped_quarantined += 1
                return False
            del self._quarantined[sender]
        rate = ctx.config.peer_frames_per_second_max
        tokens, last = self._buckets.get(sender, (rate, now_ms))
        tokens = min(rate, tokens + (now_ms - last) * rate / 1000.0)
        if tokens < 1.0:
            self._buckets[sender] = (tokens, now_ms)
            ctx.counters.frames_dropped_rate += 1
            ctx.warn("rate", "dropping frames from %s: over %.0f frames/s", sender, rate)
            return False
        self._buckets[sender] = (tokens - 1.0, now_ms)
        if len(self._buckets) > self._keys_max:
            del self._buckets[next(iter(self._buckets))]
        return True

    def identity_matches(self, node_id: str, key: str) -> bool:
        bound = self._key_of.get(node_id)
        owner = self._node_of_key.get(key)
        if bound is None and owner is None:
            if len(self._key_of) >= self._keys_max:  # bounded: the oldest binding goes
                oldest = next(iter(self._key_of))
                self._node_of_key.pop(self._key_of.pop(oldest), None)
            self._key_of[node_id] = key
            self._node_of_key[key] = node_id
            return True
        if bound == key and owner == node_id:
            return True
        self._ctx.counters.frames_dropped_identity += 1
        self._ctx.warn(
            "identity",
            "dropped a frame claiming to be %s from key %s (bound to %s)",
            node_id,
            key,
            owner if bound is None else f"key {bound}",
        )
        return False

    def forget_identity(self, node_id: str) -> None:
        """A member that left: its key may be used by a new node id."""
        key = self._key_of.pop(node_id, None)
        if key is not None:
            self._node_of_key.pop(key, None)

    def well_formed(
        self, doc_id: str, reason: str, update: bytes, sender: str | None, *, walked: bool = False
    ) -> bool:
        """Refuse an update from a peer (`sender`) or a backup (None) that pycrdt would accept into a
        doc it later crashes on reading, and, while the doc is quarantined, every update from a
        sender with rejections on record (honest peers keep repairing it, so replicas still converge).
        `walked`: `update_check.causal_range` already parsed the update whole, which checks what
        `check_update` does."""
        if sender is not None and sender in self._strikes and self._doc_quarantined(doc_id):
            self._ctx.counters.updates_dropped_doc_quarantined += 1
            return False
        if walked:
            return True
        try:
            check_update(update)
        except UpdateError as exc:
            self.reject(doc_id, reason, update, exc, sender, remote=sender is not None)
            return False
        return True

    def reject(
        self, doc_id: str, reason: str, update: bytes, exc: BaseException, sender: str | None, *, remote: bool
    ) -> None:
        ctx = self._ctx
        ctx.counters.updates_rejected += 1
        ctx.warn(
            "update_rejected", "rejected a %s update of %d bytes for %r: %s", reason, len(update), doc_id, exc
        )
        if sender is not None:
            self._strike(sender)
        if remote and self._strike_in(self._doc_strikes, doc_id):
            self._docs_quarantined[doc_id] = ctx.now_ms + ctx.config.quarantine_ms
            if len(self._docs_quarantined) > ctx.config.peers_max:  # bounded: the oldest goes
                del self._docs_quarantined[next(iter(self._docs_quarantined))]
            ctx.counters.docs_quarantined += 1
            log.warning(
                "quarantined doc %r for %.0f s: %d updates for it were rejected",
                doc_id,
                ctx.config.quarantine_ms / 1000.0,
                ctx.config.quarantine_after_rejects,
            )

    def _strike_in(self, strikes: dict[str, tuple[int, float]], key: str) -> bool:
        """Count one rejection against `key` in `strikes`; True when that makes it quarantined."""
        now_ms = self._ctx.now_ms
        count, since = strikes.get(key, (0, now_ms))
        if now_ms - since > self._ctx.config.quarantine_ms:
            count, since = 0, now_ms
        count += 1
        strikes[key] = (count, since)
        if len(strikes) > self._keys_max:
            del strikes[next(iter(strikes))]  # bounded: forget the oldest
        if count < self._ctx.config.quarantine_after_rejects:
            return False
        strikes.pop(key, None)
        return True

    def _doc_quarantined(self, doc_id: str) -> bool:
        until = self._docs_quarantined.get(doc_id)
        if until is None:
            return False
        if self._ctx.now_ms < until:
            return True
        del self._docs_quarantined[doc_id]
        return False

    def _strike(self, sender: str) -> None:
        """Count a rejected update against its sender; too many and the sender is quarantined."""
        ctx = self._ctx
        if self._strike_in(self._strikes, sender):
            self._quarantined[sender] = ctx.now_ms + ctx.config.quarantine_ms
            ctx.counters.peers_quarantined += 1
            log.warning(
                "quarantined %s for %.0f s: %d of its updates were rejected",
                sender,
                ctx.config.quarantine_ms / 1000.0,
                ctx.config.quarantine_after_rejects,
            )
