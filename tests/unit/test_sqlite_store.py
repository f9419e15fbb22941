"""SqliteStore on its own: reopening, epochs, compaction, refusing files it must not touch, backups.

Randomized tests print their seed; replay one with CRDTSYNC_TEST_SEED=<seed>.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import random
import shutil
import sqlite3
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map, Text

from crdtsync import NodeConfig
from crdtsync.core.effects import Persist
from crdtsync.core.state import MERGE_CHUNK, digest, merge_all
from crdtsync.store import sqlite as sqlite_module
from crdtsync.store.sqlite import DB_FILE, SqliteStore, StoreError, read_backup

NEVER = 1 << 40
"""A compaction threshold that is never reached: the log keeps every update."""

PAGE_BYTES = 4096


def _seeds() -> list[int]:
    if "CRDTSYNC_TEST_SEED" in os.environ:
        return [int(os.environ["CRDTSYNC_TEST_SEED"])]
    return [11, 12, 13]


SEEDS = _seeds()


class Workload:
    """Reference docs written with Map sets, overwrites, deletes and Text edits; every transaction's
    update is captured in order, as the node would persist it."""

    def __init__(self, seed: int, docs: int) -> None:
        self.rng = random.Random(seed)
        self.docs: dict[str, Doc[Any]] = {}
        self.updates: list[tuple[str, bytes]] = []
        for index in range(docs):
            doc_id = f"models/m{index}"
            doc: Doc[Any] = Doc(client_id=self.rng.randrange(1, 1 << 40))
            doc.observe(lambda event, doc_id=doc_id: self.updates.append((doc_id, event.update)))
            self.docs[doc_id] = doc

    def write(self, count: int) -> list[tuple[str, bytes]]:
        """Make `count` transactions; return their updates."""
        first = len(self.updates)
        for _ in range(count):
            doc_id = self.rng.choice(sorted(self.docs))
            doc = self.docs[doc_id]
            data = doc.get("data", type=Map)
            keys = sorted(data.keys())
            roll = self.rng.random()
            if keys and roll < 0.2:
                data[self.rng.choice(keys)] = f"overwritten-{self.rng.randrange(1 << 30)}"
            elif keys and roll < 0.3:
                del data[self.rng.choice(keys)]
            elif roll < 0.45:
                text = doc.get("notes", type=Text)
                text.insert(self.rng.randrange(len(text) + 1), f"<{self.rng.randrange(100)}>")
            else:
                data[f"key-{len(self.updates)}"] = {"value": self.rng.randrange(1 << 30), "ok": True}
        return self.updates[first:]

    def contents(self) -> dict[str, tuple[str, bytes]]:
        return {doc_id: (_json(doc), digest(doc)) for doc_id, doc in self.docs.items()}


def _json(doc: Doc[Any]) -> str:
    return json.dumps(
        {"data": doc.get("data", type=Map).to_py(), "notes": str(doc.get("notes", type=Text))}, sort_keys=True
    )


def _write(store: SqliteStore, updates: list[tuple[str, bytes]], group: int = 50) -> None:
    """Hand updates to the store the way the node's writer does: groups of Persist effects."""
    for start in range(0, len(updates), group):
        store.append([Persist(tuple(updates[start : start + group]))])


def _loaded(pairs: Iterator[tuple[str, bytes]]) -> dict[str, tuple[str, bytes]]:
    out: dict[str, tuple[str, bytes]] = {}
    for doc_id, update in pairs:
        doc: Doc[Any] = Doc()
        doc.apply_update(update)
        out[doc_id] = (_json(doc), digest(doc))
    return out


def _store_contents(store: SqliteStore) -> dict[str, tuple[str, bytes]]:
    return _loaded(store.load())


def _contents_after_reopen(data_dir: Path) -> dict[str, tuple[str, bytes]]:
    """What a store opened afresh on `data_dir` loads (then closed again)."""
    reopened = SqliteStore(data_dir, node_id="a")
    try:
        return _store_contents(reopened)
    finally:
        reopened.close()


