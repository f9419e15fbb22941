"""The `Store` contract: everything a `Node` (and the simulator's durable mode) asks of a store."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args

from crdtsync.core.effects import Persist

Durability = Literal["fsync", "process", "none"]
"""What a completed commit promises:

- `fsync`: the commit is on stable storage (the WAL is fsynced); survives power loss.
- `process`: the commit is in the operating system; survives the process being killed, not an OS
  crash or power loss (SQLite `synchronous=NORMAL` in WAL mode).
- `none`: nothing is waited for; `flush()` returns once updates are queued for the store. A kill
  may lose the last few groups. For caches that peers can refill.
"""
DURABILITIES: tuple[Durability, ...] = get_args(Durability)


def check_durability(value: object) -> Durability:
    """The one check of a durability setting (`NodeConfig`, `SqliteStore`, the daemon's config)."""
    if value not in DURABILITIES:
        raise ValueError(
            f"durability must be {', '.join(DURABILITIES[:-1])} or {DURABILITIES[-1]}, not {value!r}"
        )
    return value


class StoreError(RuntimeError):
    """A store cannot do what was asked: a data directory that cannot be used, stored content that
    fails its checks, a backup the store cannot make or read. The message names the file and the
    problem."""


class StoreCommitError(StoreError):
    """The store could not commit (disk full, an I/O error): nothing of the group is in it. The
    writer keeps the group and retries it; `full` tells a full disk from other failures."""

    def __init__(self, message: str, *, full: bool) -> None:
        super().__init__(message)
        self.full = full


@dataclass(frozen=True, slots=True)
class DocRecord:
    """A stored doc as the node registers it at start: its id, and its state vector and canonical
    digest as last recorded (None when an update came after the last record)."""

    doc_id: str
    state: bytes | None
    digest: bytes | None


@dataclass(frozen=True, slots=True)
class StoreDescription:
    """What kind of store this is, as the node needs to know it."""

    name: str
    """`memory`, or `sqlite:` and the database path (shown in `NodeStatus.store`)."""
    durable: bool
    """Content survives the process: appends are real I/O, so the node commits them in groups from
    a writer thread; a store that is not durable is appended to inline on the event loop."""
    lazy_loading: bool
    """Docs can be loaded one at a time on first use and evicted again: at start the node registers
    `docs()` with their recorded digests instead of loading every doc."""


class Store(Protocol):
    """Where a node's updates live between restarts of its `Node` object.

    All methods are called from one thread at a time, except `load_doc`, which the node may call on
    its event-loop thread while `append` runs on the writer thread (a store that cannot allow that
    must lock). `MemoryStore` and `SqliteStore` implement it; a custom store implements all of it.
    """

    def new_epoch(self) -> int:
        """The epoch for a start of the node on this store: strictly greater than every epoch this
        store handed out before (peers tell incarnations apart by it)."""
        ...

    def docs(self) -> Iterator[DocRecord]:
        """Every stored doc with its last recorded state vector and digest, in doc id order."""
        ...

    def load_doc(self, doc_id: str) -> bytes | None:
        """The doc's whole content as one causally complete update, or None for a doc not stored.
        Raises `StoreError` for content that fails its checks (the node then refills the doc from
        its peers)."""
        ...

    def append(self, group: Sequence[Persist]) -> None:
        """Apply a group of `Persist` effects in order, all or nothing: each effect's updates (in the
        order the node applied them), then its doc state records, which describe the doc after those
        updates; an update to a doc clears the doc's recorded state and digest."""
        ...

    def backup(self, target: str | Path) -> None:
        """Write a consistent copy of the store to the new file `target`, in the format
        `crdtsync.store.sqlite.read_backup` reads; raises `StoreError` if the store cannot."""
        ...

    def describe(self) -> StoreDescription: ...

    def close(self) -> None: ...
