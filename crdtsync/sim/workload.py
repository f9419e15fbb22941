"""What simulated clients write, and how to read a doc back as JSON for comparison.

A `Workload` is the user's hook for fuzzing their own document schema: `write` mutates a doc the way
their application would and returns what it promised to keep (`Write` records that the checker
verifies after convergence); `materialize` turns a doc into plain JSON-able data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol

from pycrdt import Doc, Map, Text


@dataclass(frozen=True, slots=True)
class Write:
    """A write the checker verifies: after convergence, `materialize(doc)[root][key]` must be `value`
    on every replica, unless the key is `shared` (concurrent writers; any written value may win), or
    the writer crashed before the write left it (memory stores lose what was never replicated)."""

    doc_id: str
    root: str
    key: str
    value: Any
    shared: bool


class Workload(Protocol):
    def write(
        self, doc: Doc[Any], doc_id: str, node_index: int, op_index: int, rng: random.Random
    ) -> list[Write]:
        """Apply one client operation to `doc` (plain pycrdt writes) and return what it promised."""
        ...

    def materialize(self, doc: Doc[Any]) -> Any:
        """The doc's content as plain data, compared across replicas."""
        ...


class MapTextWorkload:
    """Default workload: unique and contended keys in a Map `data` (sets and deletes) and edits of a
    shared Text `text` — the concurrent Map and Text edits that expose pycrdt 0.14's causal-order bug."""

    shared_keys = 5

    def write(
        self, doc: Doc[Any], doc_id: str, node_index: int, op_index: int, rng: random.Random
    ) -> list[Write]:
        data = doc.get("data", type=Map)
        text = doc.get("text", type=Text)
        roll = rng.random()
        if roll < 0.40:
            key = f"u-{node_index}-{op_index}"
            data[key] = op_index
            return [Write(doc_id, "data", key, op_index, shared=False)]
        if roll < 0.65:
            key = f"s-{rng.randrange(self.shared_keys)}"
            value = f"{node_index}:{op_index}"
            data[key] = value
            return [Write(doc_id, "data", key, value, shared=True)]
        if roll < 0.75:
            key = f"s-{rng.randrange(self.shared_keys)}"
            if key in data:
                del data[key]
            return []
        if roll < 0.90 or len(text) == 0:
            position = rng.randint(0, len(text))
            text.insert(position, f"<{node_index}.{op_index}>")
            return []
        start = rng.randrange(len(text))
        length = min(rng.randint(1, 3), len(text) - start)
        del text[start : start + length]
        return []

    def materialize(self, doc: Doc[Any]) -> Any:
        return {"data": doc.get("data", type=Map).to_py(), "text": str(doc.get("text", type=Text))}