def _log_rows(path: Path, doc_id: str | None = None) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if doc_id is None:
            (count,) = db.execute("SELECT COUNT(*) FROM updates").fetchone()
        else:
            (count,) = db.execute("SELECT COUNT(*) FROM updates WHERE doc_id = ?", (doc_id,)).fetchone()
    finally:
        db.close()
    return int(count)


def _rows_expected(updates: list[tuple[str, bytes]], group: int = 50) -> int:
    """Log rows after `_write(store, updates, group)` without compaction: one per doc and effect
    (the store merges an effect's updates of one doc into one row)."""
    return sum(
        len({doc_id for doc_id, _update in updates[start : start + group]})
        for start in range(0, len(updates), group)
    )


def _files(directory: Path) -> dict[str, str]:
    """The sha256 of the store's durable bytes: the database file and a non-empty WAL. (The `-shm` file
    is a rebuildable index SQLite may rewrite on any read, and an empty WAL holds nothing.)"""
    paths = [directory / DB_FILE, directory / f"{DB_FILE}-wal"]
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in paths
        if path.exists() and (path.name == DB_FILE or path.stat().st_size > 0)
    }


def _real_store(directory: Path, *, seed: int = 1, writes: int = 400) -> Path:
    """A closed store of node `a` with a few hundred updates in its log; returns its db file."""
    store = SqliteStore(directory, node_id="a", compact_after_updates=NEVER, compact_after_bytes=NEVER)
    _write(store, Workload(seed, docs=4).write(writes))
    store.close()
    return directory / DB_FILE


# ---------------------------------------------------------------------------------------- reopening


@pytest.mark.parametrize("seed", SEEDS)
def test_reopen_keeps_every_update_and_content_equals_what_was_written(seed: int, tmp_path: Path) -> None:
    print(f"seed={seed} (replay with CRDTSYNC_TEST_SEED={seed})")
    workload = Workload(seed, docs=5)
    store = SqliteStore(tmp_path, node_id="a", compact_after_updates=NEVER, compact_after_bytes=NEVER)
    written = workload.write(300)
    _write(store, written)
    store.close()

    reopened = SqliteStore(tmp_path, node_id="a", compact_after_updates=NEVER, compact_after_bytes=NEVER)
    try:
        assert _log_rows(reopened.path) == _rows_expected(written), "a row per doc and effect written"
        assert _store_contents(reopened) == workload.contents()
        # More writes after the reopen land on top of the old ones.
        more = workload.write(100)
        _write(reopened, more)
        assert _store_contents(reopened) == workload.contents()
    finally:
        reopened.close()
    again = SqliteStore(tmp_path, node_id="a")
    try:
        assert _store_contents(again) == workload.contents()
    finally:
        again.close()


def test_updates_that_do_not_merge_are_stored_a_row_each_and_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    workload = Workload(5, docs=2)
    written = workload.write(40)

    def refuse(updates: list[bytes]) -> bytes:
        raise ValueError("cannot merge")

    monkeypatch.setattr(sqlite_module, "merge_all", refuse)
    store = SqliteStore(tmp_path, node_id="a", compact_after_updates=NEVER, compact_after_bytes=NEVER)
    try:
        _write(store, written)
        assert _log_rows(store.path) == len(written)
        assert "could not merge" in caplog.text
    finally:
        store.close()
    monkeypatch.undo()
    reopened = SqliteStore(tmp_path, node_id="a")
    try:
        assert _store_contents(reopened) == workload.contents()
    finally:
        reopened.close()


def test_epochs_strictly_increase_across_opens(tmp_path: Path) -> None:
    epochs = []
    for _ in range(5):
        store = SqliteStore(tmp_path, node_id="a")
        epochs.append(store.epoch)
        store.close()
    # An open that is never closed (the process died) still used up its epoch.
    abandoned = SqliteStore(tmp_path, node_id="a")
    epochs.append(abandoned.epoch)
    abandoned._lock.close()  # what the OS does to a dead process's data-dir lock
    reopened = SqliteStore(tmp_path, node_id="a")
    epochs.append(reopened.epoch)
    reopened.close()
    abandoned.close()
    assert all(earlier < later for earlier, later in itertools.pairwise(epochs)), epochs


