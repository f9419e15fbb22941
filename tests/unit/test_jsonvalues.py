"""Numbers as people write them: integral floats within ±2^53 are encoded as integers, nothing else
changes (the HTTP API's answers, watch events and the CLI's JSON all go through this encoder)."""

from __future__ import annotations

import json
import math

import pytest

from crdtsync.daemon.jsonvalues import INTEGRAL_MAX, dumps, plain_numbers


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (4.0, "4"),
        (-7.0, "-7"),
        (0.0, "0"),
        (-0.0, "0"),
        (4.5, "4.5"),
        (0.1, "0.1"),
        (float(2**53), "9007199254740992"),
        (-float(2**53), "-9007199254740992"),
        (float(2**53 + 2), "9007199254740994.0"),
        (-float(2**53 + 2), "-9007199254740994.0"),
        (1e300, "1e+300"),
        (4, "4"),
        (2**60, str(2**60)),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ("4.0", '"4.0"'),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        (math.nan, "NaN"),
    ],
)
def test_scalars(value: object, text: str) -> None:
    assert dumps(value) == text


def test_nested_values_keys_and_options() -> None:
    value = {"b": [1.0, 2.5, (3.0, {"c": True})], "a": {"d": None, "e": 6.0}}
    assert dumps(value, sort_keys=True) == '{"a": {"d": null, "e": 6}, "b": [1, 2.5, [3, {"c": true}]]}'
    assert dumps([1.0], indent=2) == "[\n  1\n]"
    assert value == {"b": [1.0, 2.5, (3.0, {"c": True})], "a": {"d": None, "e": 6.0}}, "the input is kept"


def test_only_integral_floats_within_the_bound_change_type() -> None:
    out = plain_numbers([1.0, 1.5, float(INTEGRAL_MAX), float(INTEGRAL_MAX) * 2, True, 3])
    assert [type(item) for item in out] == [int, float, int, float, bool, int]
    assert json.loads(dumps(out)) == out
