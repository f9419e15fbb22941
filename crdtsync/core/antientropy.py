"""Anti-entropy rounds: the guarantee behind the delta stream.

This node runs at most one round at a time as initiator, against one peer: periodically with jitter
(round robin inside the datacenter every `ae_interval_ms`; every `ae_wan_interval_ms` across
datacenters: on a relay, one round against the other datacenters' nodes in turn, and under partial
placement, on every node, rounds against enough remote holders that every bucket it holds is
compared with one of them in each datacenter, since relays hold only their share), at once on
(re)contact, and when a retransmit ring no longer holds a gap. A round compares Tictac Merkle trees
of canonical doc digests top-down (root, branch hashes, segment hashes, then the (doc id, digest)
entries of differing segments) and exchanges state vectors and `get_update(remote_sv)` only for the
docs that differ, so its cost follows the divergence, not the number of docs. Budgets cap what one
round repairs; the rest waits for a follow-up round after `ae_followup_delay_ms`, so that the
repairs in flight land first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from crdtsync.core import wire
from crdtsync.core.context import Context
from crdtsync.core.docs import EMPTY_STATE, DocEntry, DocTable
from crdtsync.core.holding import Filter, Holding, ViewTable
from crdtsync.core.links import Links, PeerLink
from crdtsync.core.merkle import HASH_BYTES, branch_cells, cell_window, differing_from_cells
from crdtsync.core.state import update_since
from crdtsync.core.sync import StateSync
from crdtsync.core.tree_leaves import answer_leaves, remote_view, request_leaves

log = logging.getLogger("crdtsync.replica")

CELLS_BRANCHES_MAX = 16
"""A segments request for at most this many branches is answered with their cells (TREE_CELLS, 64 B a
branch) on a link of wire version 4, for more with their segment hashes (1 KiB a branch): with many
differing branches, several segments of a branch likely differ, and rows times columns would name
segments that do not."""
LEAVES_HASHED_MAX = 2 * wire.ENTRIES_PER_MESSAGE_MAX
"""Own leaves a responder hashes for one TREE_LEAVES_REQUEST (its segments may hold more docs than
the requester's leaves): the segments beyond are left out of the answer, as for too many entries."""


@dataclass(slots=True)
class Round:
    """The one anti-entropy round this node runs as initiator."""

    address: str
    round_id: int
    phase: Literal["branches", "segments", "entries"]
    deadline_ms: float
    more: bool = False
    """Differences were left for a later round (budget or message limits)."""
    segments_requested: int = 0
    accept: Filter | None = None
    """The placement buckets both sides hold (None: every doc)."""
    leaves_sent: dict[int, list[tuple[str, bytes]]] | None = None
    """Segment -> the entries whose leaves went in this round's TREE_LEAVES_REQUEST (version 4)."""


class AntiEntropy:
    def __init__(self, ctx: Context, docs: DocTable, links: Links, sync: StateSync, holding: Holding) -> None:
        self._ctx = ctx
        self._holding = holding
        self._docs = docs
        self._links = links
        self._sync = sync
        self.round: Round | None = None
        self._round_counter = 0
        self._grouped: tuple[ViewTable, tuple[int, dict[int, dict[int, int]]]] | None = None
        """(the view's table, the tree's branch hashes per holder set held here, at a tree version):
        see `_filtered_branches`. At most one entry per held bucket and branch with docs."""
        self._filtered_cache: dict[str, tuple[int, int, tuple[bytes, ...]]] = {}
        """Peer -> (member view, tree version, its filtered branch hashes): a round of an idle
        tree costs nothing. At most `peers_max` peers (then emptied)."""
        self._wanted: dict[str, None] = {}
        """Addresses of peers owed a round as soon as none is running (connect, lost gap, leftovers)."""
        self._remote_groups: tuple[ViewTable | None, tuple[tuple[str, ...], ...]] = (None, ())
        """(the view's table, `_remote_holder_groups`)."""
        self._turn = 0
        self._wan_turn = 0
        """Separate turns inside and across datacenters: each visits every peer of its kind in turn."""
        self._not_before_ms = 0.0
        self._next_ms = ctx.jittered(ctx.config.ae_interval_ms)
        self._next_wan_ms = ctx.jittered(ctx.config.ae_wan_interval_ms)

    # ------------------------------------------------------------------ timers

    def next_deadline_ms(self) -> float:
        config = self._ctx.config
        deadline = float("inf")
        if config.ae_interval_ms > 0:
            deadline = self._next_ms
        if config.ae_wan_interval_ms > 0 and self._links.reaches_other_dcs:
            deadline = min(deadline, self._next_wan_ms)
        return deadline

    @property
    def busy(self) -> bool:
        return self.round is not None or bool(self._wanted)

    def tick(self) -> None:
        """Time out a silent round, queue the periodic rounds that are due, start one if none runs."""
        ctx = self._ctx
        config = ctx.config
        now_ms = ctx.now_ms
        if self.round is not None and now_ms >= self.round.deadline_ms:
            ctx.counters.ae_round_timeouts += 1
            timed_out = self._links.by_address.get(self.round.address)
            dc = self._links.dc(timed_out) if timed_out is not None else None
            if dc is not None:
                ctx.traffic_with(dc).failures += 1
            self._wanted[self.round.address] = None
            self.round = None
        if config.ae_interval_ms > 0 and now_ms >= self._next_ms:
            self._next_ms = now_ms + ctx.jittered(config.ae_interval_ms)
            self._queue_turn(self._links.alive(dc="same"), wan=False)
        if config.ae_wan_interval_ms > 0 and now_ms >= self._next_wan_ms:
            self._next_wan_ms = now_ms + ctx.jittered(config.ae_wan_interval_ms)
            if self._holding.partitioned and self._links.reaches_other_dcs:
                for link in self._wan_cover():
                    self._wanted.setdefault(link.address, None)
            elif self._links.is_relay:
                self._queue_turn(self._links.alive(dc="other"), wan=True)
        self._run_wanted()

    def _queue_turn(self, links: list[PeerLink], *, wan: bool) -> None:
        if links:
            if wan:
                self._wan_turn += 1
            else:
                self._turn += 1
            turn = self._wan_turn if wan else self._turn
            self._wanted.setdefault(links[turn % len(links)].address, None)

    def _wan_cover(self) -> list[PeerLink]:
        """The remote nodes this interval's rounds go to: for every bucket held here, one alive
        holder of it in each other datacenter (its holders there converge among themselves), the
        first in an order that turns every interval, so each remote holder has its turn. A round
        compares only the buckets both sides hold, so a remote node with fewer shared buckets is
        not enough on its own; this covers them all each interval with as few rounds as the
        greedy choice gives (2 per datacenter of 3 with rf 2)."""
        remote = [link for link in self._links.alive(dc="other") if link.node_id is not None]
        if not remote:
            return []
        self._wan_turn += 1
        start = self._wan_turn % len(remote)
        order = remote[start:] + remote[:start]
        rank = {link.node_id: index for index, link in enumerate(order)}
        chosen: dict[int, None] = {}
        for group in self._remote_holder_groups():
            in_dc = [rank[node] for node in group if node in rank]
            if in_dc and not any(index in chosen for index in in_dc):
                chosen[min(in_dc)] = None
        return [order[index] for index in sorted(chosen)]

    def _remote_holder_groups(self) -> tuple[tuple[str, ...], ...]:
        """The holders in one other datacenter of some bucket held here, each group once, in bucket
        order and then datacenter order: what `_wan_cover` must reach. A few groups (3 per
        datacenter of 3 with rf 2), from the view's distinct holder sets of held buckets
        (`ViewTable.held_sets`), computed once per member view."""
        holding = self._holding
        table = holding.table()
        if self._remote_groups[0] is table:
            return self._remote_groups[1]
        groups: dict[tuple[str, ...], None] = {}
        for index in table.held_sets:
            by_dc: dict[str, list[str]] = {}
            for node in table.holder_sets[index]:
                dc = holding.dc_of(node)
                if dc is not None and dc != self._ctx.dc:
                    by_dc.setdefault(dc, []).append(node)
            for dc in sorted(by_dc):
                groups.setdefault(tuple(sorted(by_dc[dc])), None)
        self._remote_groups = (table, tuple(groups))
        return self._remote_groups[1]

    # ------------------------------------------------------------------ rounds as initiator

    def want_round(self, link: PeerLink) -> None:
        self._wanted[link.address] = None
        self._run_wanted()

    def restart_round(self, address: str) -> None:
        """Start the running round with `address` over now: its requests were lost (see
        `Gossip.on_hello`), and its answers to the old round are ignored by the round's counter."""
        if self.round is not None and self.round.address == address:
            self.round = None
            self._wanted[address] = None
            self._run_wanted()

    def forget(self, address: str) -> None:
        """The link at `address` is gone: it is owed no round."""
        self._wanted.pop(address, None)

    def _run_wanted(self) -> None:
        if self.round is not None or self._ctx.now_ms < self._not_before_ms:
            return
        for address in list(self._wanted):
            link = self._links.by_address.get(address)
            if link is None:
                del self._wanted[address]
            elif link.state == "alive":
                del self._wanted[address]
                self._start(link)
                return

    def _start(self, link: PeerLink) -> None:
        ctx = self._ctx
        self._round_counter += 1
        self.round = Round(
            link.address, self._round_counter, "branches", ctx.now_ms + ctx.config.ae_round_timeout_ms
        )
        ctx.counters.ae_rounds_started += 1
        accept = self.round.accept = self._filter(link.node_id)
        self._links.send(link.address, wire.TreeRoot(ctx.node_id, self._round_counter, self._root(accept)))

    # Placement: two nodes compare only the docs both hold, each side filtering the same way from
    # the same member view (see `holding`); without placement the filter is None and costs nothing.

    def _filter(self, node_id: str | None) -> Filter | None:
        return None if node_id is None else self._holding.filter_with(node_id)

    def _root(self, accept: Filter | None) -> bytes:
        root = self._docs.merkle_root()  # refreshes the tree
        if accept is None:
            return root
        root_value = 0
        for branch_hash in self._filtered_branches(accept):
            root_value ^= int.from_bytes(branch_hash, "big")
        return root_value.to_bytes(len(root), "big")

    def _branch_hashes(self, accept: Filter | None) -> list[bytes]:
        tree = self._docs.tree
        return tree.branch_hashes() if accept is None else list(self._filtered_branches(accept))

    def _filtered_branches(self, accept: Filter) -> tuple[bytes, ...]:
        """The branch hashes over the docs both this node and `accept.peer` hold: the XOR of the
        tree's branch hashes of the holder sets both are in (`grouped_branch_values`), which one walk
        of the tree per member view gives for every peer and the tree's changes keep up to date. A
        round costs no walk of the tree's 4,096 segments, idle or under writes."""
        tree = self._docs.tree
        cached = self._filtered_cache.get(accept.peer)
        if cached is not None and cached[0] == accept.view and cached[1] == tree.version:
            return cached[2]
        grouped = self._grouped_values(accept.table)
        values = [0] * tree.branches
        for index in accept.set_indices:
            for branch, value in grouped.get(index, {}).items():
                values[branch] ^= value
        hashes = tuple(value.to_bytes(HASH_BYTES, "big") for value in values)
        if cached is None and len(self._filtered_cache) >= self._ctx.config.peers_max:
            self._filtered_cache.clear()
        self._filtered_cache[accept.peer] = (accept.view, tree.version, hashes)
        return hashes

    def _grouped_values(self, table: ViewTable) -> dict[int, dict[int, int]]:
        """Holder set (of a bucket held here) -> branch -> hash, in `table`'s view. Kept for the
        current view only: a round begun before a view change gets its own view's values afresh (a
        base of another view's grouping would be wrong for every later catch-up)."""
        tree = self._docs.tree
        held, set_of = table.held_mask, table.set_of

        def group_of(bucket: int) -> int:
            index = set_of[bucket]
            return index if held[index] else -1

        cached = self._grouped
        since = cached[1] if cached is not None and cached[0] is table else None
        if since is not None and since[0] == tree.version:
            return since[1]
        values = tree.grouped_branch_values(group_of, since)
        if since is not None or table is self._holding.table():
            self._grouped = (table, values)  # `since` was brought up to date in place: keep it so
        return values[1]

    def _segment_hashes(self, branch: int, accept: Filter | None) -> list[bytes]:
        tree = self._docs.tree
        return tree.segment_hashes(branch) if accept is None else tree.filtered_segment_hashes(branch, accept)

    def _segment_entries(self, segment: int, accept: Filter | None) -> list[tuple[str, bytes]]:
        tree = self._docs.tree
        if accept is None:
            return tree.segment_entries(segment)
        return tree.filtered_segment_entries(segment, accept)

    def _round_for(self, node_id: str, round_id: int, phase: str) -> tuple[Round, PeerLink] | None:
        """The running round this answer belongs to, or None (late or foreign answers are counted)."""
        self._docs.refresh_tree()  # repairs may have landed since the round began
        current = self.round
        address = self._links.address_of.get(node_id)
        if (
            current is None
            or address != current.address
            or current.round_id != round_id
            or current.phase != phase
        ):
            self._ctx.counters.ae_answers_stale += 1
            return None
        return current, self._links.by_address[address]

    def _finish(self, current: Round, link: PeerLink, divergence: int) -> None:
        ctx = self._ctx
        self.round = None
        link.ae_rounds += 1
        link.ae_last_round_ms = ctx.now_ms
        link.ae_divergence = divergence
        ctx.counters.ae_rounds_completed += 1
        if divergence == 0:
            ctx.counters.ae_rounds_in_sync += 1
        if current.more:
            # Not at once: the repairs this round started must land first, or the next round would
            # find the same differences again.
            self._wanted[link.address] = None
            self._not_before_ms = ctx.now_ms + ctx.config.ae_followup_delay_ms
            log.info(
                "anti-entropy with %s: %d segments differ, continuing next round", link.node_id, divergence
            )
        self._run_wanted()

    def _next_phase(self, current: Round, phase: Literal["segments", "entries"]) -> None:
        current.phase = phase
        current.deadline_ms = self._ctx.now_ms + self._ctx.config.ae_round_timeout_ms

    def on_tree_branches(self, message: wire.TreeBranches) -> None:
        found = self._round_for(message.node_id, message.round_id, "branches")
        if found is None:
            return
        current, link = found
        local = [] if message.equal else self._branch_hashes(current.accept)
        branches = [index for index, value in enumerate(local) if value != message.hashes[index]]
        if not branches:
            self._finish(current, link, 0)
            return
        self._next_phase(current, "segments")
        request = wire.TreeSegmentsRequest(self._ctx.node_id, current.round_id, tuple(branches))
        self._links.send(link.address, request)

    def on_tree_segments(self, message: wire.TreeSegments | wire.TreeCells) -> None:
        found = self._round_for(message.node_id, message.round_id, "segments")
        if found is None:
            return
        current, link = found
        if isinstance(message, wire.TreeCells):
            self._request_entries(current, link, self._differing_from_cells(current, message), leaves=True)
        else:
            self._request_entries(current, link, self._differing_from_hashes(current, message), leaves=False)

    def _differing_from_hashes(self, current: Round, message: wire.TreeSegments) -> list[int]:
        per_branch = self._docs.tree.segments_per_branch
        differing: list[int] = []
        for index, branch in enumerate(message.branches):
            remote = message.hashes[index * per_branch : (index + 1) * per_branch]
            local = self._segment_hashes(branch, current.accept)
            differing.extend(
                branch * per_branch + at
                for at, value in enumerate(local)
                if at < len(remote) and remote[at] != value
            )
        return differing

    def _differing_from_cells(self, current: Round, message: wire.TreeCells) -> list[int]:
        """The segments of a differing row and a differing column of each branch's grid
        (`merkle.differing_from_cells`); a branch whose cells all agree (its difference hidden in this
        round's window, or repaired since the branches were compared) is left to a next round."""
        tree = self._docs.tree
        window = cell_window(current.round_id)
        differing: list[int] = []
        for branch, remote in zip(message.branches, message.cells, strict=True):
            local = branch_cells(tree.segment_values(branch, current.accept), window)
            found = differing_from_cells(local, remote)
            current.more = current.more or not found
            differing.extend(branch * tree.segments_per_branch + at for at in found)
        return differing

    def _request_entries(self, current: Round, link: PeerLink, differing: list[int], *, leaves: bool) -> None:
        """Ask for what differs in `differing` segments: with `leaves` (a small divergence, answered with
        cells), by sending this node's leaves of them; else (many branches differ, so most of their
        docs likely do) by asking for their entries."""
        if not differing:
            self._finish(current, link, 0)
            return
        link.ae_divergence = len(differing)
        limit = self._ctx.config.ae_segments_per_round_max
        current.more = current.more or len(differing) > limit
        self._next_phase(current, "entries")
        current.segments_requested = min(limit, len(differing))
        wanted = differing[:limit]
        if leaves:
            entries_of = {segment: self._segment_entries(segment, current.accept) for segment in wanted}
            window = cell_window(current.round_id)
            sent, leaf_bytes = request_leaves(entries_of, window, wire.ENTRIES_PER_MESSAGE_MAX)
            if sent:
                current.leaves_sent = sent
                current.segments_requested = len(sent)
                current.more = current.more or len(sent) < len(wanted)
                node_id, round_id = self._ctx.node_id, current.round_id
                self._links.send(
                    link.address, wire.TreeLeavesRequest(node_id, round_id, tuple(sent), leaf_bytes)
                )
                return
        request = wire.TreeEntriesRequest(self._ctx.node_id, current.round_id, tuple(wanted))
        self._links.send(link.address, request)

    def on_tree_entries(self, message: wire.TreeEntries | wire.TreeLeaves) -> None:
        found = self._round_for(message.node_id, message.round_id, "entries")
        if found is None:
            return
        current, link = found
        listed: dict[int, dict[str, bytes]] = {segment: {} for segment in message.segments}
        for segment, doc_id, remote_digest in message.entries:
            listed[segment][doc_id] = remote_digest
        if isinstance(message, wire.TreeEntries):
            remote = listed
        else:  # what the peer holds: the leaves it matched, and the entries it listed
            sent = current.leaves_sent or {}
            remote = {
                segment: remote_view(sent[segment], positions, listed[segment])
                for segment, positions in zip(message.segments, message.unmatched, strict=True)
                if segment in sent
            }
        repaired, requests, pushes = self._plan_repairs(current, link, remote)
        ctx = self._ctx
        ctx.counters.sync_pushes += len(pushes)
        ctx.counters.syncs_requested += len(requests)
        self._sync.push(link.address, pushes)
        self._sync.send_entries(
            link.address,
            lambda chunk: wire.SyncRequest(ctx.node_id, chunk),
            requests,
            [len(state) + len(doc_id) for doc_id, state in requests],
        )
        link.ae_docs_repaired += repaired
        ctx.counters.ae_docs_repaired += repaired
        if len(message.segments) < current.segments_requested:
            current.more = True  # the answer was cut to fit a message
        self._finish(current, link, link.ae_divergence or 0)

    def _plan_repairs(
        self, current: Round, link: PeerLink, remote: dict[int, dict[str, bytes]]
    ) -> tuple[int, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """For each differing doc within the round's budgets: a full push of a doc the peer lacks,
        else a sync request (whose answer carries what we lack; our push-back what the peer lacks)."""
        config = self._ctx.config
        docs_budget = config.ae_docs_per_round_max
        bytes_budget = config.ae_bytes_per_round_max
        repaired = 0
        requests: list[tuple[Any, ...]] = []
        pushes: list[tuple[Any, ...]] = []
        for segment, theirs in remote.items():
            ours = dict(self._segment_entries(segment, current.accept))
            for doc_id in sorted(ours.keys() | theirs.keys()):
                if ours.get(doc_id) == theirs.get(doc_id):
                    continue
                if repaired >= docs_budget or bytes_budget <= 0:
                    current.more = True
                    break
                repaired += 1
                entry = self._docs.get(doc_id)
                if doc_id not in theirs and entry is not None and entry.doc is None:
                    # Evicted: pushed on its own once loaded (its bytes are not known before).
                    self._docs.when_loaded(entry, lambda e: self._push_whole(link.address, e))
                elif doc_id not in theirs and entry is not None:
                    update = update_since(self._docs.doc(entry))
                    bytes_budget -= len(update)
                    link.ae_bytes_repaired += len(update)
                    pushes.append((doc_id, update))
                else:
                    requests.append((doc_id, entry.state_bytes if entry is not None else EMPTY_STATE))
        return repaired, requests, pushes

    def _push_whole(self, address: str, entry: DocEntry) -> None:
        update = update_since(self._docs.doc(entry))
        link = self._links.by_address.get(address)
        if link is not None:
            link.ae_bytes_repaired += len(update)
        self._ctx.counters.sync_pushes += 1
        self._sync.push(address, [(entry.doc_id, update)])

    # ------------------------------------------------------------------ answering a peer's round

    def on_tree_root(self, message: wire.TreeRoot) -> None:
        ctx = self._ctx
        accept = self._filter(message.node_id)
        if message.root == self._root(accept):
            reply = wire.TreeBranches(ctx.node_id, message.round_id, True, ())
        else:
            reply = wire.TreeBranches(
                ctx.node_id, message.round_id, False, tuple(self._branch_hashes(accept))
            )
        self._links.send_to_node(message.node_id, reply)

    def on_tree_segments_request(self, message: wire.TreeSegmentsRequest) -> None:
        self._docs.refresh_tree()  # repairs may have landed since the round began
        accept = self._filter(message.node_id)
        link = self._links.of_node(message.node_id)
        if len(message.branches) <= CELLS_BRANCHES_MAX and link is not None and (link.wire_version or 0) >= 4:
            window = cell_window(message.round_id)
            tree = self._docs.tree
            cells = tuple(
                branch_cells(tree.segment_values(branch, accept), window) for branch in message.branches
            )
            reply = wire.TreeCells(self._ctx.node_id, message.round_id, message.branches, cells)
            self._links.send_to_node(message.node_id, reply)
            return
        hashes: list[bytes] = []
        for branch in message.branches:
            hashes.extend(self._segment_hashes(branch, accept))
        self._links.send_to_node(
            message.node_id,
            wire.TreeSegments(self._ctx.node_id, message.round_id, message.branches, tuple(hashes)),
        )

    def _answer_leaves(self, message: wire.TreeLeavesRequest, accept: Filter | None) -> None:
        window = cell_window(message.round_id)
        answered: list[int] = []
        unmatched: list[tuple[int, ...]] = []
        entries: list[tuple[int, str, bytes]] = []
        hashed = 0
        for segment, leaves in zip(message.segments, message.leaves, strict=True):
            ours = self._segment_entries(segment, accept)
            hashed += len(ours)
            if answered and hashed > LEAVES_HASHED_MAX:
                break  # the rest is a follow-up round's: a request costs a bounded number of hashes
            listed, positions = answer_leaves(ours, leaves, window)
            if answered and len(entries) + len(listed) > wire.ENTRIES_PER_MESSAGE_MAX:
                break
            answered.append(segment)
            unmatched.append(positions)
            entries.extend((segment, doc_id, doc_digest) for doc_id, doc_digest in listed)
        reply = wire.TreeLeaves(
            self._ctx.node_id,
            message.round_id,
            tuple(answered),
            tuple(unmatched),
            tuple(entries[: wire.ENTRIES_PER_MESSAGE_MAX]),
        )
        self._links.send_to_node(message.node_id, reply)

    def on_tree_entries_request(self, message: wire.TreeEntriesRequest | wire.TreeLeavesRequest) -> None:
        self._docs.refresh_tree()  # repairs may have landed since the round began
        accept = self._filter(message.node_id)
        if isinstance(message, wire.TreeLeavesRequest):
            self._answer_leaves(message, accept)
            return
        answered: list[int] = []
        entries: list[tuple[int, str, bytes]] = []
        for segment in message.segments:
            segment_entries = self._segment_entries(segment, accept)
            if answered and len(entries) + len(segment_entries) > wire.ENTRIES_PER_MESSAGE_MAX:
                break
            answered.append(segment)
            entries.extend((segment, doc_id, doc_digest) for doc_id, doc_digest in segment_entries)
        reply = wire.TreeEntries(
            self._ctx.node_id,
            message.round_id,
            tuple(answered),
            tuple(entries[: wire.ENTRIES_PER_MESSAGE_MAX]),
        )
        self._links.send_to_node(message.node_id, reply)