# ---------------------------------------------------------------------------------------- compaction


@pytest.mark.parametrize("seed", SEEDS)
def test_compaction_by_threshold_keeps_content_and_digest_and_shrinks_the_log(
    seed: int, tmp_path: Path
) -> None:
    print(f"seed={seed} (replay with CRDTSYNC_TEST_SEED={seed})")
    threshold = 8
    workload = Workload(seed, docs=3)
    written = workload.write(600)
    store = SqliteStore(tmp_path, node_id="a", compact_after_updates=threshold, compact_after_bytes=NEVER)
    try:
        _write(store, written, group=5)
        rows = _log_rows(store.path)
        assert rows < len(workload.docs) * threshold, f"{rows} log rows left of {len(written)} updates"
        assert _store_contents(store) == workload.contents()
    finally:
        store.close()
    reopened = SqliteStore(tmp_path, node_id="a", compact_after_updates=threshold, compact_after_bytes=NEVER)
    try:
        assert _store_contents(reopened) == workload.contents()
    finally:
        reopened.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_a_group_of_more_rows_than_one_statement_holds_is_stored_whole_and_compacted(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows go in as multi-row statements of ROWS_PER_STATEMENT rows (7 here, 300 in use): a group
    of more updates, docs and states than that is split, nothing is lost, and every doc past its
    threshold is compacted."""
    print(f"seed={seed} (replay with CRDTSYNC_TEST_SEED={seed})")
    monkeypatch.setattr(sqlite_module, "ROWS_PER_STATEMENT", 7)
    workload = Workload(seed, docs=30)
    written = workload.write(100)
    states = tuple((doc_id, doc.get_state(), digest(doc)) for doc_id, doc in workload.docs.items())
    updates_of = collections.Counter(doc_id for doc_id, _update in written)
    store = SqliteStore(tmp_path, node_id="a", compact_after_updates=2, compact_after_bytes=NEVER)
    try:
        store.append([Persist(tuple(written), doc_states=states)])
        written_docs = {
            doc_id: content for doc_id, content in workload.contents().items() if doc_id in updates_of
        }
        assert _store_contents(store) == written_docs
        assert _log_rows(store.path) == sum(1 for count in updates_of.values() if count == 1)
        recorded = {record.doc_id: (record.state, record.digest) for record in store.docs()}
        assert recorded == {doc_id: (state, doc_digest) for doc_id, state, doc_digest in states}
    finally:
        store.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_compact_merges_more_than_one_chunk_keeping_content_and_digest_and_empties_the_log(
    seed: int, tmp_path: Path
) -> None:
    print(f"seed={seed} (replay with CRDTSYNC_TEST_SEED={seed})")
    workload = Workload(seed, docs=2)
    written = workload.write(3 * MERGE_CHUNK * 2)  # ~3 chunks per doc: the merge runs on two levels
    store = SqliteStore(tmp_path, node_id="a", compact_after_updates=NEVER, compact_after_bytes=NEVER)
    try:
        _write(store, written, group=1)  # a row each: the compaction merges more than MERGE_CHUNK
        assert _log_rows(store.path) == len(written)
        before = _store_contents(store)
        assert before == workload.contents()
        for doc_id in sorted(workload.docs):
            assert _log_rows(store.path, doc_id) > MERGE_CHUNK
            store.compact(doc_id)
            assert _log_rows(store.path, doc_id) == 0
            assert _store_contents(store) == before, f"compacting {doc_id} changed content"
        store.compact(sorted(workload.docs)[0])  # nothing left to compact: a no-op
        assert _store_contents(store) == before
        # Writes after compaction go on top of the snapshot, and a second compaction merges both.
        _write(store, workload.write(100))
        assert 0 < _log_rows(store.path) <= 100
        for doc_id in sorted(workload.docs):
            store.compact(doc_id)
        assert _log_rows(store.path) == 0
        assert _store_contents(store) == workload.contents()
    finally:
        store.close()
    reopened = SqliteStore(tmp_path, node_id="a")
    try:
        assert _store_contents(reopened) == workload.contents()
    finally:
        reopened.close()


def test_a_large_snapshot_is_compacted_again_only_once_the_log_is_as_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rewriting a large snapshot every `compact_after_updates` updates made a long-edited doc
    quadratic to store: above SNAPSHOT_BYTES_REWRITTEN_FREELY the log grows to the snapshot's size
    first, and the doc's content never changes."""
    monkeypatch.setattr(sqlite_module, "SNAPSHOT_BYTES_REWRITTEN_FREELY", 0)
    workload = Workload(3, docs=1)
    store = SqliteStore(tmp_path, node_id="a", compact_after_updates=4, compact_after_bytes=NEVER)
    try:
        _write(store, workload.write(40), group=40)  # no snapshot yet: compacted at once
        assert _log_rows(store.path) == 0
        (snapshot_bytes,) = store._db.execute("SELECT length(data) FROM snapshots").fetchone()
        logged = 0
        while logged < snapshot_bytes:
            assert _log_rows(store.path) == len(workload.updates) - 40, (
                "compacted before the log was as large"
            )
            update = workload.write(1)
            _write(store, update)
            logged += len(update[0][1])
        assert _log_rows(store.path) == 0, "the log reached the snapshot's size and was not compacted"
        assert _store_contents(store) == workload.contents()
    finally:
        store.close()


def _v1_store(directory: Path, updates: list[tuple[str, bytes]]) -> Path:
    """A store as schema version 1 laid it out (snapshots inside `docs`): the first half of each
    doc's updates merged into its snapshot, the rest in the log."""
    directory.mkdir()
    path = directory / DB_FILE
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA application_id={sqlite_module.APPLICATION_ID}")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")
        db.execute(
            "CREATE TABLE docs (doc_id TEXT PRIMARY KEY, snapshot BLOB, snapshot_crc INTEGER, state BLOB,"
            " digest BLOB, log_updates INTEGER NOT NULL DEFAULT 0, log_bytes INTEGER NOT NULL DEFAULT 0)"
        )
        db.execute(
            "CREATE TABLE updates (seq INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, data BLOB NOT NULL,"
            " crc INTEGER NOT NULL)"
        )
        db.execute("CREATE INDEX updates_by_doc ON updates (doc_id, seq)")
        db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("schema_version", 1), ("node_id", "a"), ("epoch", 3)],
        )
        by_doc: dict[str, list[bytes]] = collections.defaultdict(list)
        for doc_id, update in updates:
            by_doc[doc_id].append(update)
        for doc_id, doc_updates in by_doc.items():
            half = len(doc_updates) // 2
            snapshot = merge_all(doc_updates[:half])
            db.execute(
                "INSERT INTO docs (doc_id, snapshot, snapshot_crc, log_updates, log_bytes) VALUES (?, ?, ?, ?, ?)",
                (doc_id, snapshot, zlib.crc32(snapshot), len(doc_updates) - half, 0),
            )
            db.executemany(
                "INSERT INTO updates (doc_id, data, crc) VALUES (?, ?, ?)",
                [(doc_id, update, zlib.crc32(update)) for update in doc_updates[half:]],
            )
    finally:
        db.close()
    return path


