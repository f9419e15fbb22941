"""The doc table: every doc this node holds, loaded or not, with its state vector and canonical digest.

With a driver that can load docs back from its store (`lazy`), the least recently used unpinned docs
are evicted beyond `docs_cached_max` / `docs_cached_bytes_max`; an evicted doc keeps its state vector
and digest here, so the Merkle tree over all digests never needs a loaded doc. Loading is an effect
(`LoadDoc`) answered by an input (`answer_load`): work that needs an evicted doc waits in a bounded table
of continuations meanwhile, and nothing here ever blocks on a store.

Every transaction on a loaded doc passes its observer, which only records: the new state vector, the
doc as dirty for the tree, a remote update (one of `apply`'s transactions) for the store, and a
local transaction in `captured`, which the replica numbers, publishes and persists in its next step
(with that step's time).
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, Subscription, TransactionEvent
from sortedcontainers import SortedDict

from crdtsync.core import wire
from crdtsync.core.context import Context
from crdtsync.core.effects import LoadDoc
from crdtsync.core.guard import Guard
from crdtsync.core.merkle import MerkleTree
from crdtsync.core.state import StateVector, apply_in, decode_state_vector, digest

REMOTE_ORIGIN = 0x5EC
"""Transaction origin of every update `DocTable.apply` applies (from a peer, the store or a backup),
for the application's own observers; the node's observer knows these by the entry `apply` names."""

EMPTY_UPDATE = b"\x00\x00"
EMPTY_STATE = b"\x00"

Continuation = Callable[["DocEntry"], None]


class DocNotLoadedError(RuntimeError):
    """The doc is evicted: its driver must answer its `LoadDoc` (see `Replica.needs_load`) first."""


@dataclass(slots=True)
class DocEntry:
    doc_id: str
    doc: Doc[Any] | None
    """None while the doc is evicted: its content is in the store, its digest in the tree."""
    subscription: Subscription | None
    state_bytes: bytes = EMPTY_STATE
    """The doc's encoded state vector after its last transaction; decoded only when needed."""
    decoded: StateVector | None = None
    digest: bytes | None = None
    pins: int = 0
    """Handed to the application by `open_doc(pin=True)`: never evicted while pinned."""
    waiting: bool = False
    """Deltas for it wait in the causal buffer: kept loaded until they are applied."""
    next_pull_ms: float = 0.0
    """When the causal buffer may pull this doc from a publisher again."""
    loaded_bytes: int = 0
    """Estimate of the loaded doc's memory: its content's encoded size plus the updates since."""
    recorded: bool = False
    """The store holds this state and digest already: eviction need not write them again."""
    local_writes: int = 0
    """Local transactions on it since it was loaded or created: a handoff restarts when it moved."""

    def state(self) -> StateVector:
        if self.decoded is None:
            self.decoded = decode_state_vector(self.state_bytes)
        return self.decoded


class DroppedDocs:
    """Docs this node dropped (handoff), as a Bloom filter of fixed size: a doc dropped and then
    written here again must not reuse this incarnation's client id, or its new structs would repeat
    clocks the holders already have from the old ones (same id, same clock, other content: silent
    divergence). A false positive only costs a fresh client id."""

    BITS = 1 << 23  # 1 MiB
    HASHES = 4

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS // 8)
        self.count = 0

    def _positions(self, doc_id: str) -> list[int]:
        digest_bytes = hashlib.blake2b(doc_id.encode(), digest_size=4 * self.HASHES).digest()
        return [
            int.from_bytes(digest_bytes[i * 4 : i * 4 + 4], "big") % self.BITS for i in range(self.HASHES)
        ]

    def add(self, doc_id: str) -> None:
        self.count += 1
        for position in self._positions(doc_id):
            self._bits[position >> 3] |= 1 << (position & 7)

    def __contains__(self, doc_id: str) -> bool:
        if not self.count:
            return False
        return all(self._bits[p >> 3] & (1 << (p & 7)) for p in self._positions(doc_id))


