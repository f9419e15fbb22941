from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol


class Store(Protocol):
    """Where a node's updates live between restarts of its `Node` object.

    `append` receives local and remote updates alike, in the order they were applied; `load` yields
    one causally complete update per doc, so that replaying it needs no particular order.
    """

    def append(self, updates: Iterable[tuple[str, bytes]]) -> None: ...

    def load(self) -> Iterator[tuple[str, bytes]]: ...

    def close(self) -> None: ...