def test_a_store_of_schema_version_1_is_migrated_at_open_keeping_every_doc(tmp_path: Path) -> None:
    workload = Workload(21, docs=3)
    v1_path = _v1_store(tmp_path / "data", workload.write(90))
    v1_backup = tmp_path / "v1-backup.db"
    shutil.copy(v1_path, v1_backup)
    store = SqliteStore(tmp_path / "data", node_id="a")
    try:
        assert store.epoch == 4
        assert _store_contents(store) == workload.contents()
        (version,) = store._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == sqlite_module.SCHEMA_VERSION
        moved = dict(store._db.execute("SELECT doc_id, length(data) FROM snapshots").fetchall())
        recorded = dict(store._db.execute("SELECT doc_id, snapshot_bytes FROM docs").fetchall())
        assert moved == recorded and len(moved) == len(workload.docs)
        _write(store, workload.write(30))  # and it keeps working in the new layout
    finally:
        store.close()
    assert _contents_after_reopen(tmp_path / "data") == workload.contents()
    # A backup taken by version 1 is still read whole.
    assert _loaded(read_backup(v1_backup)) == _loaded(iter(_v1_contents(v1_backup)))


def _v1_contents(path: Path) -> list[tuple[str, bytes]]:
    """Each doc of a version-1 file as one update, read here without the store."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = []
        for doc_id, snapshot in db.execute("SELECT doc_id, snapshot FROM docs ORDER BY doc_id").fetchall():
            log = [
                data
                for (data,) in db.execute("SELECT data FROM updates WHERE doc_id = ? ORDER BY seq", (doc_id,))
            ]
            out.append((doc_id, merge_all([snapshot, *log])))
        return out
    finally:
        db.close()


# ---------------------------------------------------------------------------------------- refusals


def _assert_refused(data_dir: Path, node_id: str, *fragments: str) -> None:
    """Opening raises StoreError naming the file and the problem, and the store's bytes do not change."""
    before = _files(data_dir)
    with pytest.raises(StoreError) as raised:
        SqliteStore(data_dir, node_id=node_id)
    message = str(raised.value)
    assert str(data_dir / DB_FILE) in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert _files(data_dir) == before, "a refused open changed the store's files"


