"""Docs a node has and does not hold. Hints (writes it took for such docs) are bounded without
losing a write: past `hint_bytes_max` of unconfirmed hinted writes, writes to docs the node does not
hold are refused before they are applied; a hint no holder confirmed within `hint_window_ms` is
counted overdue and kept; a holder's confirmation ends both. A doc held open there (a follower)
keeps up with its holder even when fetches or deltas are lost."""

from __future__ import annotations

from pycrdt import Map
from test_replica import Hop, Mesh

from crdtsync.core import wire
from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import Replica, ReplicaConfig

RF1 = PlacementPolicy((PlacementRule(1),))
HINTS = ReplicaConfig(hint_bytes_max=2_000, hint_window_ms=5_000.0, handoff_grace_ms=2_000.0)


def _pair() -> tuple[Mesh, Replica, Replica]:
    mesh = Mesh()
    a = mesh.add("a", config=HINTS, placement=RF1)
    b = mesh.add("b", config=HINTS, placement=RF1)
    mesh.link_all()
    return mesh, a, b


def _cut_off_holders(mesh: Mesh) -> None:
    """b gets neither a's deltas nor its offers: nothing a hints is confirmed."""

    def lost(hop: Hop) -> bool:
        return hop.kind in (
            wire.MessageKind.DELTAS,
            wire.MessageKind.HANDOFF_OFFER,
            wire.MessageKind.SYNC_REQUEST,
        )

    mesh.drop = lost


def test_writes_to_docs_not_held_are_refused_past_hint_bytes_max_and_accepted_again_once_confirmed() -> None:
    mesh, a, b = _pair()
    not_held = [doc_id for doc_id in (f"doc-{i}" for i in range(40)) if b.holds(doc_id)]
    held = next(doc_id for doc_id in (f"doc-{i}" for i in range(40)) if a.holds(doc_id))
    _cut_off_holders(mesh)
    written: list[str] = []
    for doc_id in not_held:
        if a.refuse_write(doc_id, mesh.now_ms):
            break
        a.open_doc(doc_id).get("m", type=Map)["k"] = "x" * 300  # about 320 bytes
        written.append(doc_id)
        mesh.advance(10.0)
    status = a.status(mesh.now_ms)
    assert 2_000 <= status.hinted_bytes < 2_000 + 400, status.hinted_bytes
    assert len(written) == status.hinted_docs < len(not_held), "writes stopped at the cap"
    refused = a.counters.writes_refused_hints_full
    assert refused == 1
    assert a.refuse_write(not_held[0], mesh.now_ms), "a doc already hinted is refused too"
    assert not a.refuse_write(held, mesh.now_ms), "a write to a doc this node holds is never refused"
    assert a.counters.writes_refused_hints_full == refused + 1

    mesh.drop = lambda hop: False
    mesh.advance(3_000.0)  # offers reach b, which confirms
    assert a.status(mesh.now_ms).hinted_bytes == 0, "confirmed hints no longer count against the cap"
    assert not a.refuse_write(not_held[-1], mesh.now_ms)
    for doc_id in written:
        assert b.open_doc(doc_id).get("m", type=Map)["k"] == "x" * 300, (
            "every accepted write reached its holder"
        )


def test_a_hint_no_holder_confirms_within_the_window_is_counted_overdue_and_kept() -> None:
    mesh, a, b = _pair()
    doc_id = next(doc_id for doc_id in (f"doc-{i}" for i in range(40)) if b.holds(doc_id))
    _cut_off_holders(mesh)
    a.open_doc(doc_id).get("m", type=Map)["k"] = "only here"
    mesh.advance(4_000.0)
    assert a.status(mesh.now_ms).hints_overdue == 0, "within the window"
    mesh.advance(3_000.0)
    status = a.status(mesh.now_ms)
    assert status.hints_overdue == 1 and a.counters.hints_overdue == 1
    mesh.advance(20_000.0)
    assert a.counters.hints_overdue == 1, "counted once"
    assert a.has_doc(doc_id) and a.status(mesh.now_ms).hinted_docs == 1, "an overdue hint is kept"

    mesh.drop = lambda hop: False
    mesh.advance(10_000.0)  # confirmed, then dropped after the grace
    status = a.status(mesh.now_ms)
    assert status.hints_overdue == 0 and status.hinted_docs == 0
    assert not a.has_doc(doc_id)
    assert b.open_doc(doc_id).get("m", type=Map)["k"] == "only here"


