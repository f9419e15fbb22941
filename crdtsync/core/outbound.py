"""This node's publisher stream: local writes become numbered deltas, leave in batches, and stay in a
bounded retransmit ring that answers peers' requests for what they missed.

Batches leave at once when `linger_ms` is 0 (the driver's next turn), else when full or when the
oldest delta has lingered; a flush also pushes back the next heartbeat, which only announces the
last sequence number to idle subscribers.

Under placement that not every node holds everything (`Holding.partitioned`), a batch leaves whole
for the subscribers that take every bucket (relays), and for the others in one frame per holder set:
the nodes of this datacenter that hold a bucket and not every doc (`Holding.holder_set_key`).
Sequence numbers are given at the flush, in the order of the holder sets (a stable sort, so one
doc's deltas keep their order), which makes each set's deltas consecutive: a `DELTAS` frame on the
set's topic. A subscriber receives the sets it is in and must learn which other numbers were not
meant for it, so that its sequence tracking stays whole: each frame lists the bucket of every number
since its topic's previous frame (`Deltas.skipped`), so a frame's subscribers know every number
before it. Numbers no frame listed yet go in a `SEQ_INDEX` to every subscriber before a heartbeat
(which announces them) and whenever more than `SKIPPED_SEQS_MAX` wait: a node none of the frames was
for still accounts for every number. Deltas arrive in publishing order on a subscription, so a gap
behind a delta is a loss. While some link speaks wire version 1, whose nodes subscribe to buckets,
the runs go out by bucket after a `SEQ_INDEX` of the batch instead (each node subscribes to both).

Before they are numbered, a batch's transactions of one doc that follow each other (each began in
the state the one before it ended in: its `before_state` is that one's `after_state`) become one
delta (`merge_runs`): the first's before state, the last's after state, and their updates merged
with pycrdt's `merge_updates`. Such a delta is a valid delta: everything it depends on the first
one depended on, so a receiver's causal buffer holds it exactly as long as it must, whichever wire
version carries it (version 3's receivers derive its states from the merged update). A burst of
small writes to one doc takes about half the bytes (the updates share one client header and
clock run, and lz4 finds little else to share among them), and its receivers apply and check one
update instead of dozens. Docs are independent, so a doc's merged delta takes the place of its
first transaction among other docs' deltas; a transaction that began in another state (a remote
update applied in between) starts a new delta. Sequence numbers, the ring and acknowledgements
see only the merged deltas: a delta's number stands for every transaction in it, and the ring
answers a retransmission with the same merged deltas.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

from crdtsync.core import wire
from crdtsync.core.context import Context
from crdtsync.core.holding import Holding
from crdtsync.core.links import Links
from crdtsync.core.ring import DeltaRing, Sized
from crdtsync.core.state import merge_each

MERGED_DELTAS_MAX = 64
"""Transactions merged into one delta at most. pycrdt's `merge_updates` costs more per update the
more it merges at once (in process: 1.2 µs per single-key write at 64, 4 µs at 256), and runs of
64 already take 7.4 B a write in a version-3 frame of 512 such writes, against 7.3 B for one run
of 512 (15.3 B unmerged)."""
MERGED_UPDATE_BYTES_MAX = 64 * 1024
"""Update bytes of the transactions merged into one delta at most (less when `batch_bytes_max` or
`update_bytes_max` is): a merged delta stays far within a frame and a receiver's update limit."""

MergeEach = Callable[[list[list[bytes]]], list[bytes | None]]
"""Merges each run of updates into one, None for a run pycrdt refuses (`state.merge_each`)."""


def delta_size(delta: wire.Delta) -> int:
    """What a delta adds to a batch, roughly (`ring.Sized`)."""
    return len(delta.update) + len(delta.after_state) * 2 + len(delta.doc_id)


class MergedRuns(NamedTuple):
    deltas: list[Sized]
    merged_count: int
    """Transactions that went into the delta of one before them."""
    for_store: list[tuple[str, bytes]]
    """(doc id, update) of the transactions from `unpersisted_from` on, for the store, in order for
    each doc: a merged run as its merged update, the others as they were captured."""
    refused_count: int = 0
    """Runs pycrdt refused to merge (they left as the transactions they were)."""


