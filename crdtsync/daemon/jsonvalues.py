"""JSON as people (and JavaScript and Yjs clients) write it: the one encoder of every JSON answer of
the HTTP API, every watch event and every JSON the `crdtsync` command prints.

pycrdt reads Yjs numbers back as Python floats, so a value written as `4` would be encoded `4.0`.
`plain_numbers` turns every integral float within ±2^53 (where a double holds every integer exactly)
into an int, as `JSON.stringify` does; other floats, NaN and the infinities, bools, strings and
`None` are left as they are.
"""

from __future__ import annotations

import json
from typing import Any

INTEGRAL_MAX = 2**53
"""Integral floats up to this magnitude are written as integers; beyond it a double no longer holds
every integer, and the value stays a float."""


_UNCHANGED = frozenset({str, int, bool, type(None)})


def plain_number(value: float) -> int | float:
    """`value` as an int when it is integral and within ±2^53, else `value` itself."""
    if value.is_integer() and -INTEGRAL_MAX <= value <= INTEGRAL_MAX:
        return int(value)
    return value


def plain_numbers(value: Any) -> Any:
    """A copy of a JSON-able value (dicts, lists, tuples, scalars) whose integral floats within ±2^53
    are ints; anything else is returned as is. Tuples come back as lists, as JSON encodes them."""
    if type(value) in _UNCHANGED:  # the common case first: every answer has strings and ints
        return value
    if isinstance(value, float):
        return plain_number(value)
    # Items that stay as they are are not passed down (most of an answer's are strings): a call each.
    if isinstance(value, dict):
        return {key: item if type(item) in _UNCHANGED else plain_numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [item if type(item) in _UNCHANGED else plain_numbers(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """`json.dumps` of `plain_numbers(value)`; `options` go to `json.dumps` (`indent`, `sort_keys`)."""
    return json.dumps(plain_numbers(value), **options)
