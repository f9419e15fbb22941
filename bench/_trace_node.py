"""A child process of `bench.trace`: the floor (a bare pycrdt Doc), the writer (a `crdtsync.Node` the
trace is replayed into) or the receiver (a `crdtsync.Node` in another process).

    python -m bench._trace_node floor --edits N
    python -m bench._trace_node writer|receiver --edits N --listen tcp://127.0.0.1:P --peer ADDR
        --data-dir DIR [--profile OUT]

Commands (parent -> child) and replies:

- ``replay`` (floor, writer) -> ``replayed {t0_ns, t1_ns, cpu_s, sha, updates, update_bytes}``: the
  trace replayed, one transaction per edit; the writer's window ends when `flush()` returns (the
  store holds every edit at the default durability, fsync).
- ``expect {length, sha}`` (receiver) -> ``expecting``, then ``done {t_ns, sha}`` once the text is that.
- ``stats`` -> ``stats {user_s, sys_s, threads, counters}`` (`threads`: CPU seconds by thread name);
  ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import time
from typing import Any

from pycrdt import Doc, Text, TransactionEvent

from bench._child import emit, read_commands, run_main
from bench._common import JSON, self_cpu_s, thread_cpu_s
from bench._crdtsync import wait_peers_up
from bench._trace_data import Trace, load_trace, replay
from crdtsync import Node, NodeConfig

DOC_ID = "paper"
TEXT_NAME = "text"


def _sha(text: Text) -> str:
    return hashlib.sha256(str(text).encode()).hexdigest()


class FinalTextWatch:
    """Says `done` once the text is the expected one. The doc's observer only schedules the check:
    reading the text inside pycrdt's callback is not allowed, and one check per event-loop turn is
    enough."""

    def __init__(self, doc: Doc[Any], text: Text) -> None:
        self._text = text
        self._loop = asyncio.get_running_loop()
        self._length = -1
        self._sha = ""
        self._scheduled = False
        self._subscription = doc.observe(self._on_transaction)

    def expect(self, length: int, sha: str) -> None:
        self._length, self._sha = length, sha
        emit("expecting")
        self._check()

    def _on_transaction(self, _event: TransactionEvent) -> None:
        if self._length >= 0 and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._check)

    def _check(self) -> None:
        self._scheduled = False
        # ASCII only: the byte length pycrdt counts is the character count.
        if self._length >= 0 and len(self._text) == self._length and _sha(self._text) == self._sha:
            self._length = -1
            emit("done", t_ns=time.monotonic_ns(), sha=self._sha)


def _emit_stats(node: Node | None) -> None:
    user_s, sys_s = self_cpu_s()
    counters = {} if node is None else {str(k): int(v) for k, v in node.status().counters.as_dict().items()}
    emit("stats", user_s=user_s, sys_s=sys_s, threads=thread_cpu_s(), counters=counters)


async def _replay_measured(text: Text, trace: Trace, profile_path: str | None, node: Node | None) -> JSON:
    profiler = cProfile.Profile() if profile_path else None
    cpu0 = sum(self_cpu_s())
    t0 = time.monotonic_ns()
    if profiler is not None:
        profiler.enable()
    await replay(text, trace.edits)
    if node is not None:
        await node.flush()
    if profiler is not None:
        profiler.disable()
    t1 = time.monotonic_ns()
    cpu_s = sum(self_cpu_s()) - cpu0
    if profiler is not None and profile_path:
        profiler.dump_stats(profile_path)
    sha = _sha(text)
    if sha != trace.end_sha:
        raise RuntimeError(f"the replayed text differs from the trace's end content ({len(text)} bytes)")
    return {"t0_ns": t0, "t1_ns": t1, "cpu_s": cpu_s, "sha": sha}


async def floor(edits_max: int) -> None:
    """The trace into a bare Doc with an observer collecting every update, as a transport would."""
    trace = load_trace(edits_max)
    doc: Doc[Any] = Doc()
    text = doc.get(TEXT_NAME, type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    emit("ready")
    async for cmd in read_commands():
        name = cmd.get("cmd")
        if name == "quit":
            return
        if name == "replay":
            measured = await _replay_measured(text, trace, None, None)
            emit("replayed", **measured, updates=len(updates), update_bytes=sum(map(len, updates)))
        elif name == "stats":
            _emit_stats(None)
        else:
            emit("error", msg=f"unknown command {name!r}")


async def node(role: str, args: argparse.Namespace) -> None:
    trace = load_trace(args.edits)  # before the node starts: parsing it is no part of any window
    config = NodeConfig(node_id=role, listen=args.listen, peers=[args.peer], data_dir=args.data_dir)
    async with Node(config) as running:
        doc = await running.open(DOC_ID)
        text = doc.get(TEXT_NAME, type=Text)
        watch = FinalTextWatch(doc, text) if role == "receiver" else None
        await wait_peers_up(running, 1)
        emit("ready")
        async for cmd in read_commands():
            name = cmd.get("cmd")
            if name == "quit":
                return
            if name == "replay" and role == "writer":
                emit("replayed", **await _replay_measured(text, trace, args.profile, running))
            elif name == "expect" and watch is not None:
                watch.expect(int(cmd["length"]), str(cmd["sha"]))
            elif name == "stats":
                _emit_stats(running)
            else:
                emit("error", msg=f"unknown command {name!r} for the {role}")


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._trace_node")
    parser.add_argument("role", choices=("floor", "writer", "receiver"))
    parser.add_argument("--edits", type=int, required=True)
    parser.add_argument("--listen")
    parser.add_argument("--peer")
    parser.add_argument("--data-dir")
    parser.add_argument("--profile", help="cProfile the writer's replay (main thread) into this file")
    args = parser.parse_args()
    if args.role == "floor":
        await floor(args.edits)
    else:
        await node(args.role, args)


if __name__ == "__main__":
    run_main(main)
