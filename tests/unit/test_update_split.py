"""`update_split`: a doc's state for a peer as several updates, each integrating fully in order."""

from __future__ import annotations

import random
from typing import Any

from pycrdt import Array, Doc, Map, Text

from crdtsync.core.state import covers, decode_state_vector, digest
from crdtsync.core.update_check import check_update, dependencies
from crdtsync.core.update_split import split_update, sync_parts


def edited_by_three(seed: int, edits: int = 150) -> Doc[Any]:
    """Three writers editing one text, map and array, exchanging updates now and then (ASCII text:
    pycrdt 0.14 mis-encodes its own index-based inserts after non-ASCII characters)."""
    rnd = random.Random(seed)
    docs: list[Doc[Any]] = [Doc(client_id=client) for client in (11, 22, 33)]
    for _ in range(edits):
        doc = rnd.choice(docs)
        text, data, items = (
            doc.get("text", type=Text),
            doc.get("data", type=Map),
            doc.get("items", type=Array),
        )
        roll = rnd.random()
        if roll < 0.45:
            text.insert(
                rnd.randint(0, len(text)), rnd.choice(["a", "bc", "hello ", "x" * rnd.randint(1, 40)])
            )
        elif roll < 0.55 and len(text) > 3:
            start = rnd.randrange(len(text) - 2)
            del text[start : start + 2]
        elif roll < 0.8:
            data[f"k{rnd.randint(0, 30)}"] = rnd.choice([1, "v" * rnd.randint(1, 60), [1, 2], {"a": "b"}])
        else:
            items.append(rnd.randint(0, 9))
        if rnd.random() < 0.2:
            source, target = rnd.sample(docs, 2)
            target.apply_update(source.get_update(target.get_state()))
    for target in docs[1:]:
        target.apply_update(docs[0].get_update(target.get_state()))
        docs[0].apply_update(target.get_update(docs[0].get_state()))
    return docs[0]


def content(doc: Doc[Any]) -> tuple[str, Any, Any]:
    return (
        str(doc.get("text", type=Text)),
        doc.get("data", type=Map).to_py(),
        doc.get("items", type=Array).to_py(),
    )


def test_the_runs_of_an_update_are_valid_updates_with_its_structs() -> None:
    doc = edited_by_three(1)
    update = doc.get_update()
    runs = split_update(update, 100)
    assert len(runs) > 5
    for run, _, _ in runs:
        check_update(run)
    assert sum(len(run) for run, _, _ in runs) >= len(update) - 100


def test_parts_apply_in_order_without_anything_pending_and_rebuild_the_doc() -> None:
    for seed in range(30):
        doc = edited_by_three(seed)
        for bytes_max in (40, 200, 1000):
            parts = sync_parts(doc, b"\x00", bytes_max)
            fresh: Doc[Any] = Doc()
            for part in parts[:-1]:
                assert len(part) <= bytes_max + 64 or len(split_update(part, 1)) == 1
                assert covers(decode_state_vector(fresh.get_state()), dependencies(part)), seed
                fresh.apply_update(part)
            fresh.apply_update(parts[-1])
            assert content(fresh) == content(doc), (seed, bytes_max, len(parts))
            assert digest(fresh) == digest(doc)


def test_parts_for_a_peer_that_holds_part_of_the_doc() -> None:
    doc = edited_by_three(7)
    peer: Doc[Any] = Doc()
    peer.apply_update(edited_by_three(7, edits=60).get_update())
    parts = sync_parts(doc, peer.get_state(), 100)
    assert len(parts) > 1
    for part in parts:
        peer.apply_update(part)
    assert content(peer) == content(doc)


def test_a_small_difference_is_one_update() -> None:
    doc = edited_by_three(3, edits=5)
    assert sync_parts(doc, b"\x00", 1 << 20) == [doc.get_update(b"\x00")]