def merge_runs(
    deltas: list[Sized],
    update_bytes_max: int,
    merge: MergeEach = merge_each,
    unpersisted_from: int = 0,
) -> MergedRuns:
    """`deltas` with each run of a doc's transactions that follow each other merged into one delta
    in the place of the run's first (at most MERGED_DELTAS_MAX transactions and `update_bytes_max`
    update bytes a run), all runs in one call of `merge`. A run whose updates do not merge, or
    merge larger than they are, stays as it was."""
    runs: list[tuple[int, list[Sized]]] = []
    """(index of the run's first delta, the run)."""
    latest: dict[str, tuple[list[Sized], int]] = {}
    """Doc id -> its last run and that run's update bytes."""
    for index, sized in enumerate(deltas):
        delta = sized[0]
        found = latest.get(delta.doc_id)
        if found is not None:
            run, run_bytes = found
            run_bytes += len(delta.update)
            if (
                len(run) < MERGED_DELTAS_MAX
                and run_bytes <= update_bytes_max
                and run[-1][0].after_state == delta.before_state
            ):
                run.append(sized)
                latest[delta.doc_id] = run, run_bytes
                continue
        run = [sized]
        runs.append((index, run))
        latest[delta.doc_id] = run, len(delta.update)
    if len(runs) == len(deltas):  # a paced write alone in its batch, or nothing follows another
        return MergedRuns(deltas, 0, [(delta.doc_id, delta.update) for delta, _ in deltas[unpersisted_from:]])
    # Only while a batch lingers: the deltas a `Persist` does not carry yet (a run's are not
    # consecutive in the batch).
    later = {id(delta) for delta, _size in deltas[unpersisted_from:]} if unpersisted_from else set()

    def as_captured(first_index: int, run: list[Sized]) -> list[tuple[str, bytes]]:
        """What of `run` the store still lacks, as captured: all of it, unless it began before the
        last `Persist` (a lingering batch)."""
        kept = run if first_index >= unpersisted_from else [sized for sized in run if id(sized[0]) in later]
        return [(delta.doc_id, delta.update) for delta, _size in kept]

    long_runs = [run for _first, run in runs if len(run) > 1]
    updates = iter(merge([[delta.update for delta, _size in run] for run in long_runs]))
    merged: list[Sized] = []
    merged_count = refused_count = 0
    for_store: list[tuple[str, bytes]] = []
    for first_index, run in runs:
        update = next(updates) if len(run) > 1 else None
        refused_count += update is None and len(run) > 1
        # Unmerged (pycrdt refused, each was applied here: apart, they reach peers as they were)
        # or not smaller.
        if update is None or len(update) > sum([len(delta.update) for delta, _size in run]):
            merged.extend(run)
            for_store += as_captured(first_index, run)
            continue
        first, last = run[0][0], run[-1][0]
        delta = wire.Delta(first.doc_id, first.before_state, last.after_state, update)
        merged.append((delta, delta_size(delta)))
        merged_count += len(run) - 1
        # A run whose first ones went to the store before it left (a lingering batch) goes on as captured.
        for_store += (
            [(first.doc_id, update)] if first_index >= unpersisted_from else as_captured(first_index, run)
        )
    return MergedRuns(merged, merged_count, for_store, refused_count)


