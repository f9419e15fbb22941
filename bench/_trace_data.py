"""The automerge-paper editing trace (bench/data/README.md) and its replay into a pycrdt Text, shared
by `bench.trace` and its child processes.

The trace is pure ASCII (checked at load): pycrdt 0.14 counts `Text` positions in UTF-8 bytes and the
trace in Unicode code points, which agree only there. Every edit is one transaction, as an editor
makes one per keystroke.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrdt import Text

TRACE_PATH = Path(__file__).resolve().parent / "data" / "automerge-paper.json.gz"
TRACE_BYTES_MAX = 64 << 20
"""Decompressed size at most (the trace is 8.6 MB): a corrupt or replaced file cannot fill memory."""
YIELD_EVERY_EDITS = 100
"""The replay yields to the event loop this often, so a node can send while it goes on."""

Edit = tuple[int, int, str]
"""(position, characters deleted there, text inserted there) of one transaction."""


@dataclass(frozen=True)
class Trace:
    edits: list[Edit]
    """The first `len(edits)` transactions of the trace."""
    total_edits: int
    """Transactions in the whole trace."""
    end_text: str
    """The text after `edits`."""

    @property
    def end_sha(self) -> str:
        return hashlib.sha256(self.end_text.encode()).hexdigest()


def load_trace(edits_max: int | None = None, path: Path = TRACE_PATH) -> Trace:
    """The trace's first `edits_max` transactions (all when None) and the text they produce. Raises
    ValueError naming what is wrong with a file that is not the trace expected."""
    with gzip.open(path, "rb") as compressed:
        raw = compressed.read(TRACE_BYTES_MAX + 1)
    if len(raw) > TRACE_BYTES_MAX:
        raise ValueError(f"{path}: more than {TRACE_BYTES_MAX} bytes decompressed")
    if not raw.isascii():
        raise ValueError(f"{path}: not pure ASCII; pycrdt Text positions count UTF-8 bytes")
    document: dict[str, Any] = json.loads(raw)
    transactions: list[dict[str, Any]] = document["txns"]
    if document.get("startContent", "") != "":
        raise ValueError(f"{path}: the trace must start from an empty text")
    count = len(transactions) if edits_max is None else min(edits_max, len(transactions))
    edits: list[Edit] = []
    for transaction in transactions[:count]:
        patches = transaction["patches"]
        if len(patches) != 1:
            raise ValueError(f"{path}: a transaction of {len(patches)} patches (expected one each)")
        position, deleted, inserted = patches[0]
        edits.append((int(position), int(deleted), str(inserted)))
    end_text = str(document["endContent"]) if count == len(transactions) else replay_into_str(edits)
    return Trace(edits, len(transactions), end_text)


def replay_into_str(edits: list[Edit]) -> str:
    """The text `edits` produce, replayed into a Python str (slow: only for prefixes of the trace,
    whose end content the file does not give)."""
    content = ""
    for position, deleted, inserted in edits:
        content = content[:position] + inserted + content[position + deleted :]
    return content


async def replay(text: Text, edits: list[Edit]) -> None:
    """Apply `edits` to `text`, one transaction each (pycrdt opens one per call outside a
    transaction), yielding to the event loop every `YIELD_EVERY_EDITS`."""
    for index, (position, deleted, inserted) in enumerate(edits):
        if deleted:
            del text[position : position + deleted]
        if inserted:
            text.insert(position, inserted)
        if index % YIELD_EVERY_EDITS == YIELD_EVERY_EDITS - 1:
            await asyncio.sleep(0)
