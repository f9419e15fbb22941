"""`update_check.dependencies`: the state a doc must hold to integrate an update at once (the
WebSocket endpoint refuses client updates whose dependencies the node lacks, before pycrdt holds
them pending)."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Doc, Map, Text

from crdtsync.core.state import covers, decode_state_vector
from crdtsync.core.update_check import UpdateError, dependencies


def test_a_whole_doc_depends_on_nothing() -> None:
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, "hello")
    doc.get("data", type=Map)["k"] = 1
    assert dependencies(doc.get_update()) == {}


def test_a_later_update_depends_on_its_clients_earlier_items() -> None:
    doc: Doc[Any] = Doc(client_id=7)
    text = doc.get("text", type=Text)
    text.insert(0, "ab")
    before = doc.get_state()
    text.insert(2, "c")
    later = doc.get_update(before)
    assert dependencies(later) == {7: 2}
    assert covers(decode_state_vector(before), dependencies(later))
    assert not covers({}, dependencies(later))


def test_an_edit_next_to_another_clients_text_depends_on_it() -> None:
    alice: Doc[Any] = Doc(client_id=1)
    alice.get("text", type=Text).insert(0, "abc")
    bob: Doc[Any] = Doc(client_id=2)
    bob.apply_update(alice.get_update())
    before = bob.get_state()
    bob.get("text", type=Text).insert(1, "X")  # between alice's a (clock 0) and b (clock 1)
    edit = bob.get_update(before)
    needed = dependencies(edit)
    assert needed.get(1, 0) >= 2 and 2 not in needed
    assert covers(decode_state_vector(alice.get_state()), needed)
    assert not covers({}, needed)


@pytest.mark.parametrize("garbage", [b"", b"\x01", b"\x01\x01\x05\x00\xff"])
def test_garbage_raises(garbage: bytes) -> None:
    with pytest.raises(UpdateError):
        dependencies(garbage)
