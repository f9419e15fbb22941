"""`causal_http.DocStates`: the DocState it follows from the HTTP API's own edits (its tokens) is
always what a pycrdt snapshot of the doc says, whatever other changes come in between (remote
updates with deletions, edits of another origin, a doc evicted and loaded again), and it keeps at
most `tracked_max` docs."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, Text

from crdtsync.consistency import DocState, delete_set_ranges, doc_state
from crdtsync.core.state import decode_state_vector
from crdtsync.daemon.causal_http import EDIT_ORIGIN, DocStates


def _api_edit(doc: Doc[Any], rng: random.Random) -> None:
    """What PUT, DELETE and PATCH of keys do: Map edits in one transaction of EDIT_ORIGIN."""
    with doc.transaction(origin=EDIT_ORIGIN):
        data = doc.get("data", type=Map)
        for _ in range(rng.randint(1, 3)):
            key = f"k{rng.randint(0, 5)}"
            if key in data and rng.random() < 0.3:
                del data[key]
            else:
                data[key] = {"n": rng.randint(0, 9)} if rng.random() < 0.5 else rng.randint(0, 9)


def _other_edit(doc: Doc[Any], peer: Doc[Any], rng: random.Random) -> None:
    """A change the API did not make: a peer's update (with deletions of its own and of ours), or a
    local Text edit of no origin (as a WebSocket client's)."""
    if rng.random() < 0.5:
        peer.apply_update(doc.get_update(peer.get_state()))
        data = peer.get("data", type=Map)
        keys = sorted(data.keys())
        if keys and rng.random() < 0.5:
            del data[rng.choice(keys)]
        else:
            data[f"k{rng.randint(0, 5)}"] = "peer"
        doc.apply_update(peer.get_update(doc.get_state()))
    else:
        text = doc.get("text", type=Text)
        if len(text) and rng.random() < 0.5:
            del text[0 : min(len(text), 2)]
        else:
            text += "ab"


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_followed_state_and_vector_are_the_docs(seed: int) -> None:
    print(f"seed {seed}")
    rng = random.Random(seed)
    states = DocStates(tracked_max=2)
    docs: dict[str, Doc[Any]] = {"a": Doc(), "b": Doc(), "c": Doc()}
    peer: Doc[Any] = Doc()
    for step in range(rng.randint(1, 40)):
        doc_id = rng.choice(sorted(docs))
        roll = rng.random()
        if roll < 0.6:
            _api_edit(docs[doc_id], rng)
        elif roll < 0.85:
            _other_edit(docs[doc_id], peer, rng)
        else:  # evicted and loaded again: a new Doc object with the same content
            reloaded: Doc[Any] = Doc()
            reloaded.apply_update(docs[doc_id].get_update())
            docs[doc_id] = reloaded
        asked = rng.choice(sorted(docs))
        state, vector = states.current(asked, docs[asked])
        assert state == doc_state(docs[asked]), f"seed {seed}, step {step}"
        # The answer's state vector: the doc's, as get_state encodes it (its order may differ).
        assert decode_state_vector(vector) == decode_state_vector(docs[asked].get_state()), f"seed {seed}"
        assert len(states) <= 2


def test_an_edit_of_the_api_is_followed_without_a_snapshot() -> None:
    """After the first answer, the API's edits update the state in place (a snapshot would compute an
    equal but new object); another origin drops it."""
    states = DocStates()
    doc: Doc[Any] = Doc()
    with doc.transaction(origin=EDIT_ORIGIN):
        doc.get("data", type=Map)["k"] = 1
    first = states.state("d", doc)
    with doc.transaction(origin=EDIT_ORIGIN):
        doc.get("data", type=Map)["k"] = 2  # deletes the first value
    followed = states.state("d", doc)
    assert followed != first and followed == doc_state(doc)
    assert followed.deletes == {doc.client_id: ((0, 1),)}
    assert states.state("d", doc) is followed  # nothing changed: the same object, no recompute
    doc.get("data", type=Map)["k"] = 3  # no origin
    assert states.state("d", doc) is not followed
    assert states.state("d", doc) == doc_state(doc)
    # A peer's deletion of items this doc lacks: its transaction names deletions the doc does not
    # hold (pending in yrs), which a token must not claim.
    peer: Doc[Any] = Doc()
    text = peer.get("text", type=Text)
    text += "xy"
    inserted = peer.get_state()
    del text[0:2]
    doc.apply_update(peer.get_update(inserted))
    assert states.state("d", doc) == doc_state(doc)


def test_delete_set_ranges_of_a_transaction() -> None:
    doc: Doc[Any] = Doc()
    data = doc.get("data", type=Map)
    for value in range(4):
        data["k"] = value
    seen: list[bytes] = []
    doc.observe(lambda event: seen.append(event.delete_set))
    with doc.transaction():
        data["k"] = 9
        data["j"] = 1
    assert delete_set_ranges(seen[-1]) == {doc.client_id: ((3, 4),)}
    assert delete_set_ranges(b"\x00") == {}
    assert DocState({}, delete_set_ranges(seen[-1])).covers(DocState({}, {doc.client_id: ((3, 4),)}))
