"""The workload of the anti-entropy benchmark, shared by the parent and its child processes.

Every doc starts from the same small update (``data["init"] = i``, authored by one fixed client id), so
replicas built independently, in one process or several, start with equal content and equal digests.
Changes are plain Map sets, one transaction each: ``data[f"k{j % KEYS}"] = j`` on a doc picked by a
seeded RNG, so every system replays exactly the same changes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map

from bench._common import KEYS
from crdtsync.store import DocRecord, StoreDescription, StoreError

INIT_CLIENT_ID = 1
"""The Yjs client id that authored every doc's initial content."""
DATA = "data"

Change = tuple[int, str, int]
"""(doc index, Map key, value)."""


def doc_id(index: int) -> str:
    return f"d{index:06d}"


def init_update(index: int) -> bytes:
    """The initial content of doc ``index`` as one update (deterministic bytes)."""
    doc: Doc[Map[Any]] = Doc(client_id=INIT_CLIENT_ID)
    doc.get(DATA, type=Map)["init"] = index
    return doc.get_update()


def changes(count: int, docs: int, seed: int, *, single_doc: bool = False) -> list[Change]:
    """``count`` Map sets over docs drawn uniformly from ``range(docs)`` (all on doc 0 if ``single_doc``)."""
    rng = random.Random(seed)
    out: list[Change] = []
    for j in range(count):
        index = 0 if single_doc else rng.randrange(docs)
        out.append((index, f"k{j % KEYS}", j))
    return out


def distinct_docs(count: int, docs: int, seed: int) -> list[Change]:
    """One Map set on each of ``count`` distinct docs drawn from ``range(docs)``."""
    rng = random.Random(seed)
    return [(index, "k0", j) for j, index in enumerate(rng.sample(range(docs), count))]


def apply_change(doc: Doc[Any], change: Change) -> None:
    _, key, value = change
    doc.get(DATA, type=Map)[key] = value


def clock_sum(state: bytes) -> int:
    """Sum of the clocks of an encoded Yjs state vector: how many items the doc has integrated."""

    def varuint(pos: int) -> tuple[int, int]:
        result = 0
        for shift in range(0, 70, 7):  # a varuint of a 64-bit value has at most 10 bytes
            byte = state[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
        raise ValueError("overlong varuint in a state vector")

    count, pos = varuint(0)
    total = 0
    for _ in range(count):
        _client, pos = varuint(pos)
        clock, pos = varuint(pos)
        total += clock
    return total


class PreloadedStore:
    """A ``crdtsync.Store`` that hands a node the workload's initial docs at start and keeps nothing.

    The benchmark needs nodes that start in sync without replicating anything first; what they persist
    later does not matter to it, so ``append`` drops it (and no store cost is measured).
    """

    def __init__(self, docs: int) -> None:
        self._docs = docs
        self._epoch = 0

    def new_epoch(self) -> int:
        self._epoch = max(time.time_ns() // 1_000_000, self._epoch + 1)
        return self._epoch

    def docs(self) -> Iterator[DocRecord]:
        for index in range(self._docs):
            yield DocRecord(doc_id(index), None, None)

    def load_doc(self, doc_id: str) -> bytes | None:
        index = int(doc_id.removeprefix("d")) if doc_id.startswith("d") and doc_id[1:].isdigit() else -1
        return init_update(index) if 0 <= index < self._docs else None

    def append(self, group: Any) -> None:
        return None

    def backup(self, target: str | Path) -> None:
        raise StoreError(f"cannot back up to {target}: the benchmark's store keeps nothing")

    def describe(self) -> StoreDescription:
        return StoreDescription(name="memory", durable=False, lazy_loading=False)

    def close(self) -> None:
        return None
