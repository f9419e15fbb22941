"""The last step of an anti-entropy round on wire version 4: leaves instead of entries.

Instead of asking for every (doc id, digest) of the segments that differ, the initiator sends its own
leaves of them, each leaf hash (`merkle.leaf_hash`) cut to 3 bytes in the round's window
(TREE_LEAVES_REQUEST). The responder answers (TREE_LEAVES) with its entries whose leaf is not among
them (docs the initiator lacks or holds otherwise) and the positions of the initiator's leaves it
does not hold: the bytes follow the differing docs, not the docs a segment holds. A leaf of the
responder that matches one of the initiator's by its 3 bytes alone (a 2^-24 chance per pair) hides
that doc for one round; the next round cuts the leaves in another window.
"""

from __future__ import annotations

from crdtsync.core.merkle import LEAF_BYTES, short_leaves

Entries = list[tuple[str, bytes]]
"""(doc id, digest) of one segment, in doc id order."""


def request_leaves(
    entries_of: dict[int, Entries], window: int, leaves_max: int
) -> tuple[dict[int, Entries], tuple[bytes, ...]]:
    """The segments (in the order given) whose leaves fit in `leaves_max`, with their entries (kept by
    the initiator until the answer), and the leaves to send. Empty when not even the first fits."""
    sent: dict[int, Entries] = {}
    leaves: list[bytes] = []
    count = 0
    for segment, entries in entries_of.items():
        if count + len(entries) > leaves_max:
            break
        count += len(entries)
        sent[segment] = entries
        leaves.append(short_leaves(entries, window))
    return sent, tuple(leaves)


def answer_leaves(
    ours: Entries, theirs: bytes, window: int
) -> tuple[list[tuple[str, bytes]], tuple[int, ...]]:
    """The responder's side for one segment: its entries whose leaf is not among `theirs`, and the
    positions of `theirs` not among its own leaves."""
    mine = short_leaves(ours, window)
    my_leaves = [mine[i : i + LEAF_BYTES] for i in range(0, len(mine), LEAF_BYTES)]
    their_leaves = [theirs[i : i + LEAF_BYTES] for i in range(0, len(theirs), LEAF_BYTES)]
    their_set = set(their_leaves)
    my_set = set(my_leaves)
    unmatched = tuple(index for index, leaf in enumerate(their_leaves) if leaf not in my_set)
    return [entry for entry, leaf in zip(ours, my_leaves, strict=True) if leaf not in their_set], unmatched


def remote_view(sent: Entries, unmatched: tuple[int, ...], listed: dict[str, bytes]) -> dict[str, bytes]:
    """What the responder holds of a segment, as the initiator can tell from its answer: the entries
    it sent whose leaves matched, and the entries the responder listed. Positions beyond what was
    sent (a confused peer) are ignored."""
    missing = set(unmatched)
    view = {doc_id: digest for index, (doc_id, digest) in enumerate(sent) if index not in missing}
    view.update(listed)
    return view
