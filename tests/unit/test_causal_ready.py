"""The causal buffer's direct apply: a delta whose dependencies the doc covers, of a doc with nothing
waiting, is applied without being buffered; everything else goes the buffered way and still ends
applied once, in causal order, or refused."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Map, Text

from crdtsync.core import wire
from crdtsync.core.causal import CausalBuffer, PendingDelta
from crdtsync.core.docs import DocEntry
from crdtsync.core.effects import Publish
from crdtsync.core.outbound import MERGED_DELTAS_MAX
from crdtsync.core.replica import Replica


def _replica(name: str, client_id: int) -> Replica:
    return Replica(
        node_id=name,
        epoch=1,
        client_id=client_id,
        address=f"tcp://{name}:1",
        publish_endpoint=f"tcp://{name}:2",
    )


def _published(replica: Replica, now_ms: float) -> list[bytes]:
    """The frames `replica` publishes now (its local writes since the last call)."""
    return [e.frame for e in replica.take_effects(now_ms, force=True) if isinstance(e, Publish)]


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The doc id of every delta that entered a causal buffer."""
    doc_ids: list[str] = []
    hold = CausalBuffer._hold

    def recording(self: CausalBuffer, entry: DocEntry, pending: PendingDelta) -> bool:
        doc_ids.append(pending.delta.doc_id)
        return hold(self, entry, pending)

    monkeypatch.setattr(CausalBuffer, "_hold", recording)
    return doc_ids


def _data(replica: Replica, doc_id: str = "doc") -> dict[str, Any]:
    return replica.open_doc(doc_id).get("data", type=Map).to_py() or {}


def test_a_ready_delta_is_applied_without_entering_the_buffer(held: list[str]) -> None:
    a, b = _replica("a", 11), _replica("b", 22)
    data = a.open_doc("doc").get("data", type=Map)
    for value in range(3):
        data["x"] = value
        for frame in _published(a, 1.0 + value):
            b.receive(frame, 2.0 + value)
        assert _data(b) == {"x": float(value)}
    assert held == []
    assert b.counters.deltas_applied == 3
    assert b.status(10.0).pending_updates == 0
    assert b.doc_digest("doc") == a.doc_digest("doc")


def test_a_delta_for_a_doc_never_seen_is_created_and_applied_directly(held: list[str]) -> None:
    a, b = _replica("a", 11), _replica("b", 22)
    a.open_doc("new-doc").get("data", type=Map)["k"] = "v"
    for frame in _published(a, 1.0):
        b.receive(frame, 2.0)
    assert held == []
    assert b.has_doc("new-doc")
    assert _data(b, "new-doc") == {"k": "v"}


def _tracked(a: Replica, b: Replica) -> None:
    """b tracks a's stream from a first delta on (a track starts at the first number it sees)."""
    a.open_doc("other").get("data", type=Map)["first"] = 1
    for frame in _published(a, 0.5):
        b.receive(frame, 0.5)


def _one_then_two(a: Replica, b: Replica) -> tuple[list[bytes], list[bytes]]:
    """The frames of two text writes of a to "doc", the second depending on the first, with b
    tracking a's stream."""
    _tracked(a, b)
    text = a.open_doc("doc").get("text", type=Text)
    text.insert(0, "one")
    first = _published(a, 1.0)
    text.insert(3, " two")
    return first, _published(a, 2.0)


def test_a_delta_ahead_of_its_dependency_waits_and_is_applied_after_it(held: list[str]) -> None:
    a, b = _replica("a", 11), _replica("b", 22)
    first, second = _one_then_two(a, b)
    for frame in second:
        b.receive(frame, 3.0)
    assert held == ["doc"], "not covered: buffered"
    assert b.status(3.0).pending_updates == 1
    assert str(b.open_doc("doc").get("text", type=Text)) == ""
    for frame in first:
        b.receive(frame, 4.0)
    assert held == ["doc", "doc"], "a delta waits for the doc: the buffered way, which releases it"
    assert b.status(4.0).pending_updates == 0
    assert str(b.open_doc("doc").get("text", type=Text)) == "one two"
    assert b.counters.deltas_applied == 3
    assert b.doc_digest("doc") == a.doc_digest("doc")


def test_a_ready_delta_behind_a_waiting_one_goes_through_the_buffer(held: list[str]) -> None:
    a, b, c = _replica("a", 11), _replica("b", 22), _replica("c", 33)
    first, second = _one_then_two(a, b)
    c.open_doc("doc").get("data", type=Map)["c"] = 1  # concurrent, depends on nothing of a's
    from_c = _published(c, 2.0)
    for frame in (*second, *from_c):
        b.receive(frame, 3.0)
    assert held == ["doc", "doc"], "the doc has a delta waiting: the next one queues behind it"
    assert _data(b) == {"c": 1.0}, "but it was applied, being ready"
    assert b.status(3.0).pending_updates == 1
    for frame in first:
        b.receive(frame, 4.0)
    assert b.status(4.0).pending_updates == 0
    assert str(b.open_doc("doc").get("text", type=Text)) == "one two"


def test_a_delta_the_doc_already_holds_is_counted_as_a_duplicate_and_not_applied(held: list[str]) -> None:
    a, b = _replica("a", 11), _replica("b", 22)
    a.open_doc("doc").get("data", type=Map)["x"] = 1
    frames = _published(a, 1.0)
    b.load_update("doc", a.open_doc("doc").get_update())  # the same content, another way
    for frame in frames:
        b.receive(frame, 2.0)
    assert held == ["doc"], "covered already: the buffered way, which counts it"
    assert b.counters.deltas_duplicate_state == 1
    assert b.counters.deltas_applied == 0
    assert b.status(2.0).pending_updates == 0


def test_two_deltas_of_one_doc_in_a_frame_are_both_applied_in_order(held: list[str]) -> None:
    a, b = _replica("a", 11), _replica("b", 22)
    text = a.open_doc("doc").get("text", type=Text)
    words = [f"{n} " for n in range(MERGED_DELTAS_MAX + 1)]
    for word in words:  # one batch: one delta of as many transactions as merge, and one more
        text.insert(len(text), word)
    frames = _published(a, 1.0)
    assert len(frames) == 1
    message = wire.decode(frames[0])
    assert isinstance(message, wire.Deltas)
    assert len(message.deltas) == 2
    for frame in frames:
        b.receive(frame, 2.0)
    assert held == ["doc"], "the first directly, the second after it through the buffer"
    assert str(b.open_doc("doc").get("text", type=Text)) == "".join(words)
    assert b.counters.deltas_applied == 2
    assert b.status(2.0).pending_updates == 0


def test_a_hostile_update_in_a_well_formed_frame_is_refused_before_any_apply(held: list[str]) -> None:
    b = _replica("b", 22)
    # A GC range of length 0: parses, and pycrdt 0.14 would integrate it (`update_check`).
    hostile = bytes([1, 1, 11, 0, 0, 0, 0])
    frame = wire.encode(wire.Deltas("a", 1, 1, (wire.Delta("doc", b"", b"", hostile),)))
    b.receive(frame, 1.0)
    assert held == []
    assert b.counters.deltas_applied == 0
    assert b.counters.updates_rejected == 1
    assert b.status(1.0).pending_updates == 0
    assert not b.has_doc("doc") or b.doc_is_empty("doc")
