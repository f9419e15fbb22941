"""Sequence acknowledgements in the core (`crdtsync.core.seqacks`): what a subscriber acknowledges of
a publisher's stream, when, and what the publisher keeps of it. Replicas are driven by hand through
the in-memory mesh of test_replica."""

from __future__ import annotations

from pycrdt import Map, Text
from test_replica import Mesh, _count, _is_deltas_from

from crdtsync.core import wire
from crdtsync.core.effects import Persist, Publish, Send
from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import Replica, ReplicaConfig

ALWAYS = ReplicaConfig(seq_ack_wanted_ms=0.0)
"""Every publisher gets acks (not only after its write-ack question): the tests of what acks name."""


def _write(replica: Replica, key: str, value: int, doc_id: str = "doc") -> None:
    replica.open_doc(doc_id).get("data", type=Map)[key] = value


def _acks_sent(mesh: Mesh, source: Replica) -> list[wire.SeqAck]:
    return [
        message
        for hop in mesh.delivered
        if hop.source == source.address and isinstance(message := hop.message(), wire.SeqAck)
    ]


def test_a_subscriber_acknowledges_a_delta_once_applied_in_a_send_that_waits_for_its_commit() -> None:
    mesh = Mesh()
    a, b = mesh.add("a", config=ALWAYS), mesh.add("b", config=ALWAYS)
    mesh.link_all()
    _write(a, "k", 1)
    published = [e for e in a.take_effects(mesh.now_ms) if isinstance(e, Publish)]
    assert len(published) == 1
    b.receive(published[0].frame, mesh.now_ms)
    effects = b.take_effects(mesh.now_ms)
    acks = [e for e in effects if isinstance(e, Send) and isinstance(wire.decode(e.frame), wire.SeqAck)]
    assert len(acks) == 1 and acks[0].after_commit, "an ack promises durability: it leaves after the commit"
    assert any(isinstance(e, Persist) and e.updates for e in effects), (
        "the applied delta is persisted with it"
    )
    assert wire.decode(acks[0].frame) == wire.SeqAck("b", a.epoch, 1, 1, b.seq_acks.view_digest)
    a.receive(acks[0].frame, mesh.now_ms)
    assert {k: v[:3] for k, v in a.seq_acks.acked.items()} == {"b": (1, 1, a.seq_acks.view_digest)}
    assert (_count(b, "seq_acks_sent"), _count(a, "seq_acks_received")) == (1, 1)


def test_one_ack_per_publisher_and_interval_covers_every_write_of_the_interval() -> None:
    mesh = Mesh()
    config = ReplicaConfig(seq_ack_interval_ms=5.0, seq_ack_wanted_ms=0.0)
    a, b = mesh.add("a", config=config), mesh.add("b", config=config)
    mesh.link_all()
    for value in range(10):  # ten batches within one millisecond
        _write(a, "k", value)
        mesh.pump()
        mesh.now_ms += 0.1
    assert len(_acks_sent(mesh, b)) == 1, "the first ack goes at once, the rest wait for the interval"
    assert a.seq_acks.acked["b"][:2] == (1, 1)
    mesh.advance(5.0, step_ms=1.0)
    assert [(m.from_seq, m.through_seq) for m in _acks_sent(mesh, b)] == [(1, 1), (1, 10)]
    assert a.seq_acks.acked["b"][:2] == (1, 10)
    mesh.advance(100.0)
    assert len(_acks_sent(mesh, b)) == 2, "nothing new: no ack"


def test_a_delta_waiting_for_its_dependencies_is_acknowledged_only_once_applied() -> None:
    mesh = Mesh()
    a, b, c = mesh.add("a", config=ALWAYS), mesh.add("b", config=ALWAYS), mesh.add("c", config=ALWAYS)
    mesh.link_all()
    mesh.drop = _is_deltas_from(a, c)  # c never gets a's delta; b's builds on it (its text follows a's)
    a.open_doc("doc").get("text", type=Text).insert(0, "from a")
    mesh.pump()
    b.open_doc("doc").get("text", type=Text).insert(6, ", from b")
    mesh.pump()
    assert c.status(mesh.now_ms).pending_updates == 1
    assert "c" not in b.seq_acks.acked, "c holds b's delta only in its causal buffer"
    mesh.advance(c.config.causal_wait_ms + 50.0, step_ms=10.0)  # c pulls the doc and applies
    assert c.status(mesh.now_ms).pending_updates == 0
    assert b.seq_acks.acked["c"][:2] == (1, 1)
    assert "c" not in a.seq_acks.acked, "c got a's write by a pull, not on a's stream: no ack of it"


