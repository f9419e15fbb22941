"""The edit operations the property tests script on pycrdt docs (Map sets and deletes, Text edits)."""

from __future__ import annotations

from typing import Any

from pycrdt import Doc, Map, Text

EDITS = ("map_set", "map_delete", "text_insert", "text_delete")


def apply_edit(doc: Doc[Any], op: str, arg: int, text: str) -> None:
    """One of EDITS on the doc's `data` Map or `text` Text; `arg` picks the key or position."""
    data = doc.get("data", type=Map)
    body = doc.get("text", type=Text)
    if op == "map_set":
        data[f"k{arg % 4}"] = text
    elif op == "map_delete":
        keys = sorted(data.keys())
        if keys:
            del data[keys[arg % len(keys)]]
    elif op == "text_insert":
        body.insert(arg % (len(body) + 1), text)
    elif op == "text_delete":
        if len(body):
            start = arg % len(body)
            del body[start : min(len(body), start + 1 + arg % 3)]
    else:
        raise ValueError(f"not an edit: {op!r}")
