"""One crdtsync ``Node`` with a placement rule, for ``bench.placement_cost``.

Usage (started by bench.placement_cost):
    python -m bench._placement_node --node-id N --dc DC --listen tcp://127.0.0.1:P --peers A,B
        --rf 2|all --data-dir DIR [--wait-peers K]

With ``BENCH_PLACEMENT_PROFILE_DIR`` set, the process can run under cProfile, timed by its main
thread's CPU time (the store's commit thread is not in it), between ``profile {on: true}`` and
``profile {on: false}``, and writes ``<dir>/<node id>.prof`` when told to quit.

The node reports ``ready`` once ``--wait-peers`` other members (default: as many as configured peers)
are alive.
Commands, besides ``stats`` and ``quit`` (``bench._child.serve``):

- ``write_docs {ids, rate_hz, batch, forward}``: one single-key write (``data["v"] = index``) to each
  doc of ``ids``, in order, ``rate_hz`` writes per second, ``batch`` writes between flushes; a write
  counts as acknowledged once the flush after it returned (durable on this node); with ``forward``,
  a doc this node does not hold is written by its nearest holder instead (``node.forwarding``, as the
  daemon forwards an HTTP write), acknowledged once the holder answers -> ``wrote {acked, s}``
- ``status`` -> ``status {docs, hinted, relay, alive, cpu_s, cpu_main_s, at, counters, frame_kinds}``
  (``frame_kinds``: frames received, published and sent so far by message kind, ``FrameKinds``)
- ``profile {on}``: start or stop profiling (with ``BENCH_PLACEMENT_PROFILE_DIR``) -> ``profiled``
- ``held {ids, verify}`` -> ``held {held, have, verified}``: how many of ``ids`` this node holds by
  placement, how many of those it has, and (``verify``) how many of those show their write.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pycrdt import Map

from bench._child import detached_map, emit, run_main, serve
from bench._common import JSON, self_cpu_s
from bench._crdtsync import NodeAdapter
from crdtsync import Node, NodeConfig
from crdtsync.core import wire
from crdtsync.core.forward import ForwardRequest
from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.forwarding import ForwardAsk, Served

DATA = "data"
VALUE_KEY = "v"
PEERS_UP_TIMEOUT_S = 120.0
FORWARD_TIMEOUT_MS = 2000.0
PROFILE_ENV = "BENCH_PLACEMENT_PROFILE_DIR"
"""When set, each node profiles itself (cProfile) and writes DIR/<node id>.prof at exit."""


class FrameKinds:
    """Frames this node received, published and sent, by message kind (and a publish's audience):
    what the cost part's frames per write are made of. Reading a frame's kind costs a byte lookup."""

    def __init__(self, node: Node) -> None:
        self.received: dict[str, int] = {}
        self.published: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        replica, transport = node._replica, node._transport
        assert transport is not None
        receive, publish, send = replica.receive, transport.publish, transport.send

        def counted_receive(frame: bytes, now_ms: float, *, sender_key: str | None = None) -> None:
            _count(self.received, _kind_of(frame))
            receive(frame, now_ms, sender_key=sender_key)

        def counted_publish(frame: bytes, **how: Any) -> None:
            _count(self.published, f"{_kind_of(frame)}/{how.get('audience', 'every')}")
            publish(frame, **how)

        def counted_send(address: str, frame: bytes) -> None:
            _count(self.sent, _kind_of(frame))
            send(address, frame)

        setattr(replica, "receive", counted_receive)  # noqa: B010 (an instance attribute shadows the method)
        setattr(transport, "publish", counted_publish)  # noqa: B010
        setattr(transport, "send", counted_send)  # noqa: B010

    def as_json(self) -> JSON:
        return {"received": self.received, "published": self.published, "sent": self.sent}


_KIND_NAMES = {int(kind): kind.name for kind in wire.MessageKind}
KIND_OFFSET = 3
"""Where every envelope version has its kind byte (after the magic and the version)."""


def _kind_of(frame: bytes) -> str:
    """The frame's message kind, read from its kind byte alone: cheap enough to count every frame
    (parsing the header and an enum per frame cost about 1% of the cluster's CPU)."""
    if len(frame) <= KIND_OFFSET or frame[:2] != wire.MAGIC:
        return "malformed"
    return _KIND_NAMES.get(frame[KIND_OFFSET], "malformed")


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) of each thread of this process, by name: the Python name where
    the thread is a Python one (the event loop is ``MainThread``, the store's ``crdtsync-store_0``),
    else the kernel's (ZeroMQ's ``ZMQbg/...``); threads of one name summed."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat", encoding="ascii") as stat:
                text = stat.read()
        except OSError:
            continue  # the thread ended
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        name = names.get(int(task), comm)
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks_per_s
    return out


def write_index(doc_id: str) -> int:
    """The value written to a cost-part doc: the number at the end of its id."""
    return int(doc_id.rsplit("/", 1)[-1])


async def _write_docs(node: Node, cmd: JSON) -> None:
    ids = [str(i) for i in cmd["ids"]]
    period_s = 1.0 / float(cmd["rate_hz"])
    batch = max(1, int(cmd.get("batch", 1)))
    forward = bool(cmd.get("forward", False))
    started = time.monotonic()
    acked = 0
    done = 0
    while done < len(ids):
        due = min(len(ids), int((time.monotonic() - started) / period_s) + 1)
        if due <= done:
            await asyncio.sleep(period_s * (done + 1) - (time.monotonic() - started))
            continue
        forwarded = []
        for doc_id in ids[done : min(due, done + batch)]:
            if forward and not node.holds(doc_id):
                forwarded.append(_forwarded_write(node, doc_id))
            else:
                await _write_here(node, doc_id)
            done += 1
        await asyncio.gather(node.flush(), *forwarded)
        acked = done
    emit("wrote", acked=acked, s=time.monotonic() - started)


