"""Property tests of the causal token (crdtsync.consistency): the codec round-trips and is canonical,
hostile text only ever raises TokenError, and `covers` agrees with state-vector comparison and with
set inclusion of deletions, including on real pycrdt docs replicated out of step."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, Snapshot

from crdtsync.consistency import (
    TOKEN_DOCS_MAX,
    CausalToken,
    DocState,
    TokenError,
    TokenTooLargeError,
    doc_state,
    snapshot_state,
)
from crdtsync.core.state import covers, decode_state_vector, write_varuint

CLIENT_MAX = (1 << 53) - 1
# Few clients, so that two drawn states share clients often and comparisons go both ways.
clients = st.one_of(st.sampled_from([1, 7, 1 << 32, CLIENT_MAX]), st.integers(1, CLIENT_MAX))
clocks = st.integers(0, 1 << 20)
state_vectors = st.dictionaries(clients, clocks, max_size=6)
ranges = st.lists(
    st.tuples(st.integers(0, 1 << 20), st.integers(0, 64)).map(lambda r: (r[0], r[0] + r[1])), max_size=5
)
delete_sets = st.dictionaries(clients, ranges, max_size=4)
doc_states = st.builds(DocState.of, state_vectors, delete_sets)
doc_ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
tokens = st.dictionaries(doc_ids, doc_states, max_size=8).map(CausalToken.of)


def _deleted(state: DocState) -> set[tuple[int, int]]:
    return {
        (client, clock)
        for client, rs in state.deletes.items()
        for start, end in rs
        for clock in range(start, end)
    }


@settings(max_examples=40)
@given(tokens)
def test_round_trip_is_exact_and_canonical(token: CausalToken) -> None:
    text = token.encode()
    decoded = CausalToken.decode(text)
    assert decoded == token
    assert decoded.encode() == text
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@given(doc_states, doc_states)
def test_covers_matches_state_vector_comparison_and_delete_inclusion(have: DocState, need: DocState) -> None:
    expected = covers(dict(have.state), dict(need.state)) and _deleted(need) <= _deleted(have)
    assert have.covers(need) is expected
    token = CausalToken.of({"d": need})
    assert CausalToken.decode(token.encode()).covered_by("d", have) is expected
    missing = have.missing(need)
    assert (missing == DocState()) is expected
    # What is missing is part of what was needed, and holding it too is enough.
    assert need.covers(missing)
    assert have.merge(missing).covers(need)


@given(doc_states, doc_states)
def test_merge_is_the_least_upper_bound(a: DocState, b: DocState) -> None:
    merged = a.merge(b)
    assert merged.covers(a) and merged.covers(b)
    assert merged == b.merge(a)
    assert _deleted(merged) == _deleted(a) | _deleted(b)
    assert dict(merged.state) == {c: max(a.state.get(c, 0), b.state.get(c, 0)) for c in {*a.state, *b.state}}


@settings(max_examples=30)
@given(tokens, tokens)
def test_token_merge_covers_both(a: CausalToken, b: CausalToken) -> None:
    try:
        merged = a.merge(b)
    except TokenTooLargeError:
        assert len({*a.docs, *b.docs}) > TOKEN_DOCS_MAX or len(a.to_bytes()) + len(b.to_bytes()) > 4096
        return
    for doc_id in {*a.docs, *b.docs}:
        assert merged.get(doc_id).covers(a.get(doc_id))
        assert merged.get(doc_id).covers(b.get(doc_id))


@given(st.binary(max_size=200))
def test_hostile_bytes_only_raise_token_error(data: bytes) -> None:
    for attempt in (data, b"\x01" + data):
        try:
            token = CausalToken.from_bytes(attempt)
        except TokenError:
            continue
        assert token.to_bytes() == attempt  # whatever decodes is the canonical encoding


@given(st.text(max_size=300))
def test_hostile_text_only_raises_token_error(text: str) -> None:
    try:
        token = CausalToken.decode(text)
    except TokenError:
        return
    assert token.encode() == text


def test_bounds_are_enforced() -> None:
    many = {f"doc-{i}": DocState.of({1: 1}) for i in range(TOKEN_DOCS_MAX + 1)}
    with pytest.raises(TokenTooLargeError):
        CausalToken.of(many)
    wide = DocState.of({client: 1 for client in range(1 << 40, (1 << 40) + 600)})
    with pytest.raises(TokenTooLargeError):
        CausalToken.of({"d": wide})
    with pytest.raises(TokenError):
        CausalToken.decode("AA")  # version 0
    with pytest.raises(TokenError):
        CausalToken.decode("A" * 10_000)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_docs_replicated_out_of_step(seed: int) -> None:
    """Real pycrdt docs: a replica's doc_state covers a token taken from another iff it has applied
    every update the token's replica had (compared by applying the difference)."""
    print(f"seed {seed}")
    rng = random.Random(seed)
    writer: Doc[Any] = Doc()
    data = writer.get("data", type=Map)
    updates: list[bytes] = []
    writer.observe(lambda event: updates.append(event.update))
    for step in range(rng.randint(1, 12)):
        key = f"k{rng.randint(0, 3)}"
        if key in data and rng.random() < 0.4:
            del data[key]  # a delete-only transaction: the state vector does not move
        else:
            data[key] = step
    reader: Doc[Any] = Doc()
    applied = rng.randint(0, len(updates))
    for update in updates[:applied]:
        reader.apply_update(update)
    # Every update adds an item or a deletion: the reader holds all iff it applied all.
    token = CausalToken.of({"d": doc_state(writer)})
    assert token.covered_by("d", doc_state(reader)) is (applied == len(updates)), (
        f"seed {seed}: applied {applied} of {len(updates)}"
    )


