"""A received delta is applied before what its frame tells of the sender is recorded (liveness, the
link's wire version, the traffic with its datacenter: `Gossip.heard_frame`), and that is still
recorded."""

from __future__ import annotations

from typing import Any

from pycrdt import Map
from test_replica import Mesh

from crdtsync.core.effects import Publish
from crdtsync.core.replica import Replica, ReplicaConfig

LINKED_MS = 2_000.0
"""Time for hellos, subscriptions and the first heartbeats of a linked pair."""
SUSPECT_WAIT_STEPS_MAX = 200
"""50 ms steps waited at most for a silent peer to become suspect."""


def _data(replica: Replica) -> Map[Any]:
    data: Map[Any] = replica.open_doc("doc").get("data", type=Map)
    return data


def test_a_delta_frame_is_evidence_of_life_after_its_apply() -> None:
    """A peer gone suspect is alive again with its first delta frame, which is applied too."""
    config = ReplicaConfig(heartbeat_interval_ms=200.0, hello_interval_ms=200.0)
    mesh = Mesh()
    a, b = mesh.add("a", config=config), mesh.add("b", config=config)
    mesh.link_all()
    mesh.advance(LINKED_MS)
    mesh.drop = lambda hop: hop.source == b.address
    for _ in range(SUSPECT_WAIT_STEPS_MAX):
        if [p.state for p in a.status(mesh.now_ms).peers] == ["suspect"]:
            break
        mesh.advance(50.0)
    assert [p.state for p in a.status(mesh.now_ms).peers] == ["suspect"]
    _data(b)["k"] = 1
    frames = [e.frame for e in b.take_effects(mesh.now_ms) if isinstance(e, Publish)]
    assert len(frames) == 1
    content_when_heard: list[Any] = []
    heard_frame = a._gossip.heard_frame

    def spy(node_id: str, version: int, frame_bytes: int) -> None:
        content_when_heard.append(_data(a).to_py())
        heard_frame(node_id, version, frame_bytes)

    a._gossip.heard_frame = spy  # type: ignore[method-assign]
    a.receive(frames[0], mesh.now_ms)
    assert content_when_heard == [{"k": 1.0}], "applied before the sender's news was recorded"
    assert [p.state for p in a.status(mesh.now_ms).peers] == ["alive"]