async def _write_here(node: Node, doc_id: str) -> None:
    """Opened only to write, as the daemon opens a doc for a write: not counted as a read (adaptive
    replication's load), which would put every written doc in the load gossip."""
    doc = await node.open(doc_id, read=False)
    doc.get(DATA, type=Map)[VALUE_KEY] = write_index(doc_id)
    node.release(doc_id)


async def _forwarded_write(node: Node, doc_id: str) -> None:
    """The write of a doc this node does not hold, served by its nearest holder as the daemon
    forwards an HTTP write (`node.forwarding`); taken here when no holder answers, as there."""
    ask = ForwardAsk("PUT", f"/{doc_id}", "", b"")
    if await node.forwarding.forward(doc_id, ask, read=False, timeout_ms=FORWARD_TIMEOUT_MS) is None:
        await _write_here(node, doc_id)
        await node.flush()


def _serve_forwarded(node: Node) -> Callable[[ForwardRequest], Awaitable[Served]]:
    async def serve(request: ForwardRequest) -> Served:
        await _write_here(node, request.target[1:])
        await node.flush()  # answered once durable here, as the daemon answers a write
        return Served(200, "", "holder", b"")

    return serve


async def _status(node: Node, cmd: JSON, kinds: FrameKinds) -> None:
    status = node.status()
    user_s, sys_s = self_cpu_s()
    emit(
        "status",
        docs=status.docs,
        hinted=status.hinted_docs,
        relay=status.relay,
        alive=sum(1 for m in status.members if m.state == "alive"),
        cpu_s=user_s + sys_s,
        cpu_main_s=time.thread_time(),  # this (event loop) thread; the rest: store commits, ZeroMQ I/O
        at=time.monotonic(),  # CLOCK_MONOTONIC, shared by the processes of one machine
        counters=status.counters.as_dict(),
        frame_kinds=kinds.as_json(),
        thread_cpu_s=thread_cpu_s(),
    )


async def _held(node: Node, cmd: JSON) -> None:
    ids = [str(i) for i in cmd["ids"]]
    verify = bool(cmd.get("verify", False))
    held = have = verified = 0
    for position, doc_id in enumerate(ids):
        if not node.holds(doc_id):
            continue
        held += 1
        if not node.has_doc(doc_id):
            continue
        have += 1
        if verify:
            doc = await node.open(doc_id)
            if doc.get(DATA, type=Map).get(VALUE_KEY) == write_index(doc_id):
                verified += 1
            node.release(doc_id)
        if position % 1000 == 999:
            await asyncio.sleep(0)  # keep the node's timers and links served
    emit("held", held=held, have=have, verified=verified)


def _rule(text: str) -> PlacementRule:
    return PlacementRule("all") if text == "all" else PlacementRule(int(text))


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._placement_node")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--dc", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--peers", required=True, help="comma-separated listen addresses of the other nodes")
    parser.add_argument("--rf", required=True, help="replicas per datacenter, or all")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--wait-peers", type=int, default=-1)
    args = parser.parse_args()
    peers = [p for p in str(args.peers).split(",") if p]
    config = NodeConfig(
        node_id=str(args.node_id),
        listen=str(args.listen),
        peers=peers,
        dc=str(args.dc),
        data_dir=str(args.data_dir),
        placement=PlacementPolicy((_rule(str(args.rf)),)),
    )
    wanted = len(peers) if args.wait_peers < 0 else int(args.wait_peers)
    profile_dir = os.environ.get(PROFILE_ENV)
    # CPU time, not wall time: a send that releases the GIL waits to get it back (up to the switch
    # interval) while the store's thread runs, and wall time would charge that wait to the send.
    profiler = cProfile.Profile(time.thread_time) if profile_dir else None

    async def profile(_node: Node, cmd: JSON) -> None:
        if profiler is not None:
            if cmd["on"]:
                profiler.enable()
            else:
                profiler.disable()
        emit("profiled")

    def dump() -> None:
        if profiler is not None and profile_dir:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile_dir, f"{args.node_id}.prof"))

    await _run(config, wanted, dump, profile)


async def _run(
    config: NodeConfig,
    wanted: int,
    before_close: Callable[[], None],
    profile: Callable[[Node, JSON], Awaitable[None]],
) -> None:
    async with Node(config) as node:
        give_up_at = time.monotonic() + PEERS_UP_TIMEOUT_S
        while sum(1 for m in node.status().members if m.state == "alive") < wanted:
            if time.monotonic() > give_up_at:
                raise TimeoutError(f"fewer than {wanted} peers alive after {PEERS_UP_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.05)
        node.forwarding.handler = _serve_forwarded(node)
        kinds = FrameKinds(node)
        emit("ready", docs=node.status().docs)
        commands: dict[str, Any] = {
            "write_docs": _write_docs,
            "status": lambda node, cmd: _status(node, cmd, kinds),
            "held": _held,
            "profile": profile,
        }
        await serve(NodeAdapter(node, detached_map(DATA), commands), receiver=False)
        before_close()  # the profile, written before the node leaves (its drain may be cut short)


if __name__ == "__main__":
    run_main(main)
