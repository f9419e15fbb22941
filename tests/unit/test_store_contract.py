"""The `Store` contract, checked the same way on `MemoryStore` and `SqliteStore`, and the
`CommitQueue` that the node's writer and the simulator share."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map

from crdtsync import DocRecord, MemoryStore, Store, StoreDescription, StoreError
from crdtsync.core.effects import Persist
from crdtsync.core.state import digest
from crdtsync.store.group_commit import CommitQueue
from crdtsync.store.sqlite import SqliteStore, read_backup

StoreFactory = Callable[[Path], Store]


def _memory(_tmp: Path) -> Store:
    return MemoryStore()


def _sqlite(tmp: Path) -> Store:
    return SqliteStore(tmp / "data", node_id="a", durability="none")


@pytest.fixture(params=[_memory, _sqlite], ids=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    factory: StoreFactory = request.param
    opened = factory(tmp_path)
    yield opened
    opened.close()


class Writer:
    """A doc whose every transaction's update is captured, as the node would persist it."""

    def __init__(self, doc_id: str, client_id: int) -> None:
        self.doc_id = doc_id
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self.updates: list[bytes] = []
        self.doc.observe(lambda event: self.updates.append(event.update))

    def set(self, key: str, value: int) -> Persist:
        first = len(self.updates)
        self.doc.get("data", type=Map)[key] = value
        return Persist(tuple((self.doc_id, update) for update in self.updates[first:]))

    def state_record(self) -> Persist:
        return Persist((), ((self.doc_id, self.doc.get_state(), digest(self.doc)),))


def _content(update: bytes | None) -> dict[str, Any]:
    assert update is not None
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return dict(doc.get("data", type=Map).to_py() or {})


def _first(store: Store) -> DocRecord:
    return next(iter(store.docs()))


def test_epochs_strictly_increase_for_every_start(store: Store) -> None:
    epochs = [store.new_epoch() for _ in range(5)]
    assert all(earlier < later for earlier, later in itertools.pairwise(epochs)), epochs


def test_docs_load_and_state_records(store: Store) -> None:
    b, a = Writer("b", 2), Writer("a", 1)
    store.append([a.set("x", 1), b.set("y", 2), a.set("x", 3)])
    assert [record.doc_id for record in store.docs()] == ["a", "b"]  # doc id order
    assert all(record.state is None and record.digest is None for record in store.docs())
    assert _content(store.load_doc("a")) == {"x": 3.0}
    assert _content(store.load_doc("b")) == {"y": 2.0}
    assert store.load_doc("never") is None

    # A state record describes the doc after the updates of the same effect and before later ones.
    store.append([a.state_record()])
    assert _first(store) == DocRecord("a", a.doc.get_state(), digest(a.doc))
    store.append([a.set("z", 4)])
    assert _first(store) == DocRecord("a", None, None)
    update = a.set("w", 5)
    store.append([Persist(update.updates, a.state_record().doc_states)])
    assert _first(store) == DocRecord("a", a.doc.get_state(), digest(a.doc))
    assert _content(store.load_doc("a")) == {"x": 3.0, "z": 4.0, "w": 5.0}


@pytest.mark.parametrize("appends", [1, 63, 64, 65, 200])
def test_every_appended_update_loads_whatever_their_count(store: Store, appends: int) -> None:
    """The memory store applies a doc's updates `PENDING_UPDATES_MAX` at a time, merged: a load sees
    every one, before, at and past that count, interleaved with another doc's, and after a drop."""
    a, b = Writer("a", 1), Writer("b", 2)
    for index in range(appends):
        store.append([a.set(f"k{index % 50}", index), b.set("n", index)])
    assert _content(store.load_doc("a")) == a.doc.get("data", type=Map).to_py()
    store.append([a.set("after-load", 1)])
    assert _content(store.load_doc("a"))["after-load"] == 1
    assert _content(store.load_doc("b")) == {"n": appends - 1}
    store.append([Persist((), (), ("b",))])
    assert store.load_doc("b") is None


def test_describe(store: Store) -> None:
    description = store.describe()
    assert isinstance(description, StoreDescription)
    if isinstance(store, MemoryStore):
        assert description == StoreDescription(name="memory", durable=False, lazy_loading=False)
    else:
        assert isinstance(store, SqliteStore)
        assert description == StoreDescription(name=f"sqlite:{store.path}", durable=True, lazy_loading=True)


