"""The read-follower hysteresis and caps (crdtsync.core.adaptive), for any sequence of read rates:
a doc is followed only above the budget, stays followed while its rate is at least half the budget,
is dropped only after the rate stayed below half the budget for the whole cool-down (so never
sooner than a cool-down after it started), and the per-node and per-doc caps always hold."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.core import wire
from crdtsync.core.adaptive import (
    CANDIDATE_SHARE,
    DECIDE_INTERVAL_MS,
    Follow,
    Followers,
    Reader,
    dc_reads,
    decide,
    rank_key,
)
from crdtsync.core.load_wire import DocLoad, LoadSummaries, NodeLoad
from crdtsync.core.replica import Replica, ReplicaConfig

BUDGET = 10.0
COOL_DOWN_MS = 5_000.0
samples = st.lists(st.tuples(st.floats(0.0, 3_000.0), st.floats(0.0, 30.0)), max_size=200)


@settings(max_examples=400)
@given(samples)
def test_the_hysteresis_follows_above_the_budget_and_drops_only_after_a_whole_cool_down(
    stream: list[tuple[float, float]],
) -> None:
    follow: Follow | None = None
    now_ms = 0.0
    last_warm_ms: float | None = None
    """The last time the rate was at least half the budget while followed."""
    for gap_ms, rate in stream:
        now_ms += gap_ms
        before = follow
        follow = decide(before, rate, now_ms, BUDGET, COOL_DOWN_MS)
        if before is None:
            assert (follow is not None) == (rate > BUDGET)
            last_warm_ms = now_ms if follow is not None else None
        elif rate >= BUDGET / 2:
            assert follow is not None and follow.cool_since_ms is None and follow.since_ms == before.since_ms
            last_warm_ms = now_ms
        elif follow is None:
            assert last_warm_ms is not None and now_ms - last_warm_ms >= COOL_DOWN_MS
            assert now_ms - before.since_ms >= COOL_DOWN_MS
        else:
            assert follow.cool_since_ms is not None and follow.cool_since_ms >= (last_warm_ms or 0.0)


def _replica(**config: object) -> Replica:
    return Replica(
        node_id="n5", epoch=1, client_id=9, address="n5", publish_endpoint="n5p", dc="east",
        config=ReplicaConfig(follow_reads_per_s=BUDGET, follow_cool_down_ms=COOL_DOWN_MS, load_half_life_ms=2_000.0, **config),  # type: ignore[arg-type]
    )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 9), st.integers(1, 40)), min_size=1, max_size=60),
    st.integers(1, 4),
    st.integers(0, 3),
    st.lists(st.tuples(st.integers(0, 9), st.sampled_from(["n1", "n2", "n3", "n7", "n8"])), max_size=12),
)
def test_the_caps_hold_for_any_reads_and_any_other_followers(
    bursts: list[tuple[int, int]], docs_max: int, per_doc_max: int, elsewhere: list[tuple[int, str]]
) -> None:
    replica = _replica(followed_docs_max=docs_max, followers_per_doc_max=per_doc_max)
    board = replica.load
    for node_id in ("n1", "n2", "n3", "n7", "n8"):
        replica.membership.merge(
            wire.MemberEntry(node_id, "east", node_id, node_id + "p", 1, 1, False), 0.0, direct=True
        )
    followers = Followers(
        replica._ctx, board, lambda doc_id: False
    )  # holds nothing: every doc may be followed
    by_node: dict[str, list[str]] = {}
    for doc, node_id in elsewhere:
        by_node.setdefault(node_id, []).append(f"d{doc}")
    summaries = tuple(
        NodeLoad(
            node_id, "east", 1, 1, 0.0, tuple(DocLoad(doc_id, True, 0.0, ()) for doc_id in sorted(set(docs)))
        )
        for node_id, docs in sorted(by_node.items())
    )
    if summaries:
        board.on_message(LoadSummaries("n1", summaries), 0.0)
    now_ms = 0.0
    followed_any = False
    for doc, reads in bursts:
        now_ms += DECIDE_INTERVAL_MS
        board.table.count("read", f"d{doc}", "east", now_ms, float(reads * 20))
        followers.step(now_ms)
        assert len(followers.follows) <= docs_max
        for doc_id in followers.follows:
            me = rank_key(doc_id, "n5")
            before_me = [n for n, docs in by_node.items() if doc_id in docs and rank_key(doc_id, n) < me]
            assert len(before_me) < per_doc_max, (doc_id, before_me)
        assert board.following == set(followers.follows)
        followed_any = followed_any or bool(followers.follows)
    if not elsewhere and per_doc_max and max(reads for _doc, reads in bursts) >= 5:
        assert followed_any, "reads far over the budget, no cap in the way, and nothing followed"


readers = st.lists(
    st.tuples(st.sampled_from(["n1", "n2", "n3", "n4"]), st.floats(0.0, 40.0), st.booleans()),
    max_size=4,
    unique_by=lambda reader: reader[0],
)


@given(st.text(min_size=1, max_size=8), readers)
def test_a_datacenters_reads_are_its_readers_summed_and_the_next_follower_reads_near_the_most(
    doc_id: str, listed: list[tuple[str, float, bool]]
) -> None:
    here = dc_reads(doc_id, [Reader(node_id, "east", rate, following) for node_id, rate, following in listed])
    assert here.total == sum(rate for _n, rate, _f in listed)
    waiting = {node_id: rate for node_id, rate, following in listed if not following and rate > 0}
    assert here.forwarded == sum(waiting.values())
    assert set(here.candidates) <= set(waiting)
    assert list(here.candidates) == sorted(here.candidates, key=lambda node_id: rank_key(doc_id, node_id))
    if waiting:
        most = max(waiting.values())
        assert {n for n, rate in waiting.items() if rate >= CANDIDATE_SHARE * most} == set(here.candidates)
    assert (here.next_follower is None) == (not waiting)


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 30.0), readers, st.floats(0.0, 40.0))
def test_a_node_follows_when_its_datacenter_forwards_over_the_budget_and_it_comes_next(
    own_rate: float, listed: list[tuple[str, float, bool]], elsewhere_rate: float
) -> None:
    """n5 and n1-n4 are in east, n7 in west; nobody holds the doc. West's reads never count for
    east, and n5 follows exactly when east's readers that do not follow it read more than the
    budget and n5 comes first among them (`dc_reads`): however little n5 reads itself."""
    replica = _replica()
    board = replica.load
    for node_id, dc in (("n1", "east"), ("n2", "east"), ("n3", "east"), ("n4", "east"), ("n7", "west")):
        replica.membership.merge(
            wire.MemberEntry(node_id, dc, node_id, node_id + "p", 1, 1, False), 0.0, direct=True
        )
    summaries = [
        NodeLoad(node_id, "east", 1, 1, 0.0, (DocLoad("d", following, 0.0, (("read", "east", rate),)),))
        for node_id, rate, following in listed
    ]
    summaries.append(
        NodeLoad("n7", "west", 1, 1, 0.0, (DocLoad("d", False, 0.0, (("read", "west", elsewhere_rate),)),))
    )
    now_ms = 10_000.0
    board.on_message(LoadSummaries("n1", tuple(summaries)), now_ms)
    unit = math.log(2) / (board.table.half_life_ms / 1000.0)
    if own_rate:
        board.table.count("read", "d", "east", now_ms, own_rate / unit)
    own = board.table.rates("d", now_ms)
    own_reads = 0.0 if own is None else own.reads["east"]
    followers = Followers(replica._ctx, board, lambda doc_id: False)
    start, _stop = followers.step(now_ms)
    here = dc_reads(
        "d", [Reader("n5", "east", own_reads, False)] + [Reader(n, "east", r, f) for n, r, f in listed]
    )
    elsewhere_following = sum(1 for _n, _r, following in listed if following)
    wanted = here.forwarded > BUDGET and here.next_follower == "n5" and elsewhere_following < 3
    assert (start == ["d"]) == wanted, (own_reads, listed, here)
