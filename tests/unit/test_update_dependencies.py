"""`update_check.dependencies`: the state a doc must hold to integrate an update at once (the
WebSocket endpoint refuses client updates whose dependencies the node lacks, before pycrdt holds
them pending)."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Doc, Map, Text, merge_updates

from crdtsync.core.state import covers, decode_state_vector
from crdtsync.core.update_check import UpdateError, causal_range, dependencies


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


def _writes(doc: Doc[Any]) -> list[bytes]:
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    return updates


def test_a_deletion_depends_on_the_deleted_items_client_to_the_end_of_the_range() -> None:
    alice: Doc[Any] = Doc(client_id=1)
    alice.get("text", type=Text).insert(0, "abcdef")
    bob: Doc[Any] = Doc(client_id=2)
    bob.apply_update(alice.get_update())
    updates = _writes(bob)
    del bob.get("text", type=Text)[1:4]  # alice's clocks 1..3
    needed, after = causal_range(updates[0])
    assert needed == {1: 4}
    assert after == needed


def test_a_deletion_of_the_updates_own_items_depends_on_nothing() -> None:
    doc: Doc[Any] = Doc(client_id=3)
    doc.get("text", type=Text).insert(0, "abc")
    del doc.get("text", type=Text)[0:2]
    assert causal_range(doc.get_update()) == ({}, {3: 3})  # its items and their deletion, in one update


def test_an_item_pointing_past_the_updates_own_range_of_that_client_depends_on_it() -> None:
    alice: Doc[Any] = Doc(client_id=1)
    alice_writes = _writes(alice)
    text = alice.get("text", type=Text)
    text.insert(0, "ab")  # clocks 0..1
    text.insert(2, "cd")  # clocks 2..3
    bob: Doc[Any] = Doc(client_id=2)
    bob.apply_update(alice.get_update())
    bob_writes = _writes(bob)
    bob.get("text", type=Text).insert(4, "X")  # after alice's d (clock 3)
    # The first of alice's writes and bob's, merged: bob's item points to alice's clock 3, which the
    # update's own range of alice (0..1) does not hold.
    merged = merge_updates(alice_writes[0], bob_writes[0])
    needed, after = causal_range(merged)
    assert needed == {1: 4}
    assert after == {1: 4, 2: 1}


def test_a_gap_between_two_runs_of_one_client_is_a_dependency() -> None:
    doc: Doc[Any] = Doc(client_id=5)
    writes = _writes(doc)
    text = doc.get("text", type=Text)
    for word in ("ab", "cd", "ef"):
        text.insert(len(text), word)
    merged = merge_updates(writes[0], writes[2])  # clocks 0..1 and 4..5: a Skip over 2..3
    assert causal_range(merged) == ({5: 4}, {5: 6})


def test_after_counts_strings_in_utf16_units_as_yjs_clocks_do() -> None:
    doc: Doc[Any] = Doc(client_id=9)
    doc.get("text", type=Text).insert(0, "aé😀")  # 1 + 1 + 2 UTF-16 units
    assert causal_range(doc.get_update()) == ({}, {9: 4})
    assert decode_state_vector(doc.get_state()) == {9: 4}


def test_bytes_after_the_update_raise() -> None:
    doc: Doc[Any] = Doc(client_id=9)
    doc.get("data", type=Map)["k"] = 1
    with pytest.raises(UpdateError, match="bytes after the end"):
        causal_range(doc.get_update() + b"\x00")