@pytest.mark.parametrize("application_id", [0, 0x12345678])
def test_a_foreign_sqlite_database_is_refused_and_left_unchanged(application_id: int, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute(f"PRAGMA application_id={application_id}")
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO customers (name) VALUES ('ada')")
    db.commit()
    db.close()
    _assert_refused(tmp_path, "a", "another application")


@pytest.mark.parametrize(
    "content", [b"name,value\nflag,1\n" * 100, b"SQLite format 3"], ids=["csv", "short-magic"]
)
def test_a_file_that_is_not_sqlite_is_refused_and_left_unchanged(content: bytes, tmp_path: Path) -> None:
    (tmp_path / DB_FILE).write_bytes(content)
    _assert_refused(tmp_path, "a", "not an SQLite database")


def test_a_store_of_another_node_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    _real_store(tmp_path)
    _assert_refused(tmp_path, "b", "belongs to node 'a'", "'b'")


def test_a_crashed_store_of_another_node_is_refused_and_its_files_left_unchanged(tmp_path: Path) -> None:
    # Regression: verification used a read-write connection whose close checkpointed the WAL of a
    # crashed store into crdtsync.db, although the error said nothing was changed.
    live = tmp_path / "live"
    store = SqliteStore(live, node_id="a", compact_after_updates=NEVER, compact_after_bytes=NEVER)
    _write(store, Workload(5, docs=3).write(300))
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for path in live.iterdir():  # what kill -9 leaves behind: db, WAL and shared-memory index
        shutil.copyfile(path, crashed / path.name)
    store.close()
    assert (crashed / f"{DB_FILE}-wal").stat().st_size > 0
    _assert_refused(crashed, "b", "belongs to node 'a'")


def test_a_truncated_store_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    db_file = _real_store(tmp_path)
    size = db_file.stat().st_size
    assert size >= 8 * PAGE_BYTES
    with db_file.open("r+b") as handle:
        handle.truncate(size // 2)
    _assert_refused(tmp_path, "a", "corrupt")


@pytest.mark.parametrize("seed", SEEDS)
def test_a_store_with_a_garbage_page_in_the_middle_is_refused_and_left_unchanged(
    seed: int, tmp_path: Path
) -> None:
    print(f"seed={seed} (replay with CRDTSYNC_TEST_SEED={seed})")
    db_file = _real_store(tmp_path, seed=seed)
    pages = db_file.stat().st_size // PAGE_BYTES
    rng = random.Random(seed)
    page = rng.randrange(pages // 4, 3 * pages // 4)
    print(f"overwriting page {page + 1} of {pages}")
    with db_file.open("r+b") as handle:
        handle.seek(page * PAGE_BYTES)
        handle.write(rng.randbytes(PAGE_BYTES))
    before = _files(tmp_path)
    with pytest.raises(StoreError, match=r"corrupt|integrity") as raised:
        SqliteStore(tmp_path, node_id="a")
    assert str(db_file) in str(raised.value)
    assert _files(tmp_path) == before


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda at: (at - 12, b"\xff" * 12), id="garbled-update-structure"),
        pytest.param(lambda at: (at, b"VALUE-999"), id="altered-string-content"),
    ],
)
def test_corrupted_bytes_inside_a_stored_update_are_detected_and_the_file_left_unchanged(
    damage: Callable[[int], tuple[int, bytes]], tmp_path: Path
) -> None:
    # Regression: blobs had no checksum, so damaged bytes inside an update passed quick_check and
    # loaded as altered content or failed later with a bare ValueError.
    store = SqliteStore(tmp_path, node_id="a", compact_after_updates=NEVER, compact_after_bytes=NEVER)
    doc: Doc[Any] = Doc()
    updates: list[tuple[str, bytes]] = []
    doc.observe(lambda event: updates.append(("doc", event.update)))
    data = doc.get("data", type=Map)
    for index in range(100):
        data[f"k{index:03d}"] = f"value-{index:03d}-" + "x" * 20
    _write(store, updates)
    store.close()
    db_file = tmp_path / DB_FILE
    content = bytearray(db_file.read_bytes())
    assert content.count(b"value-050-") == 1
    start, replacement = damage(content.find(b"value-050-"))
    content[start : start + len(replacement)] = replacement
    db_file.write_bytes(bytes(content))
    before = _files(tmp_path)
    with pytest.raises(StoreError):
        reopened = SqliteStore(tmp_path, node_id="a")
        try:
            loaded = _store_contents(reopened)  # detection at load time would still be a StoreError
            print(f"loaded without error; k050 is now {json.loads(loaded['doc'][0])['data']['k050']!r}")
        finally:
            reopened.close()
    assert _files(tmp_path) == before


