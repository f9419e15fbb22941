"""Split what a doc sends a peer into several smaller updates, each of which integrates at once.

The WebSocket endpoint answers a client's sync step 1 with what the client lacks: for a fresh client,
the whole doc in one message of the doc's size, which a client on a slow link may time out on and
which a client's frame limit may refuse. `sync_parts` makes it several updates of about `bytes_max`
bytes each (sent as sync updates) and a last one (the sync step 2).

`split_update` cuts an update into runs of consecutive structs of one client (a run's first clock is
computed from the lengths of the structs before it). `sync_parts` sends those runs in an order where
every run finds everything it points to already sent (`update_check.dependencies`), so that no
receiver holds an update pending (pycrdt 0.14 can stay stuck on those); runs that cannot be ordered
so, and the delete set, go in the last update, computed by the doc from what was sent. A single
struct larger than `bytes_max` (one big insert) stays whole. `ordered_runs` gives the same order for
an update received from a client (its offline edits), which the endpoint applies run by run so that
each run replicates as a delta of its own.
"""

from __future__ import annotations

from typing import Any

from pycrdt import Doc

from crdtsync.core.state import (
    StateVector,
    covers,
    decode_state_vector,
    encode_state_vector,
    write_varuint,
)
from crdtsync.core.update_check import _check_struct, _Reader, client_blocks, dependencies


def sync_parts(doc: Doc[Any], state: bytes, bytes_max: int) -> list[bytes]:
    """What `doc` holds beyond the encoded state vector `state`, as updates to apply in order: one
    (`doc.get_update(state)`) when it fits in `bytes_max` bytes, else runs of about `bytes_max` bytes,
    each integrating fully after the ones before it, and a last update with the rest."""
    update = doc.get_update(state)
    if len(update) <= bytes_max:
        return [update]
    have = decode_state_vector(state)
    sent = ordered_runs(update, have, bytes_max)
    if not sent:
        return [update]
    return [*sent, doc.get_update(encode_state_vector(have))]


def ordered_runs(update: bytes, have: StateVector, bytes_max: int) -> list[bytes]:
    """`update`'s runs of about `bytes_max` bytes (`split_update`) that a holder of `have` can apply
    in this order, each integrating fully after the ones before it; `have` is advanced past them.
    Runs that cannot be ordered so, and the delete set, are left out: apply `update` itself after
    the runs for those. Raises `UpdateError` on an update that does not parse."""
    waiting = split_update(update, bytes_max)
    ordered: list[bytes] = []
    progress = True
    while waiting and progress:
        progress = False
        for run in list(waiting):
            part, client, end = run
            if covers(have, dependencies(part)):
                ordered.append(part)
                have[client] = max(have.get(client, 0), end)
                waiting.remove(run)
                progress = True
    return ordered


def split_update(update: bytes, bytes_max: int) -> list[tuple[bytes, int, int]]:
    """`update`'s structs as runs of one client each, of about `bytes_max` bytes at most, with empty
    delete sets: (run, client, the clock after the run), in the update's order. Raises `UpdateError`
    on an update that does not parse."""
    reader = _Reader(update)
    runs: list[tuple[bytes, int, int]] = []
    for structs, client, clock in client_blocks(reader):
        run_start = reader.pos
        run_clock = clock
        run_structs = 0
        for _ in range(structs):
            start = reader.pos
            length, _skip = _check_struct(reader, client)
            if run_structs and reader.pos - run_start > bytes_max:
                runs.append((_part(client, run_clock, run_structs, update[run_start:start]), client, clock))
                run_start, run_clock, run_structs = start, clock, 0
            clock += length
            run_structs += 1
        if run_structs:
            runs.append(
                (_part(client, run_clock, run_structs, update[run_start : reader.pos]), client, clock)
            )
    return runs


def _part(client: int, clock: int, structs: int, body: bytes) -> bytes:
    """An update of one run of structs and an empty delete set."""
    out = bytearray()
    for value in (1, structs, client, clock):
        write_varuint(out, value)
    return bytes(out) + body + b"\x00"
