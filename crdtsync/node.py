"""The asyncio driver: the one place where the core meets the clock, ZeroMQ and the store."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import secrets
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from pycrdt import Doc

from crdtsync.artifacts.api import Artifacts
from crdtsync.consistency import CausalToken, Waiters, doc_state
from crdtsync.core.effects import (
    DeliverEphemeral,
    Effect,
    LoadDoc,
    Persist,
    Publish,
    Send,
    Subscribe,
    Unsubscribe,
)
from crdtsync.core.load_wire import NodeLoad
from crdtsync.core.placement import ClusterPlacement, DocPlacement
from crdtsync.core.replica import Replica
from crdtsync.forwarding import Forwarding
from crdtsync.holders import HintsFullError, HolderWaits, WriteAcks, WriteAcksWanted
from crdtsync.merge_thread import MergeThread
from crdtsync.node_types import NodeConfig as NodeConfig
from crdtsync.node_types import NodeStatus as NodeStatus
from crdtsync.store import MemoryStore, Store
from crdtsync.store.base import StoreCommitError, StoreDescription, StoreError
from crdtsync.store.sqlite import SqliteStore, read_backup
from crdtsync.store.writer import StoreStats, StoreWriter
from crdtsync.transport.curve import CurveKeys
from crdtsync.transport.endpoint import parse_endpoint, with_host
from crdtsync.transport.zmq_transport import ZmqTransport

log = logging.getLogger("crdtsync.node")


def _now_ms() -> float:
    return time.monotonic() * 1000.0


class Node:
    """A replica of a set of pycrdt docs, kept in sync with its peers.

    Use as `async with Node(config) as node:`. Docs from `await node.open(doc_id)` are plain pycrdt
    Docs; every local transaction on them is captured and replicated. Everything runs on the event
    loop thread that entered the node: write to its docs from that thread only."""

    def __init__(self, config: NodeConfig, *, store: Store | None = None) -> None:
        self.config = config
        self._given_store = store
        self._store: Store | None = None
        self._writer: StoreWriter | None = None
        self._store_description: StoreDescription | None = None
        self._store_errors = 0
        self._timer_wake = asyncio.Event()
        self._timer_planned_ms = 0.0
        self._transport: ZmqTransport | None = None
        self._replica_or_none: Replica | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loads: set[asyncio.Task[None]] = set()
        self._pump_scheduled = False
        self._flushes: list[asyncio.Future[None]] = []
        """Flushes waiting for the next pump (this turn's), each resolved once the store holds it."""
        self._waiters = Waiters()
        self._holder_waits: HolderWaits | None = None
        self._sends_dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._ephemeral_listeners: dict[str, Callable[[bytes, str], None]] = {}
        self._artifacts: Artifacts | None = None
        self._forwarding: Forwarding | None = None
        self._cpu_s = time.process_time()
        self._merge = MergeThread()

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def _replica(self) -> Replica:
        if self._replica_or_none is None:
            raise RuntimeError("the node is not started: use `async with Node(config) as node`")
        return self._replica_or_none

    @property
    def _waits(self) -> HolderWaits:
        if self._holder_waits is None:
            raise RuntimeError("the node is not started: use `async with Node(config) as node`")
        return self._holder_waits

    async def start(self) -> None:
        if self._replica_or_none is not None:
            raise RuntimeError("node already started")
        self._loop = asyncio.get_running_loop()
        store = self._open_store()
        try:
            # Strictly increasing per store: a counter kept on disk, or the wall clock for a store
            # that starts from nothing in every process (the memory store).
            epoch = store.new_epoch()
            description = store.describe()
            curve = CurveKeys.load(self.config.curve) if self.config.curve is not None else None
            transport = ZmqTransport(self.config.listen, self.config.publish, curve, self.config.source_host)
        except BaseException:
            store.close()
            raise
        try:
            replica = self._new_replica(transport, epoch, lazy_loading=description.lazy_loading)
        except BaseException:
            transport.close()
            store.close()
            raise
        self._store = store
        self._store_description = description
        self._writer = StoreWriter(store, self._loop, inline=not description.durable)
        self._transport = transport
        self._replica_or_none = replica
        self._holder_waits = HolderWaits(replica, self._schedule_pump)
        replica.on_chunk_message = lambda message: self.artifacts.transfer.on_message(message)
        replica.on_forward_message = lambda message: self.forwarding.on_message(message)
        if description.lazy_loading:
            # Docs load on first use; the tree comes from the digests stored with them.
            replica.register_docs((record.doc_id, record.state, record.digest) for record in store.docs())
            # Docs written after their digest was last recorded (a crash) load before the node
            # serves, so that every digest is known from the start.
            for doc_id in replica.loads_requested():
                replica.doc_loaded(doc_id, await self._read_doc(doc_id), _now_ms())
            # The index of every stored doc lives as long as the node: keep it out of the cyclic
            # GC's full collections (measured: 356 ms pauses with a million docs indexed).
            gc.freeze()
        else:
            for record in list(store.docs()):
                update = store.load_doc(record.doc_id)
                if update is not None:
                    replica.load_update(record.doc_id, update)
        now = _now_ms()
        for peer in self.config.peers:
            replica.add_peer(peer, now)
        transport.start_receiving(self._on_frame, self._pump)
        self._tasks = [asyncio.create_task(self._timer_loop())]
        replica.tick(now)
        self._pump()
        log.info(
            "node %s started: listen %s (advertised %s), publish %s (advertised %s), epoch %d, %d docs, %d peers",
            self.config.node_id, self.config.listen, self.config.advertised, transport.publish_endpoint,
            replica.publish_endpoint, epoch,
            replica.status(now).docs, len(self.config.peers),
        )  # fmt: skip

    def _open_store(self) -> Store:
        if self._given_store is not None:
            return self._given_store
        if self.config.data_dir is not None:
            return SqliteStore(
                self.config.data_dir, node_id=self.config.node_id, durability=self.config.durability
            )
        return MemoryStore()

    def _new_replica(self, transport: ZmqTransport, epoch: int, *, lazy_loading: bool) -> Replica:
        # A fresh client id per start: an id reused after a restart could collide with updates
        # the previous incarnation sent but never stored.
        return Replica(
            node_id=self.config.node_id,
            epoch=epoch,
            client_id=secrets.randbits(53) or 1,
            address=self.config.advertised,
            publish_endpoint=self._advertised_publish(transport.publish_endpoint),
            config=self.config.replication,
            # Evicting docs needs somewhere to reload them from: only a store that says so.
            lazy_docs=lazy_loading,
            dc=self.config.dc,
            membership=self.config.membership,
            on_capture=self._schedule_pump,
            placement=self.config.placement,
            zone=self.config.zone,
            weight=self.config.weight,
            merge_each=self._merge.merge,
        )

    def _advertised_publish(self, bound: str) -> str:
        if self.config.publish_advertise is not None:
            return self.config.publish_advertise
        return with_host(bound, parse_endpoint(self.config.advertised)[0])

    async def _read_doc(self, doc_id: str) -> bytes | None:
        """A doc's stored content, read off the event loop (the writer's thread)."""
        assert self._writer is not None
        try:
            return await self._writer.load_doc(doc_id)
        except StoreError as exc:
            # The doc starts empty here and anti-entropy refills it from the peers.
            self._store_errors += 1
            log.error("cannot load doc %r from the store, refilling it from peers: %s", doc_id, exc)
            return None

    async def _load(self, doc_id: str) -> None:
        """Answer the core's `LoadDoc(doc_id)`, unless the doc was loaded meanwhile (by `open`, or at
        start): then nothing waits for it."""
        if self._replica_or_none is None or not self._replica_or_none.needs_load(doc_id):
            return
        content = await self._read_doc(doc_id)
        if not self._closed and self._replica_or_none is not None:
            self._replica_or_none.doc_loaded(doc_id, content, _now_ms())
            self._pump()

    def _start_load(self, doc_id: str) -> None:
        task = asyncio.create_task(self._load(doc_id))
        self._loads.add(task)  # the core asks once per doc: bounded by the docs it holds
        task.add_done_callback(self._loads.discard)

    async def close(self) -> None:
        """With `leave_on_close`, hand the docs this node holds to their next holders (placement, at
        most `leave_drain_ms`) and leave the cluster; then flush what is pending, close sockets and
        unobserve every doc. Idempotent."""
        if self._closed or self._replica_or_none is None:
            self._closed = True
            return
        # Under placement, a leaving node first hands its docs to those who hold them without it.
        waits = self._holder_waits
        leave = self.config.leave_on_close
        if leave and self._replica.leave_hands_off and waits is not None and not await waits.drain():
            hinted = self._replica.status(_now_ms()).hinted_docs
            log.warning("leaving with %d docs not handed over (leave_drain_ms ran out)", hinted)
        self._replica.checkpoint()
        if leave:
            self._replica.leave(_now_ms())
        self._pump(force=True)
        self._closed = True
        tasks = [*self._tasks, *self._loads]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._transport is not None:
            await self._transport.stop_receiving()
        self._replica_or_none.stop_notifying()
        self._replica_or_none.close()
        if self._transport is not None:
            self._transport.close()
        for part in (self._writer, self._artifacts, self._forwarding, self._merge):
            if part is not None:
                part.close()

    async def open(self, doc_id: str, *, read: bool = True) -> Doc[Any]:
        """The pycrdt Doc `doc_id`, kept in sync with the peers; created empty when new. The doc stays
        loaded until `release(doc_id)` (once per `open`): only then may the node evict it. Counted as
        a read of the doc (adaptive replication) unless `read` is False (opened only to write): then
        `HintsFullError` refuses it when this node does not hold the doc and its hints are full."""
        replica = self._replica
        if read:
            replica.load.read(doc_id, _now_ms())
        elif replica.refuse_write(doc_id, _now_ms()):
            raise HintsFullError(doc_id, self.config.replication.hint_bytes_max)
        if replica.needs_load(doc_id):
            # Read off the event loop. Nothing evicts it between the answer and the pin below (no
            # await between them); a load the core asked for meanwhile finds it loaded, harmlessly.
            replica.doc_loaded(doc_id, await self._read_doc(doc_id), _now_ms())
            self._schedule_pump()
        doc = replica.open_doc(doc_id, pin=True)
        if not replica.holds(doc_id) and doc_id not in replica.load.following:  # a read follower has it
            await self._waits.follow(doc_id)
        return doc

    async def write_acks(
        self, doc_id: str, replicas: WriteAcksWanted, *, timeout_ms: float = 5000.0
    ) -> WriteAcks:
        """Wait until `replicas` replicas of `doc_id` (by placement; this node counts when it is
        one), or with `"dc"` / `"all"` every alive node of this / every datacenter that holds it,
        hold everything this node has of the doc durably, each confirming after its own commit.
        Raises `WriteAcksTimeoutError` naming those that did after `timeout_ms`."""
        if isinstance(replicas, int) and replicas < 1:
            raise ValueError(f'replicas must be >= 1, "dc" or "all", got {replicas}')
        await self.flush()
        await self.open(doc_id, read=False)
        try:
            return await self._waits.write_acks(doc_id, replicas, timeout_ms)
        finally:
            self.release(doc_id)

    @property
    def artifacts(self) -> Artifacts:
        """Large files as versions of content-defined chunks, kept under `data_dir` (a temporary
        directory without one), their manifests in docs: docs/artifacts.md."""
        if self._artifacts is None:
            directory = None if self.config.data_dir is None else f"{self.config.data_dir}/artifacts"
            self._artifacts = Artifacts(self, directory)
        return self._artifacts

    @property
    def forwarding(self) -> Forwarding:
        """Requests about docs this node does not hold, served by a holder (docs/placement.md#forwarding)."""
        if self._forwarding is None:
            self._forwarding = Forwarding(self)
        return self._forwarding

    def publish_ephemeral(self, doc_id: str, payload: bytes) -> bool:
        """Send `payload` (e.g. an awareness update) about `doc_id` to the nodes of every datacenter
        that listen to the doc, never stored; False when over its size or rate bound (counted)."""
        published = self._replica.publish_ephemeral(doc_id, payload, _now_ms())
        self._schedule_pump()
        return published

    def listen_ephemeral(self, doc_id: str, listener: Callable[[bytes, str], None] | None) -> bool:
        """Call `listener(payload, origin node id)` for every ephemeral message about `doc_id` from
        other nodes (one listener per doc; None stops). False when too many docs are listened to."""
        if listener is None:
            self._ephemeral_listeners.pop(doc_id, None)
            return self._replica.listen_ephemeral(doc_id, False)
        if not self._replica.listen_ephemeral(doc_id, True):
            return False
        self._ephemeral_listeners[doc_id] = listener
        return True

    def release(self, doc_id: str) -> None:
        """Let the node evict `doc_id` from memory again; do not write to the Doc object afterwards."""
        self._replica.release_doc(doc_id)

    def digest(self, doc_id: str) -> bytes:
        """The canonical 16-byte digest of a doc's state: equal on two replicas iff they hold the same
        items and deletions. Raises KeyError for a doc this node does not hold."""
        return self._replica.doc_digest(doc_id)

    def merkle_root(self) -> bytes:
        """The root of the node's Merkle tree over all doc digests: equal on two nodes iff they hold
        the same docs with the same content."""
        return self._replica.merkle_root()

    def doc_ids(self, *, after: str = "", limit: int | None = None, prefix: str = "") -> list[str]:
        """Ids of the docs this node holds, in sorted order: those starting with `prefix`, after
        `after`, at most `limit`."""
        return self._replica.doc_ids(after=after, limit=limit, prefix=prefix)

    def holds(self, doc_id: str) -> bool:
        """Whether this node holds `doc_id` by placement (always, with rf "all"): other docs it has
        are on their way to a holder, or followed while open."""
        return self._replica.holds(doc_id)

    def has_doc(self, doc_id: str) -> bool:
        """Whether this node holds `doc_id` (loaded or not)."""
        return self._replica.has_doc(doc_id)

    def placement(self, doc_id: str) -> DocPlacement:
        """The doc's partition and its replicas in each datacenter, in preference order, with the
        state this node sees them in."""
        return self._replica.doc_placement(doc_id)

    def follows(self, doc_id: str) -> bool:
        """Whether this node follows `doc_id` as a read follower (docs/placement.md#read-followers)."""
        return doc_id in self._replica.load.following

    def load_summaries(self) -> list[tuple[NodeLoad, float]]:
        """Every member's latest load summary, this node's first, with its age in ms (its load and
        hottest docs: docs/placement.md#adaptive-replication)."""
        return self._replica.load.view(_now_ms())

    def cluster_placement(self) -> ClusterPlacement:
        """Partitions per member under the default placement rule, and the imbalance per datacenter."""
        return self._replica.cluster_placement()

    async def causal_token(self, *doc_ids: str) -> CausalToken:
        """A token of what this node holds of `doc_ids` now (state vector and deletions of each):
        give it to `wait_for` on any node, or `merge` it into a session's token. Docs this node does
        not hold are left out. TokenTooLargeError beyond the token's bounds (docs/consistency.md)."""
        states = {}
        for doc_id in doc_ids:
            if self.has_doc(doc_id):
                states[doc_id] = doc_state(await self.open(doc_id))
                self.release(doc_id)
        return CausalToken.of(states)

    async def wait_for(self, doc_id: str, token: CausalToken, *, timeout_ms: float = 2000.0) -> None:
        """Return once this node holds everything `token` names of `doc_id` (at once when it does
        already, or when the token does not name the doc). Woken by the doc's changes, never polled.
        Raises `NotCoveredError` (a TimeoutError naming what is missing) after `timeout_ms`, and
        `TooManyWaitersError` when `consistency.WAITERS_MAX` reads wait already. A doc this node has
        never heard of is opened empty to be waited for (local only until written, as `open`)."""
        need = token.get(doc_id)
        if not need.state and not need.deletes:
            return
        doc = await self.open(doc_id)  # pinned while waiting: eviction would swap the Doc object
        try:
            await self._waiters.wait(doc_id, doc, need, timeout_ms)
        finally:
            self.release(doc_id)

    async def flush(self) -> None:
        """Hand every local write made so far to the transport, and return once the store holds it
        as the durability setting promises (at once with durability `none`). The flushes of one turn
        of the event loop share one pump: many requests' writes leave in one batch and one commit,
        and each flush wakes once, when that commit is done."""
        if self._loop is None or self._closed:
            if self._writer is not None and self.config.durability != "none":
                await self._writer.flushed()
            return
        flushed = self._loop.create_future()
        self._flushes.append(flushed)
        self._schedule_pump()
        await flushed

    async def backup(self, path: str) -> None:
        """Write a consistent copy of the node's store to the new file `path` while writes go on.
        Needs a `data_dir`."""
        store, writer = self._store, self._writer
        if store is None or writer is None:
            raise RuntimeError("the node is not started: use `async with Node(config) as node`")
        self._pump(force=True)
        # A store that cannot make backups (the memory store) raises StoreError, a RuntimeError.
        await writer.run(lambda: store.backup(path))

    async def restore(self, path: str) -> int:
        """Merge every doc of a backup file into this node as CRDT updates: nothing newer is
        overwritten, and anti-entropy spreads what the cluster lacked. Returns the docs merged."""
        loop = asyncio.get_running_loop()
        contents = await loop.run_in_executor(None, lambda: list(read_backup(path)))
        replica = self._replica
        for doc_id, update in contents:
            replica.restore_update(doc_id, update, _now_ms())
        self._pump()
        return len(contents)

    def status(self) -> NodeStatus:
        replica = self._replica
        snapshot = replica.status(_now_ms())
        counters = snapshot.counters
        if self._transport is not None:
            counters.transport_send_drops = self._transport.send_drops + self._sends_dropped
            counters.transport_subscriptions_refused = self._transport.subscriptions_refused
            counters.curve_refused = self._transport.curve_refused
            counters.curve_no_key = self._transport.curve_no_key
        if self._writer is not None:
            stats = self.store_stats()
            counters.docs_loaded = replica.loaded_docs()
            counters.docs_loaded_bytes = replica.loaded_bytes()
            counters.store_commits = stats.commits
            counters.store_commit_failures = stats.commit_failures
            counters.store_load_errors = stats.load_errors
        shared = {
            f.name: getattr(snapshot, f.name) for f in dataclasses.fields(snapshot) if f.name != "address"
        }
        return NodeStatus(
            **shared,
            listen=snapshot.address,
            publish_endpoint=replica.publish_endpoint,
            store=self._store_description.name if self._store_description is not None else "memory",
            durability=self.config.durability if self._durable() else "none",
        )

    def store_stats(self) -> StoreStats:
        """The node's store (what `describe()` says of it) and what its writer did so far."""
        writer, description = self._writer, self._store_description
        if writer is None or description is None:
            raise RuntimeError("the node is not started: use `async with Node(config) as node`")
        return StoreStats(
            store=description,
            commits=writer.commits,
            commit_failures=writer.commit_failures,
            commit_latency_counts=None if writer.inline else tuple(writer.commit_latency_counts),
            commit_latency_sum_ms=writer.commit_latency_sum_ms,
            pending_effects=writer.pending_effects,
            load_errors=self._store_errors,
            failing=writer.failing,
        )

    def store_failure(self) -> StoreCommitError | None:
        """Why the store's last commit failed, until one succeeds; None while it commits (what
        `store_stats().failing` says, without building the stats: every HTTP write checks it)."""
        return None if self._writer is None else self._writer.failing

    def _durable(self) -> bool:
        return self._store_description is not None and self._store_description.durable

    # ------------------------------------------------------------------ internals

    def _on_frame(self, frame: bytes, sender_key: str | None) -> None:
        if not self._closed:
            self._replica.store_failing = self._writer is not None and self._writer.failing is not None
            self._replica.receive(frame, _now_ms(), sender_key=sender_key)
            if self._holder_waits is not None:
                self._holder_waits.wake()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._loop is not None and not self._closed:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self, *, force: bool = False) -> None:
        self._pump_scheduled = False
        flushes, self._flushes = self._flushes, []
        try:
            if self._closed or self._replica_or_none is None or self._transport is None:
                return
            self._execute(self._replica_or_none.take_effects(_now_ms(), force=force or bool(flushes)))
            # Inputs can bring the next deadline forward (a gap to chase, a peer to greet): wake the
            # timer if it sleeps past it.
            if self._replica_or_none.next_deadline_ms() < self._timer_planned_ms:
                self._timer_wake.set()
        finally:
            if flushes:
                self._flushed_after(flushes)

    def _flushed_after(self, flushes: list[asyncio.Future[None]]) -> None:
        """Resolve `flushes` once the store holds what this pump handed it (at once without a
        durable store)."""
        if self._writer is not None and self.config.durability != "none":
            self._writer.resolve_when_committed(flushes)
            return
        for flushed in flushes:
            if not flushed.done():
                flushed.set_result(None)

    def _execute(self, effects: list[Effect]) -> None:
        transport = self._transport
        assert transport is not None
        after_commit: list[Send] = []
        for effect in effects:
            if isinstance(effect, Send) and effect.after_commit:
                after_commit.append(effect)  # once this batch's Persist is handed over too
                continue
            try:
                self._execute_one(transport, effect)
            except Exception:  # one failed effect must not stop the node's receive loops
                log.exception("could not execute %s", type(effect).__name__)
        if after_commit:
            self._send_after_commit(transport, after_commit)

    def _send_after_commit(self, transport: ZmqTransport, sends: list[Send]) -> None:
        """Acknowledgements of durability go out once the store holds what they acknowledge."""

        def send_all() -> None:
            if not self._closed:
                for send in sends:
                    transport.send(send.address, send.frame)

        writer = self._writer
        if writer is None:
            send_all()
        elif not writer.after_commit(send_all, len(sends)):
            self._sends_dropped += len(sends)

    def _execute_one(self, transport: ZmqTransport, effect: Effect) -> None:
        match effect:
            case Publish(frame, dc_only, topic_key, audience):
                transport.publish(frame, dc_only=dc_only, topic_key=topic_key, audience=audience)
            case Send(address, frame):
                transport.send(address, frame)
            case Persist():
                assert self._writer is not None
                self._writer.submit(effect)
            case Subscribe(endpoint, peer_address, wan, topic_keys):
                transport.subscribe(endpoint, peer_address, wan=wan, topic_keys=topic_keys)
            case Unsubscribe(endpoint):
                transport.unsubscribe(endpoint)
            case LoadDoc(doc_id):
                self._start_load(doc_id)
            case DeliverEphemeral(doc_id, payload, origin):
                listener = self._ephemeral_listeners.get(doc_id)
                if listener is not None:
                    listener(payload, origin)

    async def _timer_loop(self) -> None:
        """Sleep until the core's next deadline; an input that brings the deadline forward (see
        `_pump`) wakes the loop early. An idle node wakes only for heartbeats and rounds."""
        replica = self._replica
        # `closed` is checked too: in Python 3.11 a wakeup that lands together with the cancellation
        # from `close()` can swallow the cancellation (wait_for), and the loop must still end.
        while not self._closed:
            deadline_ms = replica.next_deadline_ms()
            self._timer_planned_ms = deadline_ms
            delay_s = (deadline_ms - _now_ms()) / 1000.0
            self._timer_wake.clear()
            if delay_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s):
                        await self._timer_wake.wait()
            if self._closed:
                return
            try:
                cpu_s, self._cpu_s = self._cpu_s, time.process_time()
                replica.load.busy(self._cpu_s - cpu_s, _now_ms())  # the node's load figure
                replica.tick(_now_ms())
                self._pump()
            except Exception:  # a bug in a timer must not stop replication for good
                log.exception("timer tick failed")