def test_numbers_of_a_gap_given_up_are_not_acknowledged_even_after_the_repair() -> None:
    mesh = Mesh()
    a, b = mesh.add("a", config=ReplicaConfig(ring_deltas_max=2)), mesh.add("b", config=ALWAYS)
    mesh.link_all()
    mesh.drop = _is_deltas_from(a, b)
    _write(a, "lost", 1)
    mesh.pump()
    mesh.drop = lambda hop: False
    for word in ("one", "two", "three"):  # one batch of three docs: seqs 2..4, the ring keeps 3..4 only
        a.open_doc(word).get("text", type=Text).insert(0, word)
    mesh.pump()
    assert _count(b, "retransmits_gone_received") >= 1
    assert b.open_doc("doc").get("data", type=Map)["lost"] == 1, "anti-entropy repaired the gap"
    _write(a, "next", 5)
    mesh.pump()
    mesh.advance(10.0)
    held_from, through = a.seq_acks.acked["b"][:2]
    assert through == 5 and held_from == 5, "1..4 came by a repair and a given-up gap: not acknowledged"


def test_a_late_subscriber_acknowledges_from_its_first_number_on_the_stream() -> None:
    mesh = Mesh()
    a, _b = mesh.add("a", config=ALWAYS), mesh.add("b", config=ALWAYS)
    mesh.link_all()
    _write(a, "k", 1)
    _write(a, "k", 2, doc_id="other")
    mesh.pump()
    c = mesh.add("c", config=ALWAYS)
    mesh.link_all()
    assert c.open_doc("doc").get("data", type=Map)["k"] == 1, "brought by the join's anti-entropy"
    _write(a, "k", 3)
    mesh.pump()
    mesh.advance(10.0)
    assert a.seq_acks.acked["c"][:2] == (3, 3)
    assert a.seq_acks.acked["b"][:2] == (1, 3)


def test_acks_of_another_incarnation_or_of_numbers_never_published_are_dropped_and_counted() -> None:
    mesh = Mesh()
    a, _b = mesh.add("a", config=ALWAYS), mesh.add("b", config=ALWAYS)
    mesh.link_all()
    _write(a, "k", 1)
    mesh.pump()
    assert {k: v[:3] for k, v in a.seq_acks.acked.items()} == {"b": (1, 1, a.seq_acks.view_digest)}
    a.receive(wire.encode(wire.SeqAck("b", a.epoch + 1, 1, 1, 0)), mesh.now_ms)
    a.receive(wire.encode(wire.SeqAck("b", a.epoch, 1, 99, 0)), mesh.now_ms)
    assert (_count(a, "seq_acks_stale"), _count(a, "seq_acks_refused")) == (1, 1)
    assert {k: v[:3] for k, v in a.seq_acks.acked.items()} == {"b": (1, 1, a.seq_acks.view_digest)}, (
        "neither replaced the last good ack"
    )


def test_acks_go_only_to_a_publisher_that_asked_a_write_ack_question_and_stop_after_the_wanted_time() -> None:
    mesh = Mesh()
    a, b = mesh.add("a"), mesh.add("b")
    mesh.link_all()
    _write(a, "k", 1)
    mesh.pump()
    assert _count(b, "seq_acks_sent") == 0, "no write of a waits: no ack"
    assert a.confirm("doc", "b", None, mesh.now_ms), "a's first waiting write asks b"
    mesh.pump()
    assert a.seq_acks.acked["b"][:2] == (1, 1), "the question starts b's acks, for what it held then too"
    _write(a, "k", 2)
    mesh.pump()
    mesh.advance(10.0)
    assert a.seq_acks.acked["b"][:2] == (1, 2)
    mesh.advance(b.config.seq_ack_wanted_ms + 100.0, step_ms=1000.0)
    _write(a, "k", 3)
    mesh.pump()
    mesh.advance(10.0)
    assert a.seq_acks.acked["b"][:2] == (1, 2), "seq_ack_wanted_ms after the question, b stopped"


def _batches(replica: Replica, mesh: Mesh) -> list[wire.Deltas]:
    """The DELTAS frames the replica publishes now (taken, not delivered)."""
    frames = [wire.decode(e.frame) for e in replica.take_effects(mesh.now_ms) if isinstance(e, Publish)]
    return [frame for frame in frames if isinstance(frame, wire.Deltas)]


def test_numbers_a_relayed_frame_names_are_acknowledged_to_the_origin_from_a_gap_and_once_applied() -> None:
    """b gets none of a's stream, only frames relay r republishes, which name a's numbers (as for a
    node of another datacenter that is not a relay): b acknowledges them to a, starts its range again
    after a gap (it cannot tell another holder set's numbers from lost ones), and waits while a
    relayed delta waits for its dependencies."""
    mesh = Mesh()
    a, b, _r = mesh.add("a", config=ALWAYS), mesh.add("b", config=ALWAYS), mesh.add("r", config=ALWAYS)
    mesh.link_all()
    mesh.drop = lambda hop: hop.source == a.address and hop.target == b.address and hop.published
    batches: list[wire.Deltas] = []
    for seq, doc_id in enumerate(["doc", "doc", "other", "doc", "doc", "doc"], start=1):
        _write(a, "k", seq, doc_id)
        batches += _batches(a, mesh)
        assert batches[-1].first_seq == seq

    def relay(seq: int) -> None:
        batch = batches[seq - 1]
        b.receive(wire.encode(wire.Relayed("r", "a", batch.deltas, a.epoch, seq)), mesh.now_ms)
        mesh.pump()
        mesh.advance(a.config.seq_ack_interval_ms, step_ms=1.0)

    relay(1)
    relay(2)
    assert a.seq_acks.acked["b"][:2] == (1, 2)
    relay(4)  # 3 (another doc) never comes: b's range starts again after the gap
    assert a.seq_acks.acked["b"][:2] == (4, 4)
    relay(6)  # depends on 5, which has not come: waits in the causal buffer, not acknowledged
    assert b.status(mesh.now_ms).pending_updates == 1
    assert a.seq_acks.acked["b"][:2] == (4, 4)
    relay(5)  # applies 5 and 6; 5 is below the range and adds no number, but 6 is acknowledged now
    assert b.status(mesh.now_ms).pending_updates == 0
    assert a.seq_acks.acked["b"][:2] == (6, 6)
    assert _count(b, "seq_acks_relayed_sent") == _count(b, "seq_acks_sent") == 4  # 1, 1..2, 4, 6


