from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from crdtsync.core.effects import Persist


class Store(Protocol):
    """Where a node's updates live between restarts of its `Node` object.

    `append` receives the replica's `Persist` effects in order (local and remote updates alike, then
    doc state records) and applies them as one group; `load` yields one causally complete update
    per doc, so that replaying it needs no particular order.
    """

    def append(self, group: Sequence[Persist]) -> None: ...

    def load(self) -> Iterator[tuple[str, bytes]]: ...

    def close(self) -> None: ...
