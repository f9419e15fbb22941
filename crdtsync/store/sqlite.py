"""The embedded durable store: one SQLite file per node in WAL mode.

Layout (schema version 2)::

    meta(key TEXT PRIMARY KEY, value)        format, node_id, epoch
    docs(doc_id TEXT PRIMARY KEY, state BLOB, digest BLOB, log_updates INT, log_bytes INT, snapshot_bytes INT)
    snapshots(doc_id TEXT PRIMARY KEY, data BLOB, crc INT)
    updates(seq INTEGER PRIMARY KEY, doc_id TEXT, data BLOB, crc INT)   append-only log, indexed by doc_id

Every update a node applies, local or remote, is appended to `updates`: the updates of one doc in
one `Persist` effect as one merged row (`_log_rows`). A doc's log is compacted
into its snapshot with `merge_updates` once it holds `compact_after_updates` updates or
`compact_after_bytes` bytes (and, for a large snapshot, once it is as large as the snapshot), so a
doc loads from one snapshot plus a short log. `state` and `digest` are the doc's state vector and
canonical digest as of its last write (NULL when not yet known): the Merkle tree is rebuilt from
them at start-up without loading docs. Snapshots live in a table of their own: every append updates
its doc's row in `docs`, and SQLite rewrites a whole row to change one column of it (schema version
1 kept the snapshot in that row; a store of version 1 is migrated when it opens).

All methods run on the thread that opened the store; the node runs them on one writer thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from crdtsync.core.effects import Persist
from crdtsync.core.state import is_pycrdt_failure, merge_all
from crdtsync.core.update_check import UpdateError, check_update
from crdtsync.store.base import (
    DocRecord,
    Durability,
    StoreDescription,
    StoreError,
    check_durability,
)

__all__ = [
    "DB_FILE",
    "DocRecord",
    "Durability",
    "SqliteStore",
    "StoreError",
    "check_backup_file",
    "read_backup",
]

SCHEMA_VERSION = 2
MIGRATED_VERSIONS = (1,)
"""Older schema versions a store is migrated from when it opens (and a backup is read in)."""
APPLICATION_ID = 0x43535943  # "CSYC": marks the file as a crdtsync store
DB_FILE = "crdtsync.db"
LOCK_FILE = "crdtsync.lock"
SNAPSHOT_BYTES_REWRITTEN_FREELY = 64 << 10
"""Above this, a snapshot is compacted again only once the log is as large as it (or reaches
`compact_after_bytes`): rewriting a large snapshot every `compact_after_updates` updates made a
long-edited doc quadratic to store (the automerge-paper trace: 1,015 compactions of a snapshot
growing to 4.5 MB)."""
ROWS_PER_STATEMENT = 300
"""Rows in one multi-row INSERT (3 values each: under SQLite's oldest limit of 999 parameters)."""

log = logging.getLogger("crdtsync.store")


class SqliteStore:
    def __init__(
        self,
        data_dir: str | Path,
        *,
        node_id: str,
        durability: Durability = "fsync",
        compact_after_updates: int = 256,
        compact_after_bytes: int = 1 << 20,
    ) -> None:
        self.durability: Durability = check_durability(durability)
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_FILE
        self.compact_after_updates = compact_after_updates
        self.compact_after_bytes = compact_after_bytes
        self._lock = self._take_lock()
        try:
            self._db = self._open(node_id)
        except BaseException:
            self._lock.close()
            raise
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.node_id = node_id
        try:
            self.epoch = self._next_epoch()
        except sqlite3.Error as exc:
            # A start must record its epoch before it may write (client ids are never reused).
            self._reader.close()
            self._db.close()
            self._lock.close()
            raise StoreError(
                f"cannot start on {self.path}: its new epoch could not be committed ({exc}); "
                "free space on the disk or fix it, then start again; nothing was changed"
            ) from exc
        """The epoch taken when the store opened: the first `new_epoch()` hands it out."""
        self._epoch_handed_out = False

    # ------------------------------------------------------------------ opening

    def _take_lock(self) -> BinaryIO:
        """An exclusive lock on the data directory for the life of the store: two processes writing
        one store would interleave epochs and logs."""
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise StoreError(f"data directory {self.data_dir} exists and is not a directory")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.data_dir / LOCK_FILE, "ab")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise StoreError(
                f"data directory {self.data_dir} is in use by another process; nothing was changed"
            ) from None
        return handle

    def _open(self, node_id: str) -> sqlite3.Connection:
        if self.path.exists():
            self._check_header()
            # Verify through a read-only connection: closing a read-write one would checkpoint a
            # crashed store's WAL into the file, changing a store this node may not even own.
            try:
                reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open {self.path}: {exc}; nothing was changed") from exc
            try:
                self._verify(reader, node_id)
            finally:
                reader.close()
        else:
            self._create(node_id)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'fsync' else 'NORMAL'}")
            if self.durability == "none":
                db.execute("PRAGMA synchronous=OFF")
            _migrate(db, self.path)
        except BaseException:
            db.close()
            raise
        return db

    def _check_header(self) -> None:
        """Refuse a file that is not SQLite before SQLite touches it (it would not, but the error
        would say only 'file is not a database')."""
        try:
            with self.path.open("rb") as handle:
                header = handle.read(100)
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        if not header.startswith(b"SQLite format 3\x00"):
            raise StoreError(
                f"{self.path} is not a crdtsync store (not an SQLite database); nothing was changed"
            )
        if len(header) >= 72 and int.from_bytes(header[68:72], "big") != APPLICATION_ID:
            raise StoreError(f"{self.path} is an SQLite database of another application; nothing was changed")

    def _create(self, node_id: str) -> None:
        """Build a new store in a temporary file and rename it into place: a start killed halfway
        leaves no half-made store behind to refuse later."""
        building = self.path.with_name(f"{DB_FILE}.creating")
        building.unlink(missing_ok=True)
        db = sqlite3.connect(building, isolation_level=None)
        try:
            self._create_schema(db, node_id)
        finally:
            db.close()
        os.replace(building, self.path)

    def _create_schema(self, db: sqlite3.Connection, node_id: str) -> None:
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute("BEGIN")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")
        db.execute(
            "CREATE TABLE docs (doc_id TEXT PRIMARY KEY, state BLOB, digest BLOB, log_updates INTEGER NOT"
            " NULL DEFAULT 0, log_bytes INTEGER NOT NULL DEFAULT 0, snapshot_bytes INTEGER NOT NULL DEFAULT 0)"
        )
        db.execute(
            "CREATE TABLE snapshots (doc_id TEXT PRIMARY KEY, data BLOB NOT NULL, crc INTEGER NOT NULL)"
        )
        db.execute(
            "CREATE TABLE updates (seq INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, data BLOB NOT NULL,"
            " crc INTEGER NOT NULL)"
        )
        db.execute("CREATE INDEX updates_by_doc ON updates (doc_id, seq)")
        db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("schema_version", SCHEMA_VERSION), ("node_id", node_id), ("epoch", 0)],
        )
        db.execute("COMMIT")

    def _verify(self, db: sqlite3.Connection, node_id: str) -> None:
        try:
            result = db.execute("PRAGMA quick_check").fetchone()
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except (sqlite3.DatabaseError, MemoryError) as exc:  # SQLITE_NOMEM: see read_backup
            raise StoreError(f"{self.path} is corrupt or unreadable ({exc!r}); nothing was changed") from exc
        if result is None or result[0] != "ok":
            raise StoreError(f"{self.path} failed its integrity check ({result}); nothing was changed")
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION and version not in MIGRATED_VERSIONS:
            raise StoreError(
                f"{self.path} has schema version {version!r}; this crdtsync reads version {SCHEMA_VERSION}"
                f" and migrates versions {', '.join(map(str, MIGRATED_VERSIONS))}"
            )
        if meta.get("node_id") != node_id:
            raise StoreError(
                f"{self.path} belongs to node {meta.get('node_id')!r}, not {node_id!r}; nothing was changed"
            )
        # Page checks do not see a flipped byte inside a blob: every update and snapshot has a CRC.
        try:
            for seq, doc_id, data, crc in db.execute("SELECT seq, doc_id, data, crc FROM updates"):
                if not isinstance(data, bytes) or not _is_crc(crc) or zlib.crc32(data) != crc:
                    raise StoreError(
                        f"{self.path}: update {seq} of doc {doc_id!r} fails its checksum; nothing was changed"
                    )
            for doc_id, snapshot, crc in db.execute(SNAPSHOTS_QUERY[version]):
                if not isinstance(snapshot, bytes) or not _is_crc(crc) or zlib.crc32(snapshot) != crc:
                    raise StoreError(
                        f"{self.path}: the snapshot of doc {doc_id!r} fails its checksum; nothing was changed"
                    )
        except (sqlite3.DatabaseError, MemoryError) as exc:  # SQLITE_NOMEM: see read_backup
            raise StoreError(f"{self.path} is corrupt or unreadable ({exc!r}); nothing was changed") from exc

    def _next_epoch(self) -> int:
        """Persist and return a new epoch: strictly greater than every earlier start of this store."""
        with self._transaction():
            (epoch,) = self._db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            epoch = int(epoch) + 1
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (epoch,))
        return epoch

    def new_epoch(self) -> int:
        """The epoch for a start of the node: the one persisted when the store opened, and a newly
        persisted one for every later start on the same open store."""
        if self._epoch_handed_out:
            self.epoch = self._next_epoch()
        self._epoch_handed_out = True
        return self.epoch

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # A COMMIT that failed (disk full, I/O error) may leave the transaction open, and every
            # later BEGIN would fail with it: roll back whatever is left.
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ writing

    def append(self, group: Sequence[Persist]) -> None:
        """Apply a group of Persist effects in order, in one transaction (one fsync per group).

        Rows go in as multi-row statements, not one statement per row: the sqlite3 module releases
        the GIL around every step, and each step then waits for the event loop's thread to let the
        GIL go again; with a statement per row, a group commit of 30 writes waited for the GIL
        about 100 times and took 5 ms, where the fsync takes under one."""
        touched: dict[str, None] = {}
        with self._transaction():
            for persist in group:
                self._append_one(persist, touched)
            due = self._compaction_due(list(touched))
        try:
            for doc_id in due:
                self.compact(doc_id)
        except sqlite3.Error as exc:
            # The group is committed: a compaction that fails (a full disk) must not report it as
            # failed. The log stays as it is and is compacted at a later append.
            log.warning("compaction in %s failed, the log stays uncompacted: %s", self.path, exc)

    def _append_one(self, persist: Persist, touched: dict[str, None]) -> None:
        rows = _log_rows(persist.updates)
        # Updates handed over (a merged delta counts once), not rows: one effect is one row a doc.
        counts: dict[str, tuple[int, int]] = {}
        for doc_id, _update in persist.updates:
            count, size = counts.get(doc_id, (0, 0))
            counts[doc_id] = (count + 1, size)
        for doc_id, update, _crc in rows:
            count, size = counts[doc_id]
            counts[doc_id] = (count, size + len(update))
        self._insert_rows("INSERT INTO updates (doc_id, data, crc) VALUES {}", rows)
        self._insert_rows(
            "INSERT INTO docs (doc_id, log_updates, log_bytes) VALUES {} ON CONFLICT (doc_id) DO "
            "UPDATE SET log_updates = log_updates + excluded.log_updates,"
            " log_bytes = log_bytes + excluded.log_bytes, state = NULL, digest = NULL",
            [(doc_id, count, size) for doc_id, (count, size) in counts.items()],
        )
        touched.update(dict.fromkeys(counts))
        # After the updates of the same effect: a state record describes the doc after them.
        self._insert_rows(
            "INSERT INTO docs (doc_id, state, digest) VALUES {} ON CONFLICT (doc_id) DO "
            "UPDATE SET state = excluded.state, digest = excluded.digest",
            list(persist.doc_states),
        )
        if persist.drops:
            dropped = [(doc_id,) for doc_id in persist.drops]
            self._db.executemany("DELETE FROM updates WHERE doc_id = ?", dropped)
            self._db.executemany("DELETE FROM snapshots WHERE doc_id = ?", dropped)
            self._db.executemany("DELETE FROM docs WHERE doc_id = ?", dropped)
            for doc_id in persist.drops:
                touched.pop(doc_id, None)

    def _insert_rows(self, statement: str, rows: Sequence[tuple[object, ...]]) -> None:
        """`statement` (its `VALUES {}`) for every row, ROWS_PER_STATEMENT rows a statement."""
        if not rows:
            return
        width = len(rows[0])
        placeholders = "(" + ", ".join("?" * width) + ")"
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            chunk = rows[start : start + ROWS_PER_STATEMENT]
            values = ", ".join([placeholders] * len(chunk))
            self._db.execute(statement.format(values), [value for row in chunk for value in row])

    def _compaction_due(self, doc_ids: list[str]) -> list[str]:
        """Those of `doc_ids` whose log is due for compaction (one query, not one per doc)."""
        due: list[str] = []
        for start in range(0, len(doc_ids), ROWS_PER_STATEMENT):
            chunk = doc_ids[start : start + ROWS_PER_STATEMENT]
            query = (
                f"SELECT doc_id FROM docs WHERE doc_id IN ({', '.join('?' * len(chunk))})"
                " AND (log_bytes >= ? OR (log_updates >= ?"
                " AND (snapshot_bytes <= ? OR log_bytes >= snapshot_bytes)))"
            )
            parameters = [
                *chunk,
                self.compact_after_bytes,
                self.compact_after_updates,
                SNAPSHOT_BYTES_REWRITTEN_FREELY,
            ]
            due.extend(doc_id for (doc_id,) in self._db.execute(query, parameters))
        return due

    def compact(self, doc_id: str) -> None:
        """Merge a doc's log into its snapshot. Content and digest are unchanged by construction."""
        with self._transaction():
            row = self._db.execute("SELECT data FROM snapshots WHERE doc_id = ?", (doc_id,)).fetchone()
            log = self._db.execute(
                "SELECT seq, data FROM updates WHERE doc_id = ? ORDER BY seq", (doc_id,)
            ).fetchall()
            if not log:
                return
            parts = ([row[0]] if row is not None and row[0] is not None else []) + [
                data for _seq, data in log
            ]
            merged = merge_all(parts)
            self._db.execute(
                "INSERT OR REPLACE INTO snapshots (doc_id, data, crc) VALUES (?, ?, ?)",
                (doc_id, merged, zlib.crc32(merged)),
            )
            self._db.execute(
                "UPDATE docs SET log_updates = 0, log_bytes = 0, snapshot_bytes = ? WHERE doc_id = ?",
                (len(merged), doc_id),
            )
            self._db.execute("DELETE FROM updates WHERE doc_id = ? AND seq <= ?", (doc_id, log[-1][0]))

    # ------------------------------------------------------------------ reading

    def load_doc(self, doc_id: str) -> bytes | None:
        """The doc's whole content as one update (snapshot merged with its log), or None. Reads
        through its own connection, so it may run beside a commit on the writer thread (WAL)."""
        return _read_doc(self._reader, self.path, doc_id)

    def docs(self) -> Iterator[DocRecord]:
        """Every stored doc with its last recorded state vector and digest, in doc id order."""
        for doc_id, state, digest in self._reader.execute(
            "SELECT doc_id, state, digest FROM docs ORDER BY doc_id"
        ):
            yield DocRecord(doc_id, state, digest)

    def load(self) -> Iterator[tuple[str, bytes]]:
        """Every doc's content (the `Store` protocol used by the node at start-up)."""
        for record in list(self.docs()):
            content = self.load_doc(record.doc_id)
            if content is not None:
                yield record.doc_id, content

    # ------------------------------------------------------------------ backup and shutdown

    def backup(self, target: str | Path) -> None:
        """Write a consistent copy of the store to `target` (SQLite online backup) while it runs."""
        target_path = Path(target)
        if target_path.exists():
            raise StoreError(f"backup target {target_path} already exists; choose a new file")
        destination = sqlite3.connect(target_path)
        try:
            self._db.backup(destination)
        finally:
            destination.close()

    def describe(self) -> StoreDescription:
        return StoreDescription(name=f"sqlite:{self.path}", durable=True, lazy_loading=True)

    def close(self) -> None:
        self._reader.close()
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        self._lock.close()  # releases the flock