def test_backup_is_readable_or_refused_clearly(store: Store, tmp_path: Path) -> None:
    writer = Writer("a", 1)
    store.append([writer.set("x", 1)])
    target = tmp_path / "backup.db"
    if isinstance(store, MemoryStore):
        with pytest.raises(StoreError, match="data_dir"):
            store.backup(target)
        assert not target.exists()
        return
    store.backup(target)
    assert [(doc_id, _content(update)) for doc_id, update in read_backup(target)] == [("a", {"x": 1.0})]


def test_memory_store_survives_close_and_keeps_handing_out_epochs() -> None:
    store = MemoryStore()
    writer = Writer("a", 1)
    store.append([writer.set("x", 1), writer.state_record()])
    first = store.new_epoch()
    store.close()
    assert store.new_epoch() > first
    assert list(store.docs()) == [DocRecord("a", writer.doc.get_state(), digest(writer.doc))]
    assert list(store.load()) == [("a", store.load_doc("a"))]


# ---------------------------------------------------------------------------------------------- CommitQueue


def test_queue_groups_in_order_and_bounded() -> None:
    queue = CommitQueue(group_updates_max=3)
    writer = Writer("a", 1)
    effects = [writer.set(f"k{i}", i) for i in range(5)]  # one update each
    assert [queue.submit(effect) for effect in effects] == [1, 2, 3, 4, 5]
    started = queue.next_group()
    assert started is not None and started[1] == effects[:3]
    assert queue.next_group() is None  # one commit at a time
    assert queue.group_committed() == effects[:3]
    assert (queue.committed, queue.pending_effects) == (3, 2)
    second = queue.next_group()
    assert second is not None and second[0] > started[0] and second[1] == effects[3:]


def test_queue_never_splits_an_effect_bigger_than_a_group() -> None:
    queue = CommitQueue(group_updates_max=1)
    big = Persist((("a", b"\x00\x00"), ("a", b"\x00\x00")))
    queue.submit(big)
    started = queue.next_group()
    assert started is not None and started[1] == [big]


def test_a_failed_group_goes_back_ahead_of_later_effects() -> None:
    queue = CommitQueue()
    writer = Writer("a", 1)
    first, second = writer.set("x", 1), writer.set("y", 2)
    queue.submit(first)
    assert queue.next_group() is not None
    queue.submit(second)
    assert queue.group_failed() == [first]
    assert queue.committed == 0 and queue.group_id is None
    retry = queue.next_group()
    assert retry is not None and retry[1] == [first, second]


def test_loads_see_committed_and_in_flight_updates() -> None:
    store = MemoryStore()
    queue = CommitQueue()
    writer = Writer("a", 1)
    committed = writer.set("committed", 1)
    queue.submit(committed)
    assert queue.next_group() is not None
    store.append(queue.group_committed())
    queue.submit(writer.set("running", 2))
    assert queue.next_group() is not None
    queue.submit(writer.set("pending", 3))
    queue.submit(Writer("other", 2).set("elsewhere", 4))
    assert _content(store.load_doc("a")) == {"committed": 1.0}
    assert _content(queue.load_doc(store, "a")) == {"committed": 1.0, "running": 2.0, "pending": 3.0}
    assert _content(queue.load_doc(store, "other")) == {"elsewhere": 4.0}
    assert queue.load_doc(store, "never") is None


def test_lose_drops_what_is_in_flight_and_drain_hands_it_over() -> None:
    writer = Writer("a", 1)
    effects = [writer.set("x", 1), writer.set("y", 2), writer.set("z", 3)]
    queue = CommitQueue()
    for effect in effects:
        queue.submit(effect)
    assert queue.next_group() is not None
    queue.lose()
    assert (queue.submitted, queue.committed, queue.pending_effects, queue.group_id) == (0, 0, 0, None)
    assert queue.load_doc(MemoryStore(), "a") is None
    assert queue.submit(effects[0]) == 1  # numbering goes on from what was committed

    drained = CommitQueue(group_updates_max=1)
    for effect in effects:
        drained.submit(effect)
    assert drained.next_group() is not None
    assert drained.drain() == effects
    assert (drained.committed, drained.pending_effects, drained.group_id) == (3, 0, None)


def test_queue_refuses_an_empty_group_budget() -> None:
    with pytest.raises(ValueError, match="group_updates_max"):
        CommitQueue(group_updates_max=0)
