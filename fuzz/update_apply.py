"""Mutation fuzzing of the update-apply path: mutated Yjs updates (from real ones) reach a replica
as SYNC_PUSH messages; the replica must never raise, and the doc must stay readable afterwards
(encodable and digestible; with --read also materialized). Anything else is a finding.

    python -m fuzz.update_apply --minutes 2 [--read]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from pycrdt import Array, Doc, Map, Text

from crdtsync.core import wire
from fuzz._runner import cli, open_replica, run


def seed_updates() -> list[bytes]:
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
    return [*updates, doc.get_update()]


def make_target(read: bool = False) -> Callable[[bytes], str]:
    """`read` also materializes the roots after each apply. pycrdt 0.14 accepts some garbage
    silently and a later read of such a doc can crash the whole process (a bus error in
    `str(Text)`, seen with this target): off by default so that smoke runs stay deterministic."""
    replica = open_replica(98)
    clock = [0.0]
    docs = [f"doc-{index}" for index in range(8)]

    def target(data: bytes) -> str:
        clock[0] += 1.0
        doc_id = docs[int(clock[0]) % len(docs)]
        rejected = replica.counters.get("updates_rejected", 0)
        replica.receive(wire.encode(wire.SyncPush("fuzzer", ((doc_id, data),))), clock[0])
        replica.take_effects(clock[0])
        if replica.has_doc(doc_id):
            doc = replica.open_doc(doc_id)
            doc.get_update()
            replica.doc_digest(doc_id)
            for name in ("data", "text", "items") if read else ():
                with_type = {"data": Map, "text": Text, "items": Array}[name]
                try:
                    root = doc.get(name, type=with_type)
                except (TypeError, ValueError):
                    continue  # the root exists with another type: a valid, if odd, doc
                str(root)
        return "rejected" if replica.counters.get("updates_rejected", 0) > rejected else "applied"

    return target


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    args = cli("update_apply", __doc__.split("\n\n")[0], [arg for arg in given if arg != "--read"])
    target = make_target(read="--read" in given)
    return run(
        "update_apply", seed_updates(), target, args.minutes * 60.0, args.seed, args.corpus, args.findings
    )


if __name__ == "__main__":
    sys.exit(main())