SNAPSHOTS_QUERY = {
    1: "SELECT doc_id, snapshot, snapshot_crc FROM docs WHERE snapshot IS NOT NULL",
    2: "SELECT doc_id, data, crc FROM snapshots",
}
"""Every snapshot with its doc id and CRC, by schema version."""
SNAPSHOT_QUERY = {
    1: "SELECT snapshot, snapshot_crc FROM docs WHERE doc_id = ?",
    2: "SELECT data, crc FROM snapshots WHERE doc_id = ?",
}
"""One doc's snapshot and its CRC, by schema version."""


def _schema_version(db: sqlite3.Connection, path: Path) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = None if row is None else row[0]
    # A hostile backup may hold any SQLite value here: 1.0 and True would pass a lookup by equality.
    if type(version) is not int or version not in SNAPSHOT_QUERY:
        raise StoreError(
            f"{path} has schema version {version!r}; this crdtsync reads {sorted(SNAPSHOT_QUERY)}"
        )
    return version


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring a store of schema version 1 to the current one in one transaction (a kill meanwhile
    leaves it at version 1): its snapshots move out of `docs` into `snapshots`."""
    if _schema_version(db, path) == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "CREATE TABLE snapshots (doc_id TEXT PRIMARY KEY, data BLOB NOT NULL, crc INTEGER NOT NULL)"
        )
        db.execute(
            "INSERT INTO snapshots (doc_id, data, crc) SELECT doc_id, snapshot, snapshot_crc FROM docs"
            " WHERE snapshot IS NOT NULL"
        )
        db.execute(
            "CREATE TABLE docs_v2 (doc_id TEXT PRIMARY KEY, state BLOB, digest BLOB, log_updates INTEGER NOT"
            " NULL DEFAULT 0, log_bytes INTEGER NOT NULL DEFAULT 0, snapshot_bytes INTEGER NOT NULL DEFAULT 0)"
        )
        db.execute(
            "INSERT INTO docs_v2 SELECT doc_id, state, digest, log_updates, log_bytes,"
            " COALESCE(length(snapshot), 0) FROM docs"
        )
        db.execute("DROP TABLE docs")
        db.execute("ALTER TABLE docs_v2 RENAME TO docs")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise StoreError(f"cannot migrate {path} to schema version {SCHEMA_VERSION}: {exc}") from exc
    log.info("migrated %s from schema version 1 to %d", path, SCHEMA_VERSION)


def _read_doc(
    db: sqlite3.Connection, path: Path, doc_id: str, *, version: int = SCHEMA_VERSION, untrusted: bool = False
) -> bytes | None:
    """The doc's snapshot merged with its log. `untrusted` (a backup from anywhere) also walks
    every part with the structural update check first: merging malformed bytes can panic pycrdt."""
    # One read transaction: a compaction committing between the two reads would otherwise move
    # log entries into a snapshot this read already passed.
    db.execute("BEGIN")
    try:
        row = db.execute(SNAPSHOT_QUERY[version], (doc_id,)).fetchone()
        log = db.execute("SELECT data, crc FROM updates WHERE doc_id = ? ORDER BY seq", (doc_id,)).fetchall()
    finally:
        db.execute("COMMIT")
    parts = [(row[0], row[1])] if row is not None and row[0] is not None else []
    parts += log
    for data, crc in parts:
        # SQLite columns take any type; a hand-edited or hostile file can hold an int as a blob.
        if not isinstance(data, bytes) or not _is_crc(crc) or zlib.crc32(data) != crc:
            raise StoreError(f"{path}: stored content of doc {doc_id!r} fails its checksum")
        if untrusted:
            try:
                check_update(data)
            except UpdateError as exc:
                raise StoreError(
                    f"{path}: stored content of doc {doc_id!r} is not a valid update: {exc}"
                ) from exc
    return merge_all([data for data, _crc in parts]) if parts else None


def _log_rows(updates: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes, int]]:
    """The log rows (doc id, data, crc) of one effect's updates: one row per doc, its updates merged.
    An editor's keystrokes come a hundred to an effect: merged, they cost one row, one checksum and
    one index entry instead of a hundred (the automerge-paper trace: the store thread's CPU per edit
    halved, and the merge itself costs under 1 us an update; a node's own keystrokes now come
    merged already, as the deltas they left in). The node applied every one of these updates to its
    doc, so they merge; if pycrdt still refuses, they are kept a row each."""
    by_doc: dict[str, list[bytes]] = {}
    for doc_id, update in updates:
        by_doc.setdefault(doc_id, []).append(update)
    rows: list[tuple[str, bytes, int]] = []
    for doc_id, doc_updates in by_doc.items():
        if len(doc_updates) > 1:
            try:
                doc_updates = [merge_all(doc_updates)]
            except BaseException as exc:
                if not is_pycrdt_failure(exc):
                    raise
                log.warning(
                    "could not merge %d updates of doc %r, stored one by one: %s",
                    len(doc_updates),
                    doc_id,
                    exc,
                )
        rows.extend((doc_id, update, zlib.crc32(update)) for update in doc_updates)
    return rows


def _is_crc(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_backup_file(path: str | Path) -> None:
    """Refuse a file that is not a whole crdtsync backup: not SQLite, another application's, or cut
    short (a copy interrupted by a kill or a dropped connection): its size must be what its header
    says (page size x page count), which SQLite itself does not check when it reads."""
    source = Path(path)
    if not source.is_file():
        raise StoreError(f"backup {source} does not exist or is not a file")
    with source.open("rb") as handle:
        header = handle.read(100)
    if (
        len(header) < 100
        or not header.startswith(b"SQLite format 3\x00")
        or int.from_bytes(header[68:72], "big") != APPLICATION_ID
    ):
        raise StoreError(f"{source} is not a crdtsync backup")
    page_bytes = int.from_bytes(header[16:18], "big")
    page_bytes = 65536 if page_bytes == 1 else page_bytes  # the header's encoding of 64 KiB
    pages = int.from_bytes(header[28:32], "big")
    size = source.stat().st_size
    if size != page_bytes * pages:
        raise StoreError(
            f"backup {source} is incomplete or damaged: {size} bytes, its header says "
            f"{pages} pages of {page_bytes} bytes ({page_bytes * pages} bytes)"
        )


def read_backup(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """Every doc's content from a backup file made by `SqliteStore.backup`, read-only."""
    source = Path(path)
    check_backup_file(source)
    db = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    try:
        version = _schema_version(db, source)
        doc_ids = [doc_id for (doc_id,) in db.execute("SELECT doc_id FROM docs ORDER BY doc_id")]
        for doc_id in doc_ids:
            if not isinstance(doc_id, str):
                raise StoreError(f"backup {source} holds a doc id that is not text: {doc_id!r:.80}")
            content = _read_doc(db, source, doc_id, version=version, untrusted=True)
            if content is not None:
                yield doc_id, content
    except (sqlite3.DatabaseError, MemoryError) as exc:
        # SQLite reports some corrupt pages as out of memory (SQLITE_NOMEM): found by fuzz.http_api.
        raise StoreError(f"backup {source} is unreadable: {exc!r}") from exc
    finally:
        db.close()