def test_a_doc_open_on_a_non_holder_is_fetched_again_when_its_fetches_were_lost() -> None:
    """`Node.open` of a doc this node does not hold fetches it from a holder; when that fetch and the
    one at the follow subscription are lost, the open doc is fetched again after
    `follower_fetch_timeout_ms` instead of staying empty until the doc's next write."""
    mesh, a, b = _pair()
    doc_id = next(doc_id for doc_id in (f"doc-{i}" for i in range(40)) if b.holds(doc_id))
    b.open_doc(doc_id).get("m", type=Map)["k"] = "on the holder"
    mesh.advance(200.0)
    fetches_lost = True

    def lost(hop: Hop) -> bool:
        return fetches_lost and hop.kind in (wire.MessageKind.SYNC_REQUEST, wire.MessageKind.SYNC_RESPONSE)

    mesh.drop = lost
    a.open_doc(doc_id, pin=True)
    assert a.fetch_doc(doc_id, mesh.now_ms)
    mesh.advance(1_500.0)  # past follow_subscribe_after_ms: its fetch is lost too
    assert a.doc_is_empty(doc_id)
    fetches_lost = False
    mesh.advance(HINTS.follower_fetch_timeout_ms + 2 * HINTS.handoff_interval_ms)
    assert a.open_doc(doc_id).get("m", type=Map)["k"] == "on the holder"
    assert not a.fetch_pending(doc_id)


def test_a_follower_gets_a_deletion_whose_delta_it_lost() -> None:
    """A deletion leaves the state vector as it was, so a follower that lost the delta of one (say
    relayed from another datacenter: no sequence numbers, repaired among holders only) cannot see the
    difference in its holder's answers: it pulls at each check, and the pull carries the deletion."""
    mesh, a, b = _pair()
    doc_id = next(doc_id for doc_id in (f"doc-{i}" for i in range(40)) if b.holds(doc_id))
    b.open_doc(doc_id).get("m", type=Map)["k"] = "soon deleted"
    mesh.advance(200.0)
    a.open_doc(doc_id, pin=True)
    a.fetch_doc(doc_id, mesh.now_ms)
    mesh.advance(2_000.0)
    assert "k" in a.open_doc(doc_id).get("m", type=Map)

    def deltas_to_a_lost(hop: Hop) -> bool:
        return hop.target == a.address and hop.kind in (
            wire.MessageKind.DELTAS,
            wire.MessageKind.RETRANSMIT_GONE,
        )

    mesh.drop = deltas_to_a_lost
    del b.open_doc(doc_id).get("m", type=Map)["k"]
    mesh.advance(2 * HINTS.ae_interval_ms + 2 * HINTS.handoff_grace_ms)
    assert a.open_doc(doc_id).get("m", type=Map).to_py() == {}


def test_a_doc_open_while_its_holder_had_nothing_gets_what_the_holder_has_later() -> None:
    """Opened on a non-holder before its first write: the fetch finds nothing, and an empty doc has
    nothing to offer (so no answer to act on); it is pulled at each check instead, and gets the
    write whose delta it lost."""
    mesh, a, b = _pair()
    doc_id = next(doc_id for doc_id in (f"doc-{i}" for i in range(40)) if b.holds(doc_id))
    a.open_doc(doc_id, pin=True)
    a.fetch_doc(doc_id, mesh.now_ms)
    mesh.advance(2_000.0)  # answered: nothing yet

    def deltas_to_a_lost(hop: Hop) -> bool:
        return hop.target == a.address and hop.kind in (
            wire.MessageKind.DELTAS,
            wire.MessageKind.RETRANSMIT_GONE,
        )

    mesh.drop = deltas_to_a_lost
    b.open_doc(doc_id).get("m", type=Map)["k"] = "written later"
    mesh.advance(2 * HINTS.ae_interval_ms + HINTS.handoff_interval_ms)
    assert a.open_doc(doc_id).get("m", type=Map)["k"] == "written later"
