"""The publisher's batches (`crdtsync.core.outbound`): when a lingering batch leaves, and how a
batch's transactions of one doc leave as one delta (`merge_runs`): what is merged and what is not,
and that sequence numbers, the retransmit ring, acknowledgements, older wire versions and
holder-set frames all see a merged delta as one valid delta. Replicas are driven by hand through
the in-memory mesh of test_replica."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Doc, Map, Text, TransactionEvent
from test_replica import Mesh, _assert_converged, _count, _is_deltas_from, _published, _spy_effects

from crdtsync.core import state, wire
from crdtsync.core.effects import Persist, Publish
from crdtsync.core.outbound import MERGED_DELTAS_MAX, delta_size, merge_runs
from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import ReplicaConfig
from crdtsync.core.ring import Sized
from crdtsync.core.state import decode_state_vector, merge_all

UPDATE_BYTES_MAX = 1 << 20


class _Writer:
    """Docs of one client whose transactions are captured as deltas, as the replica's observer does."""

    def __init__(self, client_id: int = 7) -> None:
        self.client_id = client_id
        self.docs: dict[str, Doc[Any]] = {}
        self.captured: list[Sized] = []
        self._applying_remote = False

    def doc(self, doc_id: str) -> Doc[Any]:
        if doc_id not in self.docs:
            doc: Doc[Any] = Doc(client_id=self.client_id)

            def on_transaction(event: TransactionEvent, doc_id: str = doc_id) -> None:
                if self._applying_remote:
                    return  # the replica publishes only local transactions
                before: bytes = event.before_state  # type: ignore[attr-defined]
                after: bytes = event.after_state  # type: ignore[attr-defined]
                delta = wire.Delta(doc_id, before, after, event.update)
                self.captured.append((delta, delta_size(delta)))

            doc.observe(on_transaction)
            self.docs[doc_id] = doc
        return self.docs[doc_id]

    def write(self, doc_id: str, key: str, value: int) -> None:
        self.doc(doc_id).get("m", type=Map)[key] = value

    def apply_remote(self, doc_id: str, update: bytes) -> None:
        self._applying_remote = True
        try:
            self.doc(doc_id).apply_update(update)
        finally:
            self._applying_remote = False

    def take(self) -> list[Sized]:
        taken, self.captured = self.captured, []
        return taken


def test_a_lingering_batch_leaves_at_the_time_the_driver_is_told() -> None:
    """At 100.7 ms plus 40, (100.7 + 40) - 100.7 rounds below 40: the batch must still leave when
    its time comes, or a driver that sleeps until then wakes to nothing, again and again."""
    replica = Mesh().add("a", config=ReplicaConfig(linger_ms=40.0))
    write_ms = 100.7
    assert (write_ms + 40.0) - write_ms < 40.0
    replica.take_effects(write_ms)
    replica.open_doc("doc").get("data", type=Map)["k"] = 1
    assert not [e for e in replica.take_effects(write_ms) if isinstance(e, Publish)], "it lingers"
    flush_ms = write_ms + 40.0  # what `next_deadline_ms` takes the batch's time from
    assert replica.next_deadline_ms() <= flush_ms
    published = [wire.decode(e.frame) for e in replica.take_effects(flush_ms) if isinstance(e, Publish)]
    assert [type(message) for message in published] == [wire.Deltas]


def _applied(deltas: list[wire.Delta], doc_id: str) -> dict[str, Any]:
    doc: Doc[Any] = Doc(client_id=1)
    for delta in deltas:
        if delta.doc_id == doc_id:
            doc.apply_update(delta.update)
    return doc.get("m", type=Map).to_py() or {}


def test_a_docs_transactions_in_a_batch_become_one_delta_from_the_first_state_to_the_last() -> None:
    writer = _Writer()
    for i in range(10):
        writer.write("doc", f"k{i % 3}", i)
    captured = writer.take()
    merged, merged_count, _for_store, _refused = merge_runs(captured, UPDATE_BYTES_MAX)
    assert merged_count == 9 and len(merged) == 1
    (delta, size), first, last = merged[0], captured[0][0], captured[-1][0]
    assert (delta.doc_id, delta.before_state, delta.after_state) == (
        "doc",
        first.before_state,
        last.after_state,
    )
    assert size == delta_size(delta)
    assert len(delta.update) < sum(len(d.update) for d, _size in captured), "merging pays"
    assert _applied([delta], "doc") == writer.docs["doc"].get("m", type=Map).to_py()


