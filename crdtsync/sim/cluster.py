"""A deterministic cluster simulator driving the sans-IO core.

One event heap keyed `(time_ms, seq)`, one seeded `random.Random`, a network (`network`) that loses,
duplicates, delays, reorders and partitions, and nodes that crash and restart. Nothing reads a
clock or a global random source, so a run replays exactly from its seed.

By default a crashed node loses everything (its store is memory, like `MemoryStore`): it comes back
empty with a new epoch and client id, to be refilled by its peers; the checker allows losing exactly
the writes of a node that later crashed.

With `SimConfig.durable` each node also has a durable store that survives its crashes: a
`MemoryStore` holding what completed commits hold, behind the same `CommitQueue` as `StoreWriter`'s
group commit: `Persist` effects join the node's pending group; when no commit runs, a commit takes
the next group (after `COMMIT_LINGER_MS` when neither a client write nor an acknowledgement waits
on it) and completes `commit_ms` later; a crash loses the pending group and the running commit
(`CommitQueue.lose`). The core's `LoadDoc` effects are answered `load_ms` later (what waits
for the doc waits in the core meanwhile, as on a real node) with committed and in-flight updates
(`CommitQueue.load_doc`); a client operation on an evicted doc loads it first, as `Node.open` does.
A restarted node registers the docs the store holds, with their recorded digests, like `Node.start`
with a data_dir. A client write is acknowledged when the commit holding its update completes (what
`Node.flush()` waits for), and an acknowledged write must survive any crash of its writer."""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable
from typing import Any, Literal

from pycrdt import Doc

from crdtsync.core.effects import DeliverEphemeral, LoadDoc, Persist, Publish, Send, Subscribe, Unsubscribe
from crdtsync.core.replica import Replica
from crdtsync.sim import invariants
from crdtsync.sim.config import FAULTS as FAULTS
from crdtsync.sim.config import SimConfig as SimConfig
from crdtsync.sim.config import SimResult as SimResult
from crdtsync.sim.durable import SimStores
from crdtsync.sim.follows import Follows
from crdtsync.sim.network import SimNetwork
from crdtsync.sim.node import SimNode
from crdtsync.sim.trace import SimTracer, Step
from crdtsync.sim.workload import MapTextWorkload, Workload, Write

EVENTS_MAX = 5_000_000


FaultKind = Literal["partition", "heal", "crash", "restart", "leave"]
EventKind = (
    FaultKind
    | Literal["deliver", "tick", "op", "drained", "check", "commit", "linger", "load", "follow", "unfollow"]
)


