"""The simulator's tracer hook: what it is told, and that it changes nothing about a run."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from pycrdt import Doc, Map

from crdtsync.sim import SimCluster, SimConfig, SimTracer, Write


class OneKey:
    """One Map set per operation."""

    def write(
        self, doc: Doc[Any], doc_id: str, node_index: int, op_index: int, rng: random.Random
    ) -> list[Write]:
        doc.get("data", type=Map)[f"w{op_index}"] = op_index
        return [Write(doc_id, "data", f"w{op_index}", op_index, shared=False)]

    def materialize(self, doc: Doc[Any]) -> Any:
        return doc.get("data", type=Map).to_py()


class Recorder(SimTracer):
    def __init__(self) -> None:
        self.frames: list[tuple[int, int, int, bool]] = []
        self.ops: list[tuple[int, str, int, int | None]] = []
        self.steps: list[tuple[str, int, str]] = []

    def on_frame(self, source: int, target: int, frame: bytes, wan: bool) -> None:
        self.frames.append((source, target, len(frame), wan))

    def on_client_op(self, node: int, doc_id: str, op_index: int, writes: Sequence[Write] | None) -> None:
        self.ops.append((node, doc_id, op_index, None if writes is None else len(writes)))

    def before_step(self, node: int, step: str) -> None:
        self.steps.append(("before", node, step))

    def after_step(self, node: int, step: str) -> None:
        self.steps.append(("after", node, step))


def config(seed: int) -> SimConfig:
    return SimConfig(seed=seed, nodes=4, docs=2, ops=60, faults=frozenset({"loss", "crash"}), datacenters=2)


def test_a_traced_run_is_the_same_run_and_the_tracer_sees_every_frame_op_and_step() -> None:
    plain = SimCluster(config(11)).run()
    recorder = Recorder()
    traced = SimCluster(config(11), tracer=recorder).run()
    assert traced.ok and plain.ok
    assert traced.final_state == plain.final_state
    assert (traced.messages_sent, traced.events, traced.writes) == (
        plain.messages_sent,
        plain.events,
        plain.writes,
    )
    assert len(recorder.frames) == traced.messages_sent
    assert sum(1 for *_rest, wan in recorder.frames if wan) == traced.wan_messages
    assert sum(count or 0 for *_rest, count in recorder.ops) == traced.writes
    assert {step for _when, _node, step in recorder.steps} == {"receive", "tick"}
    befores = recorder.steps[0::2]
    afters = recorder.steps[1::2]
    assert all(b[0] == "before" and a == ("after", b[1], b[2]) for b, a in zip(befores, afters, strict=True))


def test_scheduled_ops_and_step_by_step_driving() -> None:
    recorder = Recorder()
    cluster = SimCluster(SimConfig(seed=3, nodes=3, docs=2, ops=0), OneKey(), tracer=recorder)
    cluster.schedule_op(100.0, 0, node=1, doc=1)
    cluster.schedule_op(300.0, 1, node=2, doc=0)
    cluster.start_nodes()
    cluster.advance(200.0)
    assert cluster.now_ms == 200.0
    assert recorder.ops == [(1, "doc-1", 0, 1)]
    cluster.crash(2)
    events: list[int] = []
    cluster.advance(5_000.0, events.append)
    assert events and events == sorted(events)
    assert recorder.ops[1] == (2, "doc-0", 1, None), "an op on a node that is down is skipped"
    assert cluster.materialized(0)["doc-1"] == cluster.materialized(1)["doc-1"] == {"w0": 0}