def test_other_docs_deltas_in_between_keep_each_docs_order_and_its_first_place() -> None:
    writer = _Writer()
    for doc_id, value in (("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2), ("a", 3)):
        writer.write(doc_id, "k", value)
    merged, merged_count, _for_store, _refused = merge_runs(writer.take(), UPDATE_BYTES_MAX)
    assert merged_count == 3
    assert [delta.doc_id for delta, _size in merged] == ["a", "b", "c"]
    deltas = [delta for delta, _size in merged]
    assert [_applied(deltas, doc_id) for doc_id in "abc"] == [{"k": 3.0}, {"k": 2.0}, {"k": 1.0}]


def test_a_transaction_that_began_in_another_state_starts_a_new_delta() -> None:
    """A remote update applied between two transactions of a doc: the second depends on what the
    first's before state does not cover, so the two stay apart (and in order)."""
    writer, other = _Writer(7), _Writer(8)
    writer.write("doc", "k", 1)
    other.write("doc", "k", 2)
    writer.apply_remote("doc", other.docs["doc"].get_update())
    writer.write("doc", "k", 3)
    writer.write("doc", "j", 4)
    captured = writer.take()
    merged, merged_count, _for_store, _refused = merge_runs(captured, UPDATE_BYTES_MAX)
    assert merged_count == 1
    assert [delta.before_state for delta, _size in merged] == [
        captured[0][0].before_state,
        captured[1][0].before_state,
    ]
    assert 8 in decode_state_vector(merged[1][0].before_state), "the second run depends on the remote write"
    assert merged[1][0].after_state == captured[2][0].after_state


def test_a_run_holds_at_most_merged_deltas_max_transactions_and_update_bytes_max() -> None:
    writer = _Writer()
    for i in range(2 * MERGED_DELTAS_MAX + 2):
        writer.write("doc", "k", i)
    captured = writer.take()
    merged, merged_count, _for_store, _refused = merge_runs(captured, UPDATE_BYTES_MAX)
    assert len(merged) == 3 and merged_count == len(captured) - 3
    sizes = [len(delta.update) for delta, _size in captured[:10]]
    cap = (
        sizes[1] * 3
    )  # three overwrites of the key a run (the first write, which deletes nothing, is smaller)
    merged = merge_runs(captured[:10], cap).deltas
    runs_expected, run_bytes = 0, cap + 1
    for size in sizes:  # greedy, in order: a run takes a transaction while its update bytes fit
        run_bytes = run_bytes + size if run_bytes + size <= cap else size
        runs_expected += run_bytes == size
    assert len(merged) == runs_expected > 3
    assert _applied([delta for delta, _size in merged], "doc") == {"k": 9.0}


def test_updates_that_do_not_merge_leave_as_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    class PanicException(BaseException):
        """What pycrdt raises for a Rust panic (a BaseException)."""

    def panic(updates: list[bytes]) -> bytes:
        raise PanicException("merge")

    writer = _Writer()
    for i in range(3):
        writer.write("doc", "k", i)
    captured = writer.take()
    monkeypatch.setattr(state, "merge_all", panic)
    as_captured = [(delta.doc_id, delta.update) for delta, _size in captured]
    assert merge_runs(captured, UPDATE_BYTES_MAX) == (captured, 0, as_captured, 1)

    def interrupted(updates: list[bytes]) -> bytes:
        raise KeyboardInterrupt

    monkeypatch.setattr(state, "merge_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge_runs(captured, UPDATE_BYTES_MAX)


def test_a_burst_of_one_doc_takes_one_number_and_its_receivers_apply_every_write() -> None:
    mesh = Mesh()
    a, b, c = mesh.add("a"), mesh.add("b"), mesh.add("c")
    mesh.link_all()
    effects = _spy_effects(a)
    data = a.open_doc("doc").get("data", type=Map)
    text = a.open_doc("other").get("text", type=Text)
    for i in range(MERGED_DELTAS_MAX):
        data[f"k{i % 7}"] = i
        if i % 10 == 0:
            text.insert(len(text), str(i))
    mesh.pump()
    (deltas,) = [message for _effect, message in _published(effects) if isinstance(message, wire.Deltas)]
    assert (deltas.first_seq, [d.doc_id for d in deltas.deltas]) == (1, ["doc", "other"])
    writes = MERGED_DELTAS_MAX + 7
    assert a.seq_acks.last_seq == 2 and a.status(mesh.now_ms).published_updates == writes
    assert (_count(a, "deltas_published"), _count(a, "deltas_merged")) == (writes, writes - 2)
    assert (a.seq_acks.last_seq_of("doc"), a.seq_acks.last_seq_of("other")) == (1, 2)
    _assert_converged([a, b, c], ["doc", "other"])
    for receiver in (b, c):
        assert _count(receiver, "deltas_applied") == 2
        assert [p.behind_updates for p in receiver.status(mesh.now_ms).peers if p.node_id == "a"] == [0]


def test_runs_pycrdt_refuses_to_merge_leave_apart_counted_and_every_write_arrives() -> None:
    def refuse(runs: list[list[bytes]]) -> list[bytes | None]:
        return [None] * len(runs)

    mesh = Mesh()
    a, b = mesh.add("a", merge_each=refuse), mesh.add("b")
    mesh.link_all()
    data = a.open_doc("doc").get("data", type=Map)
    for i in range(10):
        data[f"k{i % 3}"] = i
    mesh.pump()
    assert (_count(a, "deltas_merged"), _count(a, "delta_merges_refused")) == (0, 1)
    assert a.seq_acks.last_seq == 10, "each transaction left as a delta of its own"
    _assert_converged([a, b], ["doc"])
    assert _count(b, "deltas_applied") == 10


def test_the_store_gets_each_merged_run_as_the_delta_that_left_after_the_remote_updates() -> None:
    """A burst's runs are merged once: the `Persist` of the step carries each run's merged update
    (the one published), not its transactions, after the updates applied from elsewhere."""
    mesh = Mesh()
    a, b = mesh.add("a"), mesh.add("b")
    mesh.link_all()
    effects = _spy_effects(a)
    data, third = a.open_doc("doc").get("data", type=Map), a.open_doc("third").get("data", type=Map)
    elsewhere: Doc[Any] = Doc(client_id=99)
    elsewhere.get("data", type=Map)["from"] = "backup"
    for i in range(10):
        data[f"k{i % 3}"] = i
        if i == 4:  # an update from elsewhere, of another doc, between two of the run's
            assert a.restore_update("other", elsewhere.get_update(), mesh.now_ms)
        if i % 4 == 0:
            third["n"] = i
    mesh.pump()
    (deltas,) = [message for _effect, message in _published(effects) if isinstance(message, wire.Deltas)]
    (persist,) = [effect for effect in effects if isinstance(effect, Persist) and effect.updates]
    assert [doc_id for doc_id, _update in persist.updates] == ["other", "doc", "third"]
    assert [update for doc_id, update in persist.updates if doc_id != "other"] == [
        delta.update for delta in deltas.deltas
    ]
    assert _count(a, "deltas_merged") == 10 + 3 - 2
    for doc_id, written in (("doc", data), ("third", third)):
        assert _applied_json(mesh.stored(a, doc_id)) == written.to_py()
    assert _applied_json(mesh.stored(a, "other")) == {"from": "backup"}
    _assert_converged([a, b], ["doc", "third"])


def test_a_run_begun_before_the_last_persist_reaches_the_store_as_it_was_captured() -> None:
    """A lingering batch: its first transactions went to the store before it left, so the store
    gets the later ones as they were, and every one of them exactly once."""
    replica = Mesh().add("a", config=ReplicaConfig(linger_ms=40.0))
    data = replica.open_doc("doc").get("data", type=Map)
    stored: list[tuple[str, bytes]] = []
    for i in range(3):
        data[f"k{i}"] = i
    taken = replica.take_effects(10.0)
    assert not [e for e in taken if isinstance(e, Publish)], "it lingers"
    for i in range(3, 5):
        data[f"k{i}"] = i
    taken += replica.take_effects(60.0)
    (deltas,) = [wire.decode(e.frame) for e in taken if isinstance(e, Publish)]
    assert isinstance(deltas, wire.Deltas) and len(deltas.deltas) == 1, "the five left as one delta"
    for effect in taken:
        if isinstance(effect, Persist):
            stored.extend(effect.updates)
    assert len(stored) == 5 and deltas.deltas[0].update not in [update for _doc_id, update in stored]
    assert _applied_json(merge_all([update for _doc_id, update in stored])) == data.to_py()


def _applied_json(update: bytes | None) -> dict[str, Any]:
    assert update is not None
    doc: Doc[Any] = Doc(client_id=1)
    doc.apply_update(update)
    return doc.get("data", type=Map).to_py() or {}


def test_a_lost_merged_delta_is_retransmitted_from_the_ring_as_it_left() -> None:
    mesh = Mesh()
    a, b = mesh.add("a"), mesh.add("b")
    mesh.link_all()
    mesh.drop = _is_deltas_from(a, b)
    data = a.open_doc("doc").get("data", type=Map)
    for i in range(20):
        data["k"] = i
    mesh.pump()
    assert (a.seq_acks.last_seq, _count(a, "deltas_merged")) == (1, 19)
    mesh.drop = lambda hop: False
    data["k"] = 20  # seq 2 shows b the gap
    mesh.pump()
    assert _count(b, "retransmit_requests") >= 1 and _count(a, "retransmits_served") >= 1
    assert _count(a, "retransmits_gone") == 0
    _assert_converged([a, b], ["doc"])
    assert b.open_doc("doc").get("data", type=Map)["k"] == 20
    assert b.status(mesh.now_ms).pending_updates == 0


def test_an_ack_of_a_merged_number_covers_every_write_in_it() -> None:
    always = ReplicaConfig(seq_ack_wanted_ms=0.0)
    mesh = Mesh()
    a, b = mesh.add("a", config=always), mesh.add("b", config=always)
    mesh.link_all()
    data = a.open_doc("doc").get("data", type=Map)
    for i in range(30):
        data[f"k{i}"] = i
    mesh.pump()
    mesh.advance(a.config.seq_ack_interval_ms + 10.0)
    seq = a.seq_acks.last_seq_of("doc")
    assert (seq, _count(a, "deltas_merged")) == (1, 29)
    held_from, through = a.seq_acks.acked["b"][:2]
    assert held_from <= seq <= through, "the write-ack wait of every write of the burst is answered"
    assert b.open_doc("doc").get("data", type=Map).to_py() == data.to_py()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_merged_delta_carries_its_states_to_older_wire_versions(version: int) -> None:
    """Rolling upgrades: a link of version 1 or 2 gets the first transaction's before state and
    the last's after state; the receiver waits on them as on any delta's."""
    mesh = Mesh()
    a = mesh.add("a")
    b = mesh.add("b", config=ReplicaConfig(wire_version_max=version))
    c = mesh.add("c")
    mesh.link_all()
    mesh.advance(100.0)
    mesh.drop = _is_deltas_from(a, b)
    a.open_doc("doc").get("data", type=Map)["k"] = 0
    mesh.pump()  # b misses seq 1: the merged delta after it must wait for it
    mesh.drop = lambda hop: hop.kind is wire.MessageKind.RETRANSMIT_REQUEST
    effects = _spy_effects(a)
    text = a.open_doc("doc").get("text", type=Text)
    data = a.open_doc("doc").get("data", type=Map)
    for i in range(12):
        text.insert(0, str(i))
        data["k"] = i
    mesh.pump()
    (frame,) = {e.frame for e in effects if isinstance(e, Publish) and e.frame[3] == wire.MessageKind.DELTAS}
    assert frame[2] == version, "published in the lowest version a link speaks"
    message = wire.decode(frame)
    assert isinstance(message, wire.Deltas)
    (delta,) = message.deltas
    assert bool(delta.before_state) == (version < 3)
    assert b.status(mesh.now_ms).pending_updates == 1, "it waits for seq 1"
    assert _count(b, "updates_left_pending") == 0
    mesh.drop = lambda hop: False
    mesh.advance(a.config.retransmit_timeout_ms + 100.0)
    _assert_converged([a, b, c], ["doc"])
    assert b.status(mesh.now_ms).pending_updates == 0 and _count(b, "updates_left_pending") == 0


def test_holder_set_frames_of_merged_deltas_account_for_every_number() -> None:
    """rf 2 of 4: several docs written many times in one batch leave as one delta a doc, in one
    frame per holder set whose skipped numbers name the others; no node asks for a number again."""
    config = ReplicaConfig(linger_ms=0.0)
    rf2 = PlacementPolicy((PlacementRule(2),))
    mesh = Mesh()
    a, others = mesh.add_four(config, rf2)
    mesh.link_all()
    mesh.advance(2_000.0)
    doc_ids = [f"doc-{i}" for i in range(12)]
    for round_ in range(2):
        for i in range(5):
            for doc_id in doc_ids:
                a.open_doc(doc_id).get("data", type=Map)[f"k{i}"] = round_
        mesh.pump()
        mesh.advance(10.0)
    assert a.seq_acks.last_seq == 2 * len(doc_ids)
    assert _count(a, "deltas_merged") == 2 * len(doc_ids) * 4
    mesh.advance(2_000.0)  # past a heartbeat and its index
    for other in others:
        (peer,) = [p for p in other.status(mesh.now_ms).peers if p.node_id == "a"]
        assert peer.behind_updates == 0 and _count(other, "retransmit_requests") == 0, other.node_id
        for doc_id in doc_ids:
            if other.has_doc(doc_id):
                assert other.open_doc(doc_id).get("data", type=Map).to_py() == {
                    f"k{i}": 1.0 for i in range(5)
                }