class SimCluster:
    """Run one seeded simulation: `SimCluster(config).run()`."""

    def __init__(
        self, config: SimConfig, workload: Workload | None = None, *, tracer: SimTracer | None = None
    ) -> None:
        """`tracer`: called on each frame sent, each client operation and each replica step."""
        self.config = config
        self.tracer = tracer
        self.workload: Workload = workload or MapTextWorkload()
        self.rng = random.Random(config.seed)
        self.now_ms = 0.0
        self._heap: list[tuple[float, int, EventKind, Any]] = []
        self._seq = 0
        self.nodes = [
            SimNode(
                index,
                f"sim://n{index}",
                f"sim://n{index}/pub",
                f"dc{index * config.datacenters // config.nodes}",
            )
            for index in range(config.nodes)
        ]
        dcs = sorted({node.dc for node in self.nodes})
        self.network = SimNetwork(config, self.rng, dcs, self._deliver_at, tracer)
        self._by_address = {node.address: node for node in self.nodes}
        self._by_endpoint = {node.publish_endpoint: node for node in self.nodes}
        self.writes: list[tuple[Write, int, int]] = []
        """(write, writer index, writer incarnation at write time)."""
        self.shared_values: dict[tuple[str, str, str], list[Any]] = {}
        self.crashes = 0
        self.events = 0
        self.ever_crashed_incarnations: set[tuple[int, int]] = set()
        self.acknowledged: dict[int, float] = {}
        """Index into `writes` -> simulated time its durable-store commit completed (durable only)."""
        self.follows = Follows(self, self._schedule)
        self.stores = SimStores(self, self._schedule)
        self._handlers: dict[EventKind, Callable[[Any], None]] = {
            "deliver": self._on_deliver,
            "tick": self._on_tick,
            "op": self._client_op,
            "commit": self._on_commit,
            "linger": self.stores.on_linger_end,
            "load": self._on_load,
            "partition": self._on_partition,
            "heal": self._on_heal,
            "crash": self._on_crash,
            "restart": self._on_restart,
            "leave": self._on_leave,
            "drained": self._on_drained,
            "follow": self.follows.on_follow,
            "unfollow": self.follows.on_unfollow,
        }
        """What each event does ("check" events are run's own)."""

    # ------------------------------------------------------------------ scheduling

    def _schedule(self, at_ms: float, kind: EventKind, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at_ms, self._seq, kind, payload))

    def schedule(self, at_ms: float, kind: FaultKind, payload: Any = None) -> None:
        """Script a fault before `run()`, on top of the planned ones: `("partition", {node index:
        group})` (None: random groups), `("heal", None)`, `("crash", node index)`, `("restart", node
        index)`, `("leave", node index)` (a graceful leave; a later restart rejoins). Everything
        still heals at the end of the write window, except nodes that left."""
        self._schedule(at_ms, kind, payload)

    def schedule_op(self, at_ms: float, op_index: int, node: int, doc: int) -> None:
        """Script client operation `op_index` on node `node`'s doc `doc-{doc}` (skipped if the node is
        down then); `run()` adds `config.ops` operations on random nodes and docs."""
        self._schedule(at_ms, "op", (op_index, node, doc))

    # ------------------------------------------------------------------ driving without run()

    def start_nodes(self) -> None:
        """Start every node but the `late_nodes` (what `run()` does first)."""
        for node in self.nodes[: self.config.nodes - self.config.late_nodes]:
            self._start_node(node)

    def advance(self, until_ms: float, on_event: Callable[[int], None] | None = None) -> None:
        """Handle every scheduled event up to `until_ms` in order, then set the clock to `until_ms`:
        a run driven step by step instead of `run()` (no healing, no checks). `on_event(events)` is
        called before each event; raise from it to stop (an event budget, a wall-clock deadline)."""
        while self._heap and self._heap[0][0] <= until_ms:
            at, _seq, kind, payload = heapq.heappop(self._heap)
            self.now_ms = at
            self.events += 1
            if on_event is not None:
                on_event(self.events)
            self._handle(kind, payload)
        self.now_ms = max(self.now_ms, until_ms)

    def crash(self, index: int) -> None:
        """Crash node `index` now, as a scheduled crash does (not the last live node)."""
        self._handle("crash", index)

    def _start_node(self, node: SimNode) -> None:
        node.incarnation += 1
        replica_config = self.config.replica
        if node.incarnation == 1 and node.index in self.config.wire_pinned_until_restart:
            replica_config = dataclasses.replace(
                replica_config, wire_version_max=self.config.wire_pinned_version
            )
        node.replica = Replica(
            node_id=f"n{node.index}",
            epoch=node.incarnation,
            client_id=self.rng.randrange(1, 1 << 53),
            address=node.address,
            publish_endpoint=node.publish_endpoint,
            config=replica_config,
            lazy_docs=self.config.durable,
            dc=node.dc,
            membership=self.config.membership,
            placement=self.config.placement,
        )
        node.departed = False
        if self.config.durable:
            # Like `Node.start` with a data_dir: register every stored doc from its recorded state
            # and digest before the first tick; docs load on first use and are evicted beyond
            # `docs_cached_max`, through the same code paths as on a real node.
            node.replica.register_docs(
                (record.doc_id, record.state, record.digest) for record in node.store.docs()
            )
            for doc_id in node.replica.loads_requested():  # before serving, as `Node.start` does
                node.replica.doc_loaded(doc_id, self.stores.load_doc(node, doc_id), self.now_ms)
        seeds = self.nodes[:1] if self.config.seed_only else self.nodes
        for other in seeds:
            if other is not node:
                node.replica.add_peer(other.address, self.now_ms)
        node.replica.tick(self.now_ms)
        self._pump(node)

    def _pump(self, node: SimNode) -> int | None:
        """Execute the replica's effects; return the number its last `Persist` got in the durable
        store's `CommitQueue`."""
        replica = node.replica
        if replica is None:
            return None
        persisted: int | None = None
        after_commit_sends: list[tuple[SimNode, bytes]] = []
        for effect in replica.take_effects(self.now_ms):
            match effect:
                case Publish(frame, dc_only, topic_key, audience):
                    for other in self.nodes:
                        subscription = other.subscriptions.get(node.publish_endpoint)
                        if other is node or subscription is None:
                            continue
                        wan, topic_keys = subscription
                        if dc_only and wan:
                            continue
                        if audience == "every" or (
                            (topic_keys is None) == (audience == "whole")
                            and (topic_key is None or topic_keys is None or topic_key in topic_keys)
                        ):
                            self._transmit(node, other, frame)
                case Send(address, frame, after_commit):
                    target = self._by_address.get(address)
                    if target is None:
                        continue
                    if after_commit and self.config.durable:
                        after_commit_sends.append((target, frame))  # numbered once Persist is in
                    else:
                        self._transmit(node, target, frame)
                case Subscribe(endpoint, _peer, wan, topic_keys):
                    node.subscriptions[endpoint] = (wan, topic_keys)
                case Unsubscribe(endpoint):
                    node.subscriptions.pop(endpoint, None)
                case DeliverEphemeral():
                    node.ephemeral_delivered.append(effect)
                case LoadDoc(doc_id):
                    at_ms = self.now_ms + self.rng.uniform(*self.config.load_ms)
                    self._schedule(at_ms, "load", (node.index, node.incarnation, doc_id))
                case Persist(updates, doc_states, drops):
                    if self.config.durable and (updates or doc_states or drops):
                        persisted = self.stores.persist(node, effect)
                    # else: the store is memory, lost on crash
        if after_commit_sends:
            node.sends_after_commit.append((node.commits.submitted, after_commit_sends))
            self.stores.release_sends(node)
            self.stores.start_commit(node)  # waited on: no linger
        deadline = replica.next_deadline_ms()
        if deadline < node.tick_at_ms or node.tick_at_ms <= self.now_ms:
            node.tick_token += 1
            node.tick_at_ms = max(deadline, self.now_ms)
            self._schedule(node.tick_at_ms, "tick", (node.index, node.tick_token))
        return persisted

    def _transmit(self, source: SimNode, target: SimNode, frame: bytes) -> None:
        self.network.transmit(source, target, frame, self.now_ms)

    def _deliver_at(self, at_ms: float, target: SimNode, frame: bytes) -> None:
        self._schedule(at_ms, "deliver", (target.index, target.incarnation, frame))

    # ------------------------------------------------------------------ the run

    def _plan_faults(self) -> None:
        window = self.config.write_window_ms
        if "partition" in self.config.faults and self.config.nodes > 1:
            for _ in range(self.config.partitions):
                start = self.rng.uniform(0.0, window)
                self._schedule(start, "partition")
                self._schedule(min(window, start + self.rng.uniform(*self.config.partition_ms)), "heal")
        if "crash" in self.config.faults and self.config.nodes > 1:
            for _ in range(self.config.crashes):
                start = self.rng.uniform(0.0, window)
                index = self.rng.randrange(self.config.nodes - self.config.late_nodes)
                self._schedule(start, "crash", index)
                self._schedule(
                    min(window, start + self.rng.uniform(*self.config.downtime_ms)), "restart", index
                )
        if "churn" in self.config.faults and self.config.nodes > 2:
            # Graceful leaves and rejoins during the writes: with placement, every one moves docs.
            for _ in range(self.config.churns):
                start = self.rng.uniform(0.0, window)
                index = self.rng.randrange(self.config.nodes - self.config.late_nodes)
                self._schedule(start, "leave", index)
                self._schedule(
                    min(window, start + self.rng.uniform(*self.config.downtime_ms)), "restart", index
                )

    def run(self) -> SimResult:
        config = self.config
        self.start_nodes()
        for op_index in range(config.ops):
            self._schedule(self.rng.uniform(0.0, config.write_window_ms), "op", op_index)
        self._plan_faults()
        self.follows.plan()
        heal_at = config.write_window_ms
        self._schedule(heal_at, "check", "heal")
        converged_at, problems, rounds_at_heal = self._run_to_convergence(heal_at)
        if converged_at is None and not problems:
            problems = self.check() or ["event queue ran dry before the final check"]
        return self._result(converged_at, problems, rounds_at_heal)

    def _run_to_convergence(self, heal_at: float) -> tuple[float | None, list[str], list[int]]:
        """Handle events until a check after healing finds the replicas converged, the settling time
        runs out, the event budget is exhausted or the queue runs dry: (simulated time from healing
        to convergence or None, the last check's problems, each node's anti-entropy rounds at
        healing)."""
        rounds_at_heal = [0] * self.config.nodes
        problems: list[str] = []
        end_ms = heal_at + self.config.settle_ms_max
        while self._heap:
            at, _seq, kind, payload = heapq.heappop(self._heap)
            if at > end_ms:
                break
            self.events += 1
            if self.events > EVENTS_MAX:
                problems.append(f"event budget of {EVENTS_MAX} exhausted at {at:.0f} ms")
                break
            self.now_ms = at
            if kind != "check":
                self._handle(kind, payload)
                continue
            if payload == "heal":
                self._heal_everything()
                rounds_at_heal = self._ae_rounds()
            problems = self.check()
            if not problems:
                return at - heal_at, problems, rounds_at_heal
            self._schedule(at + self.config.check_interval_ms, "check")
        return None, problems, rounds_at_heal

    def _result(
        self, converged_at: float | None, problems: list[str], rounds_at_heal: list[int]
    ) -> SimResult:
        final_state = invariants.final_state(self)
        return SimResult(
            config=self.config,
            ok=converged_at is not None,
            problems=problems if converged_at is None else [],
            converged_after_ms=converged_at,
            ae_rounds_after_heal_max=max(
                (now - then for now, then in zip(self._ae_rounds(), rounds_at_heal, strict=True)), default=0
            ),
            messages_sent=self.network.messages_sent,
            messages_dropped=self.network.messages_dropped,
            messages_duplicated=self.network.messages_duplicated,
            wan_messages=self.network.wan_messages,
            wan_bytes=self.network.wan_bytes,
            writes=len(self.writes),
            writes_lost_to_crashes=invariants.writes_lost_to_crashes(self, final_state),
            writes_acknowledged=len(self.acknowledged),
            crashes=self.crashes,
            partitions=self.network.partitions,
            events=self.events,
            final_state=final_state,
            follow_sessions=self.follows.sessions,
            follows_open_at_end=sum(len(self.follows.open_on(node.index)) for node in self.nodes),
        )

    # ------------------------------------------------------------------ events

    def _handle(self, kind: EventKind, payload: Any) -> None:
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(payload)

    def _on_deliver(self, payload: tuple[int, int, bytes]) -> None:
        index, incarnation, frame = payload
        node = self.nodes[index]
        if node.replica is not None and node.incarnation == incarnation:
            self._step(node, frame)

    def _on_tick(self, payload: tuple[int, int]) -> None:
        index, token = payload
        node = self.nodes[index]
        if node.replica is not None and node.tick_token == token:
            node.tick_at_ms = float("inf")
            self._step(node, None)

    def _on_commit(self, payload: tuple[int, int]) -> None:
        index, group = payload
        self.stores.commit_done(self.nodes[index], group)

    def _on_load(self, payload: tuple[int, int, str]) -> None:
        index, incarnation, doc_id = payload
        node = self.nodes[index]
        if node.replica is not None and node.incarnation == incarnation:
            node.replica.doc_loaded(doc_id, self.stores.load_doc(node, doc_id), self.now_ms)
            self._pump(node)

    def _on_partition(self, payload: dict[int, int] | None) -> None:
        self.network.partition(payload)

    def _on_heal(self, payload: None) -> None:
        self.network.heal()

    def _on_crash(self, index: int) -> None:
        node = self.nodes[index]
        alive = sum(1 for other in self.nodes if other.replica is not None)
        if node.replica is not None and alive > 1:
            self.crashes += 1
            self._stop(node)

    def _on_restart(self, index: int) -> None:
        node = self.nodes[index]
        if node.replica is None:
            self._start_node(node)

    def _on_leave(self, index: int) -> None:
        """A graceful leave: under placement the node first hands its docs to those who hold them
        without it (as `Node.close` does), for at most `leave_drain_ms`."""
        node = self.nodes[index]
        alive = sum(1 for other in self.nodes if other.replica is not None)
        if node.replica is not None and alive > 1:
            if node.replica.leave_hands_off:
                node.replica.drain(self.now_ms)
                self._pump(node)
                self._schedule(
                    self.now_ms,
                    "drained",
                    (index, node.incarnation, self.now_ms + self.config.replica.leave_drain_ms),
                )
            else:
                self._leave_now(node)

    def _on_drained(self, payload: tuple[int, int, float]) -> None:
        index, incarnation, deadline_ms = payload
        node = self.nodes[index]
        if node.replica is None or node.incarnation != incarnation:
            return
        if node.replica.drained() or self.now_ms >= deadline_ms:
            self._leave_now(node)
        else:
            self._schedule(self.now_ms + 50.0, "drained", payload)

    def _leave_now(self, node: SimNode) -> None:
        if node.replica is not None:
            node.replica.leave(self.now_ms)
            self._pump(node)
            self._stop(node)
            node.departed = True

    def _stop(self, node: SimNode) -> None:
        """Take a node down (a crash, or after a graceful leave): like a crash for the checker, what
        it had not replicated may be gone; frames in flight to it are discarded (a new incarnation);
        its store loses what was not committed."""
        assert node.replica is not None
        self.ever_crashed_incarnations.add((node.index, node.incarnation))
        node.replica.close()
        node.replica = None
        node.incarnation += 1  # frames in flight to the old incarnation are discarded
        node.subscriptions.clear()
        self.stores.lose_uncommitted(node)

    def _step(self, node: SimNode, frame: bytes | None) -> None:
        """The replica receives `frame` (None: runs its timers), between the tracer's callbacks; then
        its effects run."""
        replica = node.replica
        assert replica is not None
        step: Step = "tick" if frame is None else "receive"
        if self.tracer is not None:
            self.tracer.before_step(node.index, step)
        if frame is None:
            replica.tick(self.now_ms)
        else:
            replica.receive(frame, self.now_ms)
        if self.tracer is not None:
            self.tracer.after_step(node.index, step)
        self._pump(node)

    def _client_op(self, payload: int | tuple[int, int, int]) -> None:
        """A random node and doc for op `payload`; or the (op, node, doc) given by `schedule_op`."""
        if isinstance(payload, tuple):
            op_index, index, doc_index = payload
            node, doc_id = self.nodes[index], f"doc-{doc_index}"
            if node.replica is None:
                if self.tracer is not None:
                    self.tracer.on_client_op(index, doc_id, op_index, None)
                return
        else:
            op_index = payload
            alive = [node for node in self.nodes if node.replica is not None]
            if not alive:
                return
            node = self.rng.choice(alive)
            doc_id = f"doc-{self.rng.randrange(self.config.docs)}"
        doc = self.open_doc(node.index, doc_id)
        first = len(self.writes)
        writes = self.workload.write(doc, doc_id, node.index, op_index, self.rng)
        for write in writes:
            self.writes.append((write, node.index, node.incarnation))
            if write.shared:
                self.shared_values.setdefault((write.doc_id, write.root, write.key), []).append(write.value)
        if self.tracer is not None:
            self.tracer.on_client_op(node.index, doc_id, op_index, writes)
        # The Persist this pump hands over holds exactly this operation's updates (every other
        # event pumps its own), so the op's writes are acknowledged when that group commits.
        number = self._pump(node)
        if number is not None and len(self.writes) > first:
            node.waiting.append((number, list(range(first, len(self.writes)))))
            self.stores.start_commit(node)  # a client write waits (`Node.flush`): no linger

    def _ae_rounds(self) -> list[int]:
        return [
            node.replica.counters.ae_rounds_completed if node.replica is not None else 0
            for node in self.nodes
        ]

    def _heal_everything(self) -> None:
        self.network.heal()
        self.network.faults_on = False
        for node in self.nodes:
            if node.replica is None and not node.departed:
                self._start_node(node)

    # ------------------------------------------------------------------ invariants

    def materialized(self, index: int) -> dict[str, Any]:
        replica = self.nodes[index].replica
        if replica is None:
            return {}
        return {
            doc_id: self.workload.materialize(self.open_doc(index, doc_id)) for doc_id in replica.doc_ids()
        }

    def pump_node(self, index: int) -> None:
        """Run the effects node `index` has after an outside step (a follow session's open)."""
        self._pump(self.nodes[index])

    def open_doc(self, index: int, doc_id: str, *, pin: bool = False) -> Doc[Any]:
        """Node `index`'s doc as the application gets it (the node must be up): loaded first from the
        durable store when evicted, as `Node.open` does; `pin` keeps it open until released."""
        node = self.nodes[index]
        replica = node.replica
        if replica is None:
            raise RuntimeError(f"node {index} is down")
        if replica.needs_load(doc_id):
            replica.doc_loaded(doc_id, self.stores.load_doc(node, doc_id), self.now_ms)
        return replica.open_doc(doc_id, pin=pin)

    def check(self) -> list[str]:
        """Invariants of DESIGN.md: convergence by canonical digest and by JSON; no lost write (see
        `crdtsync.sim.invariants`)."""
        return invariants.check(self)


def run_simulation(config: SimConfig, workload: Workload | None = None) -> SimResult:
    return SimCluster(config, workload).run()


def run_campaign(
    configs: list[SimConfig],
    workload_factory: Callable[[], Workload] | None = None,
    on_result: Callable[[SimResult], None] | None = None,
) -> list[SimResult]:
    results = []
    for config in configs:
        result = run_simulation(config, workload_factory() if workload_factory else None)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