def test_a_delete_only_write_is_not_covered_by_the_state_vector_alone() -> None:
    writer: Doc[Any] = Doc()
    data = writer.get("data", type=Map)
    data["stage"] = "canary"
    reader: Doc[Any] = Doc()
    reader.apply_update(writer.get_update())
    del data["stage"]
    token = CausalToken.of({"d": doc_state(writer)})
    assert covers(decode_state_vector(reader.get_state()), decode_state_vector(writer.get_state()))
    assert not token.covered_by("d", doc_state(reader))
    reader.apply_update(writer.get_update(reader.get_state()))
    assert token.covered_by("d", doc_state(reader))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_snapshot_state_of_real_docs_is_normalized(seed: int) -> None:
    """The parse of pycrdt's snapshots skips `DocState.of` when yrs wrote them normalized: what it
    returns must be what normalizing gives, for docs with many delete ranges from two clients."""
    print(f"seed {seed}")
    rng = random.Random(seed)
    docs: list[Doc[Any]] = [Doc(), Doc()]
    for _ in range(rng.randint(1, 40)):
        doc = rng.choice(docs)
        data = doc.get("data", type=Map)
        key = f"k{rng.randint(0, 5)}"
        if key in data and rng.random() < 0.3:
            del data[key]
        else:
            data[key] = rng.randint(0, 9)
        if rng.random() < 0.3:
            other = docs[1 - docs.index(doc)]
            other.apply_update(doc.get_update(other.get_state()))
    state = snapshot_state(Snapshot.from_doc(docs[0]).encode())
    assert state == DocState.of(state.state, state.deletes), f"seed {seed}"
    assert all(type(ranges) is tuple for ranges in state.deletes.values())


def _snapshot(deletes: list[tuple[int, list[tuple[int, int]]]], vector: list[tuple[int, int]]) -> bytes:
    """An encoded snapshot as pycrdt writes one: delete set (client, [(clock, length)]), then the
    state vector."""
    out = bytearray()
    write_varuint(out, len(deletes))
    for client, ranges in deletes:
        write_varuint(out, client)
        write_varuint(out, len(ranges))
        for clock, length in ranges:
            write_varuint(out, clock)
            write_varuint(out, length)
    write_varuint(out, len(vector))
    for client, clock in vector:
        write_varuint(out, client)
        write_varuint(out, clock)
    return bytes(out)


def test_snapshot_state_normalizes_what_is_not() -> None:
    """Adjacent, unsorted or empty ranges, an empty client and a zero clock take the normalizing
    path: the same DocState as from normalized input."""
    data = _snapshot([(5, [(4, 2), (0, 2), (2, 2), (9, 0)]), (6, [])], [(5, 7), (8, 0)])
    assert snapshot_state(data) == DocState({5: 7}, {5: ((0, 6),)})
    assert snapshot_state(_snapshot([(5, [(0, 6)])], [(5, 7)])) == DocState({5: 7}, {5: ((0, 6),)})