class Outbound:
    def __init__(
        self,
        ctx: Context,
        links: Links,
        holding: Holding,
        merge: MergeEach = merge_each,
    ) -> None:
        self._ctx = ctx
        self._merge = merge
        self._links = links
        self._holding = holding
        self.ring = DeltaRing(ctx.config.ring_deltas_max, ctx.config.ring_bytes_max)
        self._outbox: list[Sized] = []
        self._outbox_bytes = 0
        self._outbox_since_ms: float | None = None
        self._outbox_persisted = 0
        """The outbox's first deltas that a `Persist` carries already (`for_store`)."""
        self._for_store: list[tuple[str, bytes]] = []
        """What the last flush left for the `Persist` of the same step (`MergedRuns.for_store`)."""
        self.next_heartbeat_ms = 0.0
        self._unindexed: list[int] = []
        """The bucket of each number after `_indexed_through` (at most `SKIPPED_SEQS_MAX` between
        flushes): what no `SEQ_INDEX` has told every subscriber yet."""
        self._indexed_through = 0
        self._topic_listed_through: dict[int, int] = {}
        """Topic key -> the last number its subscribers know of by its frames (`Deltas.skipped`);
        only numbers after `_indexed_through` count (cleared at each `SEQ_INDEX`)."""

    def capture(self, writes: Sequence[wire.Delta]) -> None:
        """Local transactions: queue them for the next batch (they are numbered when that leaves)."""
        if not writes:
            return
        if not self._outbox:
            self._outbox_since_ms = self._ctx.now_ms
        outbox = self._outbox
        added_bytes = 0
        for delta in writes:
            size = delta_size(delta)
            outbox.append((delta, size))
            added_bytes += size
        self._outbox_bytes += added_bytes
        self._ctx.counters.deltas_published += len(writes)

    @property
    def last_seq(self) -> int:
        """The number of the latest delta published (0: none yet in this epoch)."""
        return self.ring.next_seq - 1

    def last_seq_of(self, doc_id: str, scanned_max: int = 4096) -> int:
        """The number of the latest delta of `doc_id` in the ring (0: none among the last
        `scanned_max`, which bounds the scan; a caller then learns by asking)."""
        for seq, delta in itertools.islice(self.ring.newest_first(), scanned_max):
            if delta.doc_id == doc_id:
                return seq
        return 0

    def _number(self, deltas: list[Sized]) -> int:
        """Number `deltas` in order and keep them in the ring; the first number."""
        first_seq = self.ring.next_seq
        self.ring.extend(deltas)
        return first_seq

    def flush_due(self, *, force: bool) -> None:
        """Publish the outbox if it is due (or `force`)."""
        config = self._ctx.config
        if self._outbox and (
            force
            or config.linger_ms <= 0
            or self._outbox_bytes >= config.batch_bytes_max
            or len(self._outbox) >= config.batch_deltas_max
            or self._ctx.now_ms >= self.next_flush_ms()
        ):
            self._flush()

    def next_flush_ms(self) -> float:
        """When the outbox is due: the same sum `flush_due` compares with (a difference compared
        with `linger_ms` can round below it at that time, and a driver woken then would find
        nothing due and wake again at once, without end)."""
        if self._outbox and self._outbox_since_ms is not None:
            return self._outbox_since_ms + self._ctx.config.linger_ms
        return float("inf")

    def heartbeat_if_due(self) -> None:
        ctx = self._ctx
        if ctx.now_ms >= self.next_heartbeat_ms:
            self.next_heartbeat_ms = ctx.now_ms + ctx.config.heartbeat_interval_ms
            self._index_unindexed()  # the heartbeat announces them: subscribers must know which
            self._links.publish(wire.Heartbeat(ctx.node_id, ctx.epoch, self.last_seq))

    def _index_unindexed(self) -> None:
        """Tell every partial subscriber the bucket of each number no `SEQ_INDEX` covered yet."""
        ctx = self._ctx
        first = self._indexed_through + 1
        for start in range(0, len(self._unindexed), wire.DELTAS_PER_BATCH_MAX):
            buckets = tuple(self._unindexed[start : start + wire.DELTAS_PER_BATCH_MAX])
            self._links.publish(
                wire.SeqIndex(ctx.node_id, ctx.epoch, first + start, buckets), audience="partial"
            )
        self._indexed_through += len(self._unindexed)
        self._unindexed.clear()
        self._topic_listed_through.clear()

    def _batches(self, first_seq: int, deltas: Iterable[Sized]) -> Iterator[wire.Deltas]:
        """`DELTAS` messages of consecutive sequence numbers, within the batch limits."""
        ctx = self._ctx
        chunk: list[wire.Delta] = []
        chunk_bytes = 0
        for delta, size in deltas:
            if chunk and (
                len(chunk) >= ctx.config.batch_deltas_max or chunk_bytes + size > ctx.config.batch_bytes_max
            ):
                yield wire.Deltas(ctx.node_id, ctx.epoch, first_seq, tuple(chunk))
                first_seq += len(chunk)
                chunk, chunk_bytes = [], 0
            chunk.append(delta)
            chunk_bytes += size
        if chunk:
            yield wire.Deltas(ctx.node_id, ctx.epoch, first_seq, tuple(chunk))

    def for_store(self, remote: list[tuple[str, bytes]]) -> tuple[tuple[str, bytes], ...]:
        """The updates for the next `Persist`: `remote` (applied from elsewhere since the last one,
        `DocTable.persist`), then this node's transactions captured since, each run that this step's
        flush merged as its merged update (the store need not merge them again), the others as they
        were captured (those of a batch still lingering too). Remote updates go first: a local
        transaction may depend on one applied before it, and no peer has one of these local
        transactions yet, so nothing remote here depends on them."""
        local, self._for_store = self._for_store, []
        if self._outbox_persisted < len(self._outbox):
            local += [(delta.doc_id, delta.update) for delta, _ in self._outbox[self._outbox_persisted :]]
            self._outbox_persisted = len(self._outbox)
        return (*remote, *local)

    def _flush(self) -> None:
        config = self._ctx.config
        deltas, merged_count, for_store, refused_count = merge_runs(
            self._outbox,
            min(MERGED_UPDATE_BYTES_MAX, config.batch_bytes_max, config.update_bytes_max),
            self._merge,
            self._outbox_persisted,
        )
        self._for_store += for_store
        self._ctx.counters.deltas_merged += merged_count
        if refused_count:  # this node applied every one of them: pycrdt should merge them
            self._ctx.counters.delta_merges_refused += refused_count
            self._ctx.warn(
                "merge_refused", "pycrdt refused to merge %d runs of a batch: they left apart", refused_count
            )
        if not self._holding.partitioned:
            self._index_unindexed()
            for batch in self._batches(self._number(deltas), deltas):
                self._links.publish(batch)
            self._indexed_through = self.last_seq  # every subscriber takes every frame
        else:
            holding = self._holding
            buckets = [holding.bucket_of(delta.doc_id) for delta, _size in deltas]
            keys = self._links.topic_keys(buckets)
            order = sorted(range(len(deltas)), key=keys.__getitem__)
            deltas = [deltas[i] for i in order]
            first_seq = self._number(deltas)
            for batch in self._batches(first_seq, deltas):
                start = batch.first_seq - first_seq
                end = start + len(batch.deltas)
                self._publish_partitioned(
                    batch, [buckets[i] for i in order[start:end]], [keys[i] for i in order[start:end]]
                )
        self._outbox = []
        self._outbox_persisted = 0
        self._outbox_bytes = 0
        self._outbox_since_ms = None
        self.next_heartbeat_ms = self._ctx.now_ms + self._ctx.config.heartbeat_interval_ms

    def _publish_partitioned(self, batch: wire.Deltas, buckets: list[int], keys: list[int]) -> None:
        """The batch whole, then its runs of one topic key (holder set or bucket), each listing the
        numbers its topic's subscribers have not heard of (or, past the bound and while version-1
        links want runs by bucket, after a `SEQ_INDEX` of them all)."""
        ctx = self._ctx
        deltas = batch.deltas
        self._links.publish(batch, audience="whole")
        first_unindexed = self._indexed_through + 1
        self._unindexed.extend(buckets)
        listing = self._links.publish_version() >= 2 and len(self._unindexed) <= wire.SKIPPED_SEQS_MAX
        if not listing:
            self._index_unindexed()
        start = 0
        for end in range(1, len(deltas) + 1):
            if end == len(deltas) or keys[end] != keys[start]:
                key, run_first = keys[start], batch.first_seq + start
                skipped: tuple[int, ...] = ()
                if listing:
                    listed = max(self._topic_listed_through.get(key, 0), first_unindexed - 1)
                    skipped = tuple(
                        self._unindexed[listed + 1 - first_unindexed : run_first - first_unindexed]
                    )
                    self._topic_listed_through[key] = batch.first_seq + end - 1
                run = wire.Deltas(ctx.node_id, ctx.epoch, run_first, deltas[start:end], skipped)
                self._links.publish(run, topic_key=key, audience="partial")
                start = end

    def on_retransmit_request(self, message: wire.RetransmitRequest) -> None:
        ctx = self._ctx
        oldest = self.ring.oldest_seq
        if message.epoch != ctx.epoch or message.from_seq < oldest:
            ctx.counters.retransmits_gone += 1
            self._links.send_to_node(message.node_id, wire.RetransmitGone(ctx.node_id, ctx.epoch, oldest))
            return
        # Capped here too: a request is remote input and must not make us send the whole ring.
        hi = min(message.to_seq, self.last_seq, message.from_seq + ctx.config.retransmit_deltas_max - 1)
        for batch in self._batches(
            message.from_seq, self.ring.since(message.from_seq, hi - message.from_seq + 1)
        ):
            ctx.counters.retransmits_served += 1
            self._links.send_to_node(message.node_id, batch)
