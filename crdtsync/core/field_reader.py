"""What the codecs of the later message kinds (`chunks`, `forward`, `load_wire`) ask of the reader of
a body's fields. `wire_fields.Fields` is that reader; they cannot import it, as `wire_fields` imports
`messages`, which imports them."""

from __future__ import annotations

from typing import Any, Protocol


class FieldReader(Protocol):
    """`wire`'s bounds-checked reader of a body's fields."""

    kind: Any

    def blob(self, name: str) -> bytes: ...
    def text(self, name: str, max_bytes: int) -> str: ...
    def uint(self, name: str) -> int: ...
    def flag(self, name: str) -> bool: ...
    def remaining(self) -> int: ...