def test_a_relayed_frame_of_a_delta_the_buffer_dropped_is_not_acknowledged() -> None:
    mesh = Mesh()
    config = ReplicaConfig(seq_ack_wanted_ms=0.0, update_bytes_max=4)
    a, b = mesh.add("a", config=ALWAYS), mesh.add("b", config=config)
    mesh.link_all()
    mesh.drop = lambda hop: hop.source == a.address and hop.target == b.address and hop.published
    a.open_doc("doc").get("data", type=Map)["k"] = "a value longer than four bytes"
    (batch,) = _batches(a, mesh)
    b.receive(wire.encode(wire.Relayed("r", "a", batch.deltas, a.epoch, 1)), mesh.now_ms)
    mesh.pump()
    assert _count(b, "updates_dropped_too_large") == 1
    assert "b" not in a.seq_acks.acked and _count(b, "seq_acks_sent") == 0


def test_a_write_ack_question_from_a_node_that_does_not_hold_the_doc_starts_acks_only_when_flagged() -> None:
    """Under placement a writer may not hold the doc it wrote: its question is an offer from a
    non-holder, which without the flag looks like a handoff (no acks; wire version 1 cannot flag)."""
    rf1 = PlacementPolicy((PlacementRule(1),))
    mesh = Mesh()
    a, b = mesh.add("a", placement=rf1), mesh.add("b", placement=rf1)
    mesh.link_all()
    doc_id = next(f"doc-{i}" for i in range(100) if b.holds(f"doc-{i}") and not a.holds(f"doc-{i}"))
    state = b"\x00"
    for version, wants_acks, wanted in ((2, False, False), (1, True, False), (2, True, True)):
        offer = wire.HandoffOffer("a", ((doc_id, state, b"\x00\x00"),), wants_acks=wants_acks)
        b.receive(wire.encode(offer, version), mesh.now_ms)
        mesh.pump()
        assert ("a" in b.seq_acks._wanted_until) is wanted, (version, wants_acks)


def test_a_writer_counts_an_ack_for_a_doc_by_the_number_of_its_latest_delta_of_that_doc() -> None:
    """An ack's range may start after a doc's last write (a gap of a relayed range, a restarted
    track) and still hold the writer's latest number: that number is another doc's."""
    mesh = Mesh()
    a = mesh.add("a")
    for doc_id in ("doc", "other", "doc", "other", "third"):
        _write(a, "k", 1, doc_id)
        a.take_effects(mesh.now_ms)
    assert [a.seq_acks.last_seq_of(doc_id) for doc_id in ("doc", "other", "third", "never")] == [3, 4, 5, 0]
    assert a._outbound.last_seq_of("doc", scanned_max=2) == 0, "the scan is bounded: unknown, so asked"


def test_a_late_sequence_index_does_not_move_back_what_counts_as_not_held() -> None:
    """Numbers a `SEQ_INDEX` marks as another bucket's count as not held; an index that arrives late
    (reordered) names lower numbers, and must not make the node forget the higher ones it counted:
    a change of view later moves acks past all of them (a simulated run, seed 209, acknowledged a
    number of a doc it counted as not held, then held, after a late index moved the mark back)."""
    rf2 = PlacementPolicy((PlacementRule(2),))
    mesh = Mesh()
    a = mesh.add("a", config=ALWAYS, placement=rf2)
    b, *_rest = (mesh.add(name, config=ALWAYS, placement=rf2) for name in ("b", "c", "d"))
    mesh.link_all()
    mesh.advance(2_000.0)
    link = b._links.of_node("a")
    assert link is not None and link.subscribed_buckets is not None, "b takes only its buckets"
    other = next(bucket for bucket in range(4096) if bucket not in link.subscribed_buckets)
    b._inbound.on_seq_index(wire.SeqIndex("a", a.epoch, 5, (other,)))
    b._inbound.on_seq_index(wire.SeqIndex("a", a.epoch, 3, (other,)))  # the late one
    assert b._inbound.tracks["a"].skipped_through == 5