class DocTable:
    def __init__(
        self,
        ctx: Context,
        guard: Guard,
        *,
        lazy: bool,
        holds: Callable[[str], bool] | None = None,
        bucket_of: Callable[[str], int] | None = None,
    ) -> None:
        """`holds(doc_id)`: whether this node holds the doc by placement (None: every doc); remote
        content for a doc it neither holds nor has is refused (`entry_for_remote`). `bucket_of`: the
        doc's placement bucket, kept in the tree so anti-entropy can compare common buckets only."""
        self._ctx = ctx
        self._holds = holds
        self._guard = guard
        self._lazy = lazy
        self._docs: SortedDict[str, DocEntry] = SortedDict()
        self.captured: list[wire.Delta] = []
        """Local transactions recorded by the observers since the replica's last step."""
        self.on_capture: Callable[[], None] | None = None
        """Told of the first local transaction captured since the last step (see `Replica.__init__`)."""
        self._applying: tuple[DocEntry, str] | None = None
        """The entry `apply` applies an update to and why, while it does: the observer tells its
        transaction from the application's by this instead of asking pycrdt for the transaction's
        origin (0.3 us a transaction; a write the application makes to another doc from inside an
        observer of this apply is still its own)."""
        self._loads_requested: dict[str, None] = {}
        self._waiting: dict[str, list[Continuation]] = {}
        """Doc id -> what waits for its load, in order; at most `load_waiters_max` in all, holding at
        most `load_waiting_bytes_max` (beyond, work is dropped and counted: the protocol repeats it)."""
        self._waiting_count = 0
        self._waiting_bytes = 0
        self._waiting_bytes_by: dict[str, int] = {}
        # Loaded, unpinned docs in least-recently-used order; only kept when docs can be reloaded.
        self._lru: OrderedDict[str, None] = OrderedDict()
        self.loaded = 0
        self.loaded_bytes = 0
        self.persist: list[tuple[str, bytes]] = []
        """Updates applied from elsewhere (peers, a backup) since the last `Persist` effect, in order;
        local transactions reach the store through the outbox, merged as they left."""
        self.doc_states: list[tuple[str, bytes, bytes | None]] = []
        """(doc id, state vector, digest) records due to the store."""
        self.drops: dict[str, None] = {}
        """Docs dropped since the last `Persist` effect (deleted from the store after its updates)."""
        self._dropped = DroppedDocs() if holds is not None else None
        self.tree = MerkleTree(wire.TREE_SEGMENTS, wire.TREE_BRANCHES, bucket_of)
        self._dirty: dict[str, None] = {}
        """Docs changed since their digest last went into the tree."""

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._docs

    def get(self, doc_id: str) -> DocEntry | None:
        entry: DocEntry | None = self._docs.get(doc_id)
        return entry

    def get_or_create(self, doc_id: str) -> DocEntry:
        """The doc's entry (loaded or not); a new, empty, loaded one for a doc never seen. Raises
        ValueError for a bad doc id and RuntimeError beyond `docs_max`."""
        entry: DocEntry | None = self._docs.get(doc_id)
        if entry is not None:
            return entry
        if not doc_id or len(doc_id.encode()) > wire.DOC_ID_BYTES_MAX:
            raise ValueError(f"doc id must be 1..{wire.DOC_ID_BYTES_MAX} bytes")
        if len(self._docs) >= self._ctx.config.docs_max:
            raise RuntimeError(f"docs_max ({self._ctx.config.docs_max}) reached")
        entry = DocEntry(doc_id=doc_id, doc=None, subscription=None)
        self._docs[doc_id] = entry
        self.drops.pop(doc_id, None)  # dropped and created again in one step: keep what comes now
        self._attach(entry, None)
        return entry

    def entry_for_remote(self, doc_id: str) -> DocEntry | None:
        """The entry remote content for `doc_id` goes to: the doc's if this node has it, a new one if
        it holds the doc by placement, else None (counted: the content is dropped). Raises like
        `get_or_create` for a bad doc id."""
        entry: DocEntry | None = self._docs.get(doc_id)
        if entry is not None:
            return entry
        if self._holds is not None and not self._holds(doc_id):
            self._ctx.counters.updates_not_held += 1
            return None
        return self.get_or_create(doc_id)

    def drop(self, entry: DocEntry) -> bool:
        """Forget a doc this node no longer holds, here and in the store (`Persist.drops`). False (nothing
        done) while anything still needs it: pins, deltas waiting on it, work waiting for its load."""
        doc_id = entry.doc_id
        if entry.pins or entry.waiting or doc_id in self._waiting or doc_id in self._loads_requested:
            return False
        if entry.doc is not None:
            if entry.subscription is not None:
                entry.doc.unobserve(entry.subscription)
            self.loaded -= 1
            self.loaded_bytes -= entry.loaded_bytes
        entry.doc = None
        entry.subscription = None
        del self._docs[doc_id]
        self._lru.pop(doc_id, None)
        self._dirty.pop(doc_id, None)
        self.tree.remove(doc_id)
        # The store deletes after this step's updates and states: none of them may be the doc's.
        self.persist = [item for item in self.persist if item[0] != doc_id]
        self.doc_states = [item for item in self.doc_states if item[0] != doc_id]
        self.drops[doc_id] = None
        assert self._dropped is not None, "only docs not held are dropped"
        self._dropped.add(doc_id)
        return True

    def doc(self, entry: DocEntry) -> Doc[Any]:
        """The entry's loaded Doc, marked recently used; DocNotLoadedError while it is evicted."""
        if entry.doc is None:
            raise DocNotLoadedError(f"doc {entry.doc_id!r} is not loaded")
        if entry.doc_id in self._lru:
            self._lru.move_to_end(entry.doc_id)
        return entry.doc

    # ------------------------------------------------------------------ loading

    def request_load(self, entry: DocEntry) -> None:
        """Ask the driver for the doc's stored content (once until it answers)."""
        if entry.doc is None and entry.doc_id not in self._loads_requested:
            self._loads_requested[entry.doc_id] = None
            self._ctx.effects.append(LoadDoc(entry.doc_id))

    def when_loaded(self, entry: DocEntry, then: Continuation, size_bytes: int = 0) -> None:
        """Run `then(entry)` now if the doc is loaded, else once its load is answered. `size_bytes`
        is what the continuation holds (an update, a state vector), counted against the bounds."""
        if entry.doc is not None:
            self.doc(entry)  # recently used
            then(entry)
            return
        config = self._ctx.config
        if (
            self._waiting_count >= config.load_waiters_max
            or self._waiting_bytes + size_bytes > config.load_waiting_bytes_max
        ):
            self._ctx.counters.load_waiters_dropped += 1
            self._ctx.warn(
                "load_waiters", "dropped work waiting for doc %r to load: too much waits", entry.doc_id
            )
        else:
            self._waiting.setdefault(entry.doc_id, []).append(then)
            self._waiting_count += 1
            self._waiting_bytes += size_bytes
            self._waiting_bytes_by[entry.doc_id] = self._waiting_bytes_by.get(entry.doc_id, 0) + size_bytes
        self.request_load(entry)

    def answer_load(self, doc_id: str, content: bytes | None) -> DocEntry | None:
        """The driver's answer to `LoadDoc(doc_id)`: attach the content (None: nothing stored, or a
        load error; the doc then starts empty and anti-entropy refills it), then run what waited."""
        self._loads_requested.pop(doc_id, None)
        entry: DocEntry | None = self._docs.get(doc_id)
        if entry is None:
            return None
        if entry.doc is None:
            self._attach(entry, content)
            self._ctx.counters.doc_loads += 1
        waiting = self._waiting.pop(doc_id, [])
        self._waiting_count -= len(waiting)
        self._waiting_bytes -= self._waiting_bytes_by.pop(doc_id, 0)
        for then in waiting:
            then(entry)
        return entry

    def loads_requested(self) -> list[str]:
        return list(self._loads_requested)

    def needs_load(self, doc_id: str) -> bool:
        """Whether `doc_id` is known here but evicted: the driver loads it before `open_doc`."""
        entry: DocEntry | None = self._docs.get(doc_id)
        return entry is not None and entry.doc is None

    def pin(self, entry: DocEntry) -> None:
        entry.pins += 1
        self._lru.pop(entry.doc_id, None)

    def release(self, doc_id: str) -> bool:
        """Take one pin off the doc; True when that was its last one (False too if it had none)."""
        entry = self._docs.get(doc_id)
        if entry is None or entry.pins == 0:
            return False
        entry.pins -= 1
        if entry.pins:
            return False
        if entry.doc is not None and self._lazy:
            self._lru[doc_id] = None
        return True

    def register(self, records: Iterable[tuple[str, bytes | None, bytes | None]]) -> None:
        """Make stored docs known without loading them: (doc id, recorded state vector, recorded
        digest). A doc without both (written after they were last recorded, e.g. before a crash) is
        loaded (a `LoadDoc` effect) to compute them."""
        if self._docs:
            raise RuntimeError("register_docs runs once, before any doc is opened")
        entries: dict[str, DocEntry] = {}
        unknown: list[DocEntry] = []
        for doc_id, state, doc_digest in records:
            entry = DocEntry(doc_id=doc_id, doc=None, subscription=None)
            entries[doc_id] = entry
            if state is None or doc_digest is None:
                unknown.append(entry)
                continue
            entry.state_bytes = state
            entry.digest = doc_digest
            entry.recorded = True
            if state != EMPTY_STATE:
                self.tree.set(doc_id, doc_digest)
        if len(entries) > self._ctx.config.docs_max:
            raise RuntimeError(
                f"the store holds {len(entries)} docs, more than docs_max ({self._ctx.config.docs_max})"
            )
        self._docs.update(entries)  # one bulk insert into the sorted index
        for entry in unknown:
            self.request_load(entry)

    def checkpoint(self) -> None:
        """Record the state and digest of every doc changed since it was last recorded."""
        self.refresh_tree()
        for entry in self._docs.values():
            if entry.doc is not None and entry.digest is not None and not entry.recorded:
                self.doc_states.append((entry.doc_id, entry.state_bytes, entry.digest))
                entry.recorded = True

    def ids(self, after: str = "", limit: int | None = None, prefix: str = "") -> list[str]:
        """Doc ids in sorted order: those starting with `prefix`, after `after`, at most `limit`."""
        keys: Iterator[str]
        if after and after >= prefix:
            keys = self._docs.irange(minimum=after, inclusive=(False, False))
        else:
            keys = self._docs.irange(minimum=prefix or None, inclusive=(True, False))
        out: list[str] = []
        for key in keys:
            if (limit is not None and len(out) >= limit) or not key.startswith(prefix):
                break
            out.append(key)
        return out

    def digest_of(self, entry: DocEntry) -> bytes:
        """The canonical digest (recorded, or computed from the loaded doc)."""
        if entry.digest is None:
            entry.digest = digest(self.doc(entry))
        return entry.digest

    def load_update(self, doc_id: str, update: bytes) -> None:
        """Apply a stored, causally complete update: not published, not persisted."""
        entry = self.get_or_create(doc_id)
        self.apply(entry, update, "load")

    def close(self) -> None:
        """Unsubscribe every doc observer (observed docs are never freed otherwise)."""
        for entry in self._docs.values():
            if entry.doc is not None and entry.subscription is not None:
                entry.doc.unobserve(entry.subscription)
        self._docs.clear()
        self._lru.clear()
        self._waiting.clear()
        self._waiting_bytes_by.clear()
        self._waiting_count = self._waiting_bytes = 0
        self.loaded = 0
        self.loaded_bytes = 0

    def apply(self, entry: DocEntry, update: bytes, reason: str, sender: str | None = None) -> bool:
        """Apply an update to a loaded doc as a remote transaction; False (counted, logged) when pycrdt
        refuses it. Persisted unless it came from the store (`load`)."""
        # The size cap protects against peers; the node's own store and backups are not capped,
        # or a doc that grew large could never be loaded again.
        remote = reason not in ("load", "restore")
        if remote and len(update) > self._ctx.config.update_bytes_max:
            self._ctx.counters.updates_dropped_too_large += 1
            return False
        doc = self.doc(entry)
        self._applying = entry, reason
        try:
            with doc.transaction(origin=REMOTE_ORIGIN) as transaction:
                real = apply_in(transaction, doc, update)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # pycrdt raises PanicException, a BaseException, on some bad input
            self._guard.reject(entry.doc_id, reason, update, exc, sender, remote=remote)
            return False
        finally:
            self._applying = None
        # Byte order is not canonical (hash-map order): compare decoded only when the bytes differ.
        if real != entry.state_bytes and decode_state_vector(real) != decode_state_vector(entry.state_bytes):
            # pycrdt kept part of the update pending (its dependencies are missing: the 0.14 trap) yet
            # the transaction's after-state counted it. Record what the doc holds, so that anti-entropy
            # sees the gap and sends what it lacks, instead of comparing against a state it claims.
            self._ctx.counters.updates_left_pending += 1
            self._ctx.warn(
                "update_left_pending", "%s update to %s left content pending", reason, entry.doc_id
            )
            entry.state_bytes = real
            entry.decoded = None
        return True

    def _attach(self, entry: DocEntry, content: bytes | None) -> None:
        client_id = self._ctx.client_id
        if self._dropped is not None and entry.doc_id in self._dropped:
            client_id = self._ctx.fresh_client_id()  # see `DroppedDocs`
        doc: Doc[Any] = Doc(client_id=client_id)
        entry.doc = doc
        self.loaded += 1
        # A partial, not a lambda: one Python frame less for every transaction.
        entry.subscription = doc.observe(functools.partial(self._on_transaction, entry))
        if content is not None:
            known = (entry.state_bytes, entry.digest, entry.doc_id in self._dirty, entry.recorded)
            self.apply(entry, content, "load")
            self.loaded_bytes += len(content) - entry.loaded_bytes
            entry.loaded_bytes = len(content)
            if known[1] is not None and entry.state_bytes == known[0]:
                # Loading changed nothing that was recorded: keep the digest, skip the recompute.
                entry.digest = known[1]
                entry.recorded = known[3]
                if not known[2]:
                    self._dirty.pop(entry.doc_id, None)
        if self._lazy and entry.pins == 0:
            self._lru[entry.doc_id] = None

    def evict_if_needed(self) -> None:
        if not self._lazy:
            return
        config = self._ctx.config
        for _ in range(len(self._lru)):
            if len(self._lru) <= config.docs_cached_max and self.loaded_bytes <= config.docs_cached_bytes_max:
                return
            doc_id, _unused = self._lru.popitem(last=False)
            entry = self._docs[doc_id]
            if entry.waiting or entry.pins or entry.doc is None:
                if entry.waiting and not entry.pins:
                    self._lru[doc_id] = None  # waits for deltas: keep it loaded, look again later
                continue
            self._evict(entry)

    def _evict(self, entry: DocEntry) -> None:
        doc_id = entry.doc_id
        if doc_id in self._dirty:
            self._tree_update(entry)
            del self._dirty[doc_id]
        if not entry.recorded:
            self.doc_states.append((doc_id, entry.state_bytes, entry.digest))
            entry.recorded = True
        if entry.subscription is not None and entry.doc is not None:
            entry.doc.unobserve(entry.subscription)
        entry.doc = None
        entry.subscription = None
        entry.decoded = None
        self.loaded -= 1
        self.loaded_bytes -= entry.loaded_bytes
        entry.loaded_bytes = 0
        self._ctx.counters.docs_evicted += 1

    def _on_transaction(self, entry: DocEntry, event: TransactionEvent) -> None:
        # pycrdt's stubs omit these attributes of TransactionEvent; they exist at run time.
        update: bytes = event.update
        after: bytes = event.after_state  # type: ignore[attr-defined]
        if update == EMPTY_UPDATE:
            return
        entry.state_bytes = after
        entry.decoded = None
        entry.digest = None
        entry.recorded = False
        entry.loaded_bytes += len(update)
        self.loaded_bytes += len(update)
        self._dirty[entry.doc_id] = None
        applying = self._applying
        if applying is not None and applying[0] is entry:  # a transaction of `apply`: never published
            if applying[1] != "load":
                self.persist.append((entry.doc_id, update))
            return
        entry.local_writes += 1  # persisted from the outbox (`Outbound.for_store`)
        self.captured.append(wire.Delta(entry.doc_id, event.before_state, after, update))  # type: ignore[attr-defined]
        if len(self.captured) == 1 and self.on_capture is not None:
            self.on_capture()

    # ------------------------------------------------------------------ the Merkle tree

    def refresh_tree(self) -> None:
        """Bring the tree up to date with the docs changed since the last refresh; O(changed docs)."""
        for doc_id in self._dirty:
            entry = self._docs.get(doc_id)
            if entry is None:
                self.tree.remove(doc_id)
            else:
                self._tree_update(entry)
        self._dirty.clear()

    def _tree_update(self, entry: DocEntry) -> None:
        if entry.state_bytes == EMPTY_STATE:
            self.tree.remove(entry.doc_id)  # empty docs are local until written
        else:
            self.tree.set(entry.doc_id, self.digest_of(entry))

    def merkle_root(self) -> bytes:
        """The root of the Merkle tree over every non-empty doc's canonical digest."""
        self.refresh_tree()
        return self.tree.root_bytes()
