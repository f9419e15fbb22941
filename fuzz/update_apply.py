"""Coverage-guided fuzzing of the update-apply path: sequences of mutated Yjs updates (from real
ones) reach a fresh replica as SYNC_PUSH messages for one doc; the replica must never raise and the
doc's digest must stay computable. With --read, every accepted doc must also read back (encoded
with `get_update()` and its roots materialized). Anything else is a finding.

    python -m fuzz.update_apply --minutes 2 [--read]

An input is one or more updates separated by SEPARATOR, applied in order to a new replica: every
input is a whole reproducer, whatever ran before it in the same process.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pycrdt import Array, Doc, Map, Text

from crdtsync.core import wire
from fuzz._runner import Fuzzable, Target, cli_main, open_replica

SEPARATOR = b"\xfe\xed\xfa\xce"
"""Between the updates of one input: four bytes that no update of the seeds contains, so that a
mutation inside one update does not move the others."""
UPDATES_PER_INPUT_MAX = 8
READ = "--read"
ROOTS = {"data": Map, "text": Text, "items": Array}


def history() -> tuple[list[bytes], bytes]:
    """The incremental updates of a doc with a map, a text and an array, and its whole state."""
    doc: Doc[Any] = Doc(client_id=11)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    data, text, items = doc.get("data", type=Map), doc.get("text", type=Text), doc.get("items", type=Array)
    for index in range(12):
        data[f"k{index % 4}"] = {"i": index, "tags": ["a", "b"]}
        text.insert(len(text) // 2, f"w{index} ")
        items.append(index)
        if index % 3 == 2:
            del data[f"k{index % 4}"]
            del text[0:2]
    return updates, doc.get_update()


def seed_inputs() -> list[bytes]:
    """Each update alone, runs of 2..4 consecutive updates (later ones depend on earlier ones), and
    the whole state followed by a late update (a duplicate)."""
    updates, whole = history()
    runs = [SEPARATOR.join(updates[start : start + length]) for length in (2, 4) for start in range(0, 40, 5)]
    return [*updates, *runs, whole, SEPARATOR.join((whole, updates[-1]))]


def read_back(doc: Doc[Any]) -> None:
    doc.get_update()
    for name, root_type in ROOTS.items():
        try:
            root = doc.get(name, type=root_type)
        except (TypeError, ValueError):
            continue  # the root exists with another type: a valid, if odd, doc
        str(root)


def make_target(scratch: Path | None = None, options: frozenset[str] = frozenset()) -> Fuzzable:
    """pycrdt 0.14 accepts some garbage silently, and reading such a doc back can then panic (a
    17-byte update makes `get_update()` divide by zero: tests/fuzz) or crash the whole process (a
    bus error in `str(Text)`): the read-back is --read, off by default, so that the smoke runs test
    crdtsync's own code and stay deterministic."""
    read = READ in options

    def target(data: bytes) -> None:
        replica = open_replica(98)
        try:
            for clock, update in enumerate(data.split(SEPARATOR)[:UPDATES_PER_INPUT_MAX], start=1):
                replica.receive(wire.encode(wire.SyncPush("fuzzer", (("doc", update),))), float(clock))
                replica.take_effects(float(clock))
                if replica.has_doc("doc"):
                    replica.doc_digest("doc")
                    if read:
                        read_back(replica.open_doc("doc"))
        finally:
            replica.close()  # else its doc observers keep it (and its Merkle tree) alive for good

    return target


TARGET = Target(
    name="update_apply",
    description=__doc__.split("\n\n")[0],
    seeds=seed_inputs,
    make=make_target,
    max_len=8 * 1024,
    options={READ: "also read every accepted doc back (pycrdt 0.14 can panic or crash: docs/security.md)"},
)


def main(argv: list[str] | None = None) -> int:
    return cli_main(TARGET, argv)


if __name__ == "__main__":
    sys.exit(main())
