"""The structural update check passes everything pycrdt writes and refuses what crashes it."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from doc_edits import EDITS, apply_edit
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from crdtsync.core.update_check import UpdateError, check_update

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(EDITS), st.integers(0, 50), st.text(alphabet="abcxyz", min_size=1, max_size=6)
        ),
        max_size=20,
    ),
    stored=st.lists(values, max_size=4),
    formatted=st.booleans(),
)
def test_every_update_pycrdt_writes_passes(
    edits: list[tuple[str, int, str]], stored: list[Any], formatted: bool
) -> None:
    doc: Doc[Any] = Doc(client_id=4242)
    captured: list[bytes] = []
    doc.observe(lambda event: captured.append(event.update))
    for op, arg, text in edits:
        apply_edit(doc, op, arg, text)
    data = doc.get("data", type=Map)
    for index, value in enumerate(stored):
        data[f"v{index}"] = value
    array = doc.get("items", type=Array)
    array.extend(stored)
    data["nested"] = Map({"text": Text("inner")})
    body = doc.get("text", type=Text)
    if formatted and len(body):
        body.format(0, len(body), {"bold": True})
    xml = doc.get("xml", type=XmlFragment)
    xml.children.append(XmlElement("p", {"class": "x"}, [XmlText("hi")]))
    for update in [*captured, doc.get_update()]:
        check_update(update)


FREED_ITEMS = ("01010b0028010464617461026b3001760000", "01010b00000000")
PANIC_ON_READ = "0101000100000000000000010401047400"


@pytest.mark.parametrize("update_hex", [FREED_ITEMS[1], PANIC_ON_READ, "01010b000a00", "00", "0000ff"])
def test_what_pycrdt_would_accept_and_crash_on_is_refused(update_hex: str) -> None:
    with pytest.raises(UpdateError):
        check_update(bytes.fromhex(update_hex))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_checked_without_an_unexpected_error(data: bytes) -> None:
    with contextlib.suppress(UpdateError):
        check_update(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_truncated_update_is_refused(data: st.DataObject) -> None:
    doc: Doc[Any] = Doc(client_id=4242)
    doc.get("data", type=Map)["key"] = data.draw(values)
    update = doc.get_update()
    cut = data.draw(st.integers(0, len(update) - 1))
    with pytest.raises(UpdateError):
        check_update(update[:cut])