# ---------------------------------------------------------------------------------------- backups


@pytest.mark.parametrize("seed", SEEDS)
def test_backup_is_read_back_with_equal_content_and_the_source_stays_usable(
    seed: int, tmp_path: Path
) -> None:
    print(f"seed={seed} (replay with CRDTSYNC_TEST_SEED={seed})")
    workload = Workload(seed, docs=4)
    store = SqliteStore(tmp_path / "data", node_id="a", compact_after_updates=16)
    try:
        _write(store, workload.write(400))
        at_backup = workload.contents()
        target = tmp_path / "backup.db"
        store.backup(target)
        assert _loaded(read_backup(target)) == at_backup
        # The source keeps taking writes; the backup stays as it was.
        _write(store, workload.write(100))
        assert _store_contents(store) == workload.contents()
        assert _loaded(read_backup(target)) == at_backup
    finally:
        store.close()
    assert _contents_after_reopen(tmp_path / "data") == workload.contents()


def test_backup_to_an_existing_path_raises_and_leaves_that_file_alone(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "data", node_id="a")
    try:
        _write(store, Workload(3, docs=1).write(10))
        existing = tmp_path / "precious.db"
        existing.write_bytes(b"do not overwrite")
        with pytest.raises(StoreError, match="already exists"):
            store.backup(existing)
        assert existing.read_bytes() == b"do not overwrite"
        store.backup(tmp_path / "fresh.db")  # the store is still usable for a backup to a new path
        with pytest.raises(StoreError, match="already exists"):
            store.backup(tmp_path / "fresh.db")
    finally:
        store.close()


def test_read_backup_refuses_a_file_that_is_not_a_crdtsync_backup(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a crdtsync backup"):
        list(read_backup(foreign))
    with pytest.raises(StoreError, match="does not exist"):
        list(read_backup(tmp_path / "missing.db"))


def _tampered_backup(tmp_path: Path, statement: str, parameters: tuple[Any, ...] = ()) -> Path:
    """A real backup of one doc, then edited with `statement`: what a hand-edited or hostile file holds."""
    store = SqliteStore(tmp_path / "data", node_id="a")
    try:
        _write(store, Workload(5, docs=1).write(3))
        target = tmp_path / "tampered.db"
        store.backup(target)
    finally:
        store.close()
    db = sqlite3.connect(target, isolation_level=None)
    try:
        db.execute(statement, parameters)
    finally:
        db.close()
    return target


GARBAGE_UPDATE = b"\x01\x01\xff\xff\xff\x0f\x00"


@pytest.mark.parametrize(
    ("statement", "parameters", "message"),
    [
        # Found by fuzz.http_api in CI: a blob column holding an integer raised TypeError out of zlib.
        ("UPDATE updates SET data = 7", (), "fails its checksum"),
        ("UPDATE updates SET crc = 'x'", (), "fails its checksum"),
        ("UPDATE docs SET doc_id = X'0102'", (), "doc id that is not text"),
        ("UPDATE meta SET value = 2.0 WHERE key = 'schema_version'", (), "schema version 2.0"),
        ("UPDATE meta SET value = 3 WHERE key = 'schema_version'", (), "schema version 3"),
        # A matching checksum over bytes that are no update: merging them could panic pycrdt.
        (
            "UPDATE updates SET data = ?, crc = ?",
            (GARBAGE_UPDATE, zlib.crc32(GARBAGE_UPDATE)),
            "not a valid update",
        ),
    ],
)
def test_read_backup_names_a_tampered_row_instead_of_failing_on_it(
    tmp_path: Path, statement: str, parameters: tuple[Any, ...], message: str
) -> None:
    target = _tampered_backup(tmp_path, statement, parameters)
    with pytest.raises(StoreError, match=message):
        list(read_backup(target))


# ---------------------------------------------------------------------------------------- durability


@pytest.mark.parametrize("durability", ["fsync", "process", "none"])
def test_each_durability_value_opens_a_store_that_keeps_its_writes(durability: Any, tmp_path: Path) -> None:
    workload = Workload(7, docs=2)
    store = SqliteStore(tmp_path, node_id="a", durability=durability)
    assert store.durability == durability
    _write(store, workload.write(50))
    store.close()
    reopened = SqliteStore(tmp_path, node_id="a", durability=durability)
    try:
        assert _store_contents(reopened) == workload.contents()
    finally:
        reopened.close()


@pytest.mark.parametrize("durability", ["FSYNC", "sync", "", "full"])
def test_an_unknown_durability_value_is_rejected_before_anything_is_created(
    durability: Any, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="durability must be fsync, process or none"):
        SqliteStore(tmp_path / "data", node_id="a", durability=durability)
    with pytest.raises(ValueError, match="durability must be fsync, process or none"):
        NodeConfig(
            node_id="a", listen="tcp://127.0.0.1:5555", data_dir=str(tmp_path / "data"), durability=durability
        )
    assert not (tmp_path / "data").exists()


def test_a_data_dir_in_use_by_another_store_is_refused(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path, node_id="a")
    try:
        with pytest.raises(StoreError, match="in use by another process"):
            SqliteStore(tmp_path, node_id="a")
    finally:
        first.close()
    SqliteStore(tmp_path, node_id="a").close()  # free again once the first is closed
