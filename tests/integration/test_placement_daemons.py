"""Partitioned placement on real `crdtsync serve` processes (issue 13): 5 daemons in 2 datacenters
(3 + 2) with SQLite stores and `[[placement]] rf = 2` in their config file.

- writes over HTTP through every node, including nodes that do not hold the doc (with `[http]
  forward = false` they take it themselves, hand it to a holder and drop it `handoff_grace_ms`
  later; forwarding to a holder is test_forwarding_daemons'); a replica is killed with SIGKILL during the writes,
  the writes go on through the other nodes, it restarts;
- a 6th node joins and takes its share (docs it now holds arrive with their content, docs others no
  longer hold leave them);
- a node is killed with SIGKILL in the middle of handing docs off, together with the holder it hands
  them to, and both restart: nothing is lost and the handoff completes;
- after each step every acknowledged write is on every holder of its doc (read there only: reads are
  not forwarded), no node lists a doc it does not hold, and at the end `GET /v1/placement/{doc}` and
  `crdtsync placement DOC --json` answer the same on every node and each SQLite store has exactly
  the docs its node holds.

A node *holds* a doc when it is one of its 2 replicas in its datacenter; relays (one per datacenter)
hold only their share like the others. The times each step takes to settle are printed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from daemon_support import FAST_MEMBERSHIP, FAST_REPLICATION, wait_until

from crdtsync.cli import main
from crdtsync.core.state import covers, decode_state_vector
from crdtsync.store.sqlite import SqliteStore
from crdtsync.testing.cluster import Ack, AckedWrite, LocalCluster, LocalDaemon

pytestmark = pytest.mark.integration

DCS = {"a1": "dc1", "a2": "dc1", "a3": "dc1", "b1": "dc2", "b2": "dc2", "a4": "dc1"}
FIRST = ["a1", "a2", "a3", "b1", "b2"]
JOINER = "a4"
EVERYONE = [*FIRST, JOINER]
DOC_IDS = [f"runs/{index:02d}" for index in range(24)]
HANDOFF_INTERVAL_MS = 100
HANDOFF_GRACE_MS = 1000
REPLICATION = {
    **FAST_REPLICATION,
    "handoff_interval_ms": HANDOFF_INTERVAL_MS,
    "handoff_grace_ms": HANDOFF_GRACE_MS,
}
MEMBERSHIP = {**FAST_MEMBERSHIP, "acceptable_pause_ms": 1000}
"""Fast gossip, but a second of silence before a suspicion: on a loaded 2-core machine a daemon is
sometimes not scheduled for that long, and each false suspicion of a relay makes a stand-in relay
that pulls every doc and hands them back later (correct, but a step then takes far longer)."""
CONFIG_TOML = "\n".join(
    [
        "[replication]",
        *(f"{key} = {value}" for key, value in REPLICATION.items()),
        "",
        "[membership]",
        *(f"{key} = {value}" for key, value in MEMBERSHIP.items()),
        "",
        "[cluster]",
        "partitions = 4096",
        "",
        "[[placement]]",
        "rf = 2  # 2 replicas in each datacenter",
        "",
        "[http]",
        "forward = false  # writes on non-holders take the hint path (forwarding: test_forwarding_daemons)",
        "",
    ]
)
STEP_TIMEOUT_S = 30.0
"""The deadline of each wait; a step settles in a few seconds."""
WRITE_GAP_S = 0.005
"""Pacing of the background writer (about 100 writes a second), so the ack log stays small to check."""
HTTP_TIMEOUT_S = 5.0
SLOW_SETTLE_S = 8.0
"""A step that takes longer to settle prints what it waited for (on an idle machine: 2-4 s)."""

Views = dict[str, frozenset[str]]
"""Doc id -> the nodes that hold it (its replicas in every datacenter)."""


def put(cluster: LocalCluster[LocalDaemon], client: httpx.Client, name: str, doc_id: str) -> bool:
    """Write a new key (NODE-SEQ, value SEQ) into `doc_id` through `name` and log it; whether it was
    acknowledged. Every key is written once, so every acknowledged write is checked by value."""
    daemon = cluster[name]
    seq = cluster.acks.next_seq(name)
    key = f"{name}-{seq}"
    write = AckedWrite(name, seq, doc_id, key, seq, True, daemon.starts)
    try:
        response: httpx.Response | None = client.put(f"{daemon.url}/v1/docs/{doc_id}/keys/{key}", json=seq)
    except httpx.HTTPError:
        response = None
    return cluster.acks.record(write, response)


class Writer(threading.Thread):
    """Writes through `names` in turn, one write at a time, cycling over every (node, doc) pair,
    until `stop`. Its own HTTP client: the test's thread keeps using the cluster's."""

    def __init__(
        self, cluster: LocalCluster[LocalDaemon], names: Sequence[str], doc_ids: Sequence[str]
    ) -> None:
        super().__init__(name="placement-writer", daemon=True)
        self.cluster = cluster
        self.names = list(names)
        self.doc_ids = list(doc_ids)
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(timeout=HTTP_TIMEOUT_S, trust_env=False) as client:
                turn = 0
                while not self._stop_event.is_set():
                    name = self.names[turn % len(self.names)]
                    # 7 is prime to the doc count: every node writes every doc over the cycle.
                    put(self.cluster, client, name, self.doc_ids[(turn * 7) % len(self.doc_ids)])
                    turn += 1
                    self._stop_event.wait(WRITE_GAP_S)
        except BaseException as exc:  # surfaced by `stop` in the test's thread
            self.error = exc

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=STEP_TIMEOUT_S)
        assert not self.is_alive(), "the writer did not stop"
        if self.error is not None:
            raise self.error


class Probe:
    """What the running daemons say over HTTP: placement, doc listings, status, acknowledged writes."""

    def __init__(self, cluster: LocalCluster[LocalDaemon]) -> None:
        self.cluster = cluster
        self.client = httpx.Client(timeout=HTTP_TIMEOUT_S, trust_env=False)
        self.settled_holders: Views = {}
        """The holders of each doc when `unsettled` last found nothing to wait for."""
        self.settled_relays: set[str] = set()

    def close(self) -> None:
        self.client.close()

    def get(self, name: str, path: str, **params: Any) -> Any:
        """The JSON of a 200 answer, None for anything else (a daemon restarting)."""
        try:
            response = self.client.get(self.cluster[name].url + path, params=params)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def status(self, name: str) -> dict[str, Any]:
        body = self.get(name, "/v1/status")
        assert isinstance(body, dict), f"{name} answers /v1/status"
        return body

    def counter(self, name: str, counter: str) -> int:
        value: int = self.status(name)["counters"][counter]
        return value

    def sees_alive(self, names: Sequence[str]) -> bool:
        """Whether each of `names` sees every other one alive."""
        for name in names:
            body = self.get(name, "/v1/status")
            if body is None:
                return False
            alive = {m["node_id"] for m in body["members"] if m["state"] == "alive"}
            if not set(names) - {name} <= alive:
                return False
        return True

    def placement(self, name: str, doc_id: str) -> dict[str, Any] | None:
        body = self.get(name, f"/v1/placement/{doc_id}")
        return body if isinstance(body, dict) else None

    def views(self, names: Sequence[str], doc_ids: Iterable[str]) -> tuple[Views, list[str]]:
        """The holders of each doc as every node of `names` computes them; the disagreements."""
        agreed: Views = {}
        problems: list[str] = []
        for doc_id in doc_ids:
            seen: dict[str, frozenset[str]] = {}
            for name in names:
                body = self.placement(name, doc_id)
                if body is None:
                    problems.append(f"{name}: no placement answer for {doc_id}")
                    continue
                seen[name] = holders_of(body)
            if len(set(seen.values())) != 1:
                problems.append(
                    f"{doc_id}: holders differ: {sorted((n, sorted(h)) for n, h in seen.items())}"
                )
                continue
            agreed[doc_id] = next(iter(seen.values()))
        return agreed, problems

    def listing(self, name: str) -> set[str] | None:
        """Every doc id `name` has (GET /v1/docs, paged); None without an answer."""
        ids: set[str] = set()
        after = ""
        while True:
            page = self.get(name, "/v1/docs", limit=1000, after=after)
            if page is None:
                return None
            ids.update(page["docs"])
            if page["next"] is None:
                return ids
            after = page["next"]

    def unsettled(self, names: Sequence[str], doc_ids: Sequence[str]) -> list[str]:
        """What keeps the cluster from the state the test waits for (empty: settled): every node of
        `names` computes the same holders for each doc, holds exactly the docs it holds, and every
        acknowledged write is on every holder of its doc."""
        holders, problems = self.views(names, doc_ids)
        if problems:
            return problems
        relays = self.relays(names[0])
        for name in names:
            listed = self.listing(name)
            if listed is None:
                return [f"{name}: no doc listing"]
            for doc_id in doc_ids:
                holds = name in holders[doc_id]
                if holds and doc_id not in listed:
                    problems.append(f"{name} holds {doc_id} and does not have it")
                elif not holds and doc_id in listed:
                    problems.append(f"{name} has {doc_id} and does not hold it")
        problems = problems or self.missing_acks(names, holders)
        if not problems:
            self.settled_holders, self.settled_relays = holders, relays
        return problems

    def relays(self, name: str) -> set[str]:
        """The relays `name` counts (one per datacenter)."""
        return {relay for dc in self.status(name)["datacenters"] for relay in dc["relays"]}

    def agreed_views(self, names: Sequence[str]) -> tuple[Views, float]:
        """Wait until every node of `names` computes the same holders for every doc: those holders
        and the seconds waited (views agree again after a transient suspicion moves a relay)."""
        agreed: list[Views] = []
        problems: list[str] = []

        def agree() -> bool:
            holders, found = self.views(names, DOC_IDS)
            problems[:] = found
            agreed[:] = [holders]
            return not found

        waited_s = wait_until(
            agree, STEP_TIMEOUT_S, lambda: f"every node places every doc alike: {problems[:5]}"
        )
        return agreed[0], waited_s

    def missing_acks(self, names: Sequence[str], holders: Views) -> list[str]:
        """Every acknowledged write checked on every node of `names` that holds its doc: its key has
        its value there, and the doc's state vector covers each writer's last acknowledgement. One
        read of each doc per node (a read per key would be thousands per check)."""
        acks_by_doc: dict[str, list[Ack]] = {}
        for ack in self.cluster.acks.acks:
            acks_by_doc.setdefault(ack.write.doc, []).append(ack)

        async def check(client: httpx.AsyncClient, name: str, doc_id: str) -> list[str]:
            try:
                response = await client.get(f"{self.cluster[name].url}/v1/docs/{doc_id}")
            except httpx.HTTPError as exc:
                return [f"{name}: {doc_id}: {exc!r}"]
            if response.status_code != 200:
                return [f"{name}: {doc_id}: HTTP {response.status_code} {response.text[:120]}"]
            body = response.json()
            data, have = body["data"], decode_state_vector(b64url_decode(body["state_vector"]))
            problems: list[str] = []
            last_of_writer: dict[tuple[str, int], Ack] = {}
            for ack in acks_by_doc.get(doc_id, []):
                write = ack.write
                last_of_writer[(write.node, write.incarnation)] = ack
                if write.key not in data:
                    problems.append(f"{name}: {doc_id}: no {write.key} (acknowledged by {write.node})")
                elif data[write.key] not in self.cluster.acks.allowed_values(write):
                    problems.append(
                        f"{name}: {doc_id}: {write.key} = {data[write.key]!r}, not {write.value!r}"
                    )
            for ack in last_of_writer.values():
                if not covers(have, decode_state_vector(b64url_decode(ack.state_vector))):
                    problems.append(
                        f"{name}: {doc_id}: behind the last write acknowledged by {ack.write.node}"
                    )
            return problems

        async def verify() -> list[str]:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, trust_env=False) as client:
                found = await asyncio.gather(
                    *(
                        check(client, name, doc_id)
                        for name in names
                        for doc_id in acks_by_doc
                        if name in holders.get(doc_id, ())
                    )
                )
            return [problem for problems in found for problem in problems]

        return asyncio.run(verify())

    def wait_settled(self, names: Sequence[str], what: str) -> float:
        """Wait (deadline `STEP_TIMEOUT_S`) until `unsettled` is empty; the seconds it took. A slow
        settle prints what it waited for last, so a run that passes slowly still says why."""
        last: list[str] = []
        seen: list[str] = []
        started = time.monotonic()
        waited_last_s = 0.0

        def settled() -> bool:
            nonlocal waited_last_s
            last[:] = self.unsettled(names, DOC_IDS)
            if last:
                seen[:] = last
                waited_last_s = time.monotonic() - started
            return not last

        took_s = wait_until(settled, STEP_TIMEOUT_S, lambda: f"{what}; still: {last[:20]}", poll_s=0.05)
        if took_s > SLOW_SETTLE_S:
            print(
                f"  slow: {what} took {took_s:.1f} s; at {waited_last_s:.1f} s it still waited for "
                f"{len(seen)} things: {seen[:5]}"
            )
        return took_s


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def holders_of(placement: dict[str, Any]) -> frozenset[str]:
    """The nodes holding a doc, from its `GET /v1/placement/{doc}` answer."""
    return frozenset(r["node_id"] for placed in placement["replicas"].values() for r in placed)


def docs_per_node(holders: Views, names: Iterable[str]) -> dict[str, int]:
    return {name: sum(name in held for held in holders.values()) for name in names}


def handoff_counters(probe: Probe, names: Iterable[str]) -> dict[str, int]:
    """The handoff counters summed over `names` (since each one's last start)."""
    keys = ("handoff_offers_sent", "handoff_acks_received", "handoff_docs_dropped", "updates_not_held")
    totals = dict.fromkeys(keys, 0)
    for name in names:
        counters = probe.status(name)["counters"]
        for key in keys:
            totals[key] += counters[key]
    return totals


def test_rf2_in_two_datacenters_survives_kills_a_join_and_a_kill_during_handoff(tmp_path: Path) -> None:
    started = time.monotonic()
    with LocalCluster.named(
        str(tmp_path),
        EVERYONE,
        dcs=DCS,
        seeds=FIRST,  # the joiner is nobody's configured peer: it joins through them
        config_toml=CONFIG_TOML,
        note="test_placement_daemons",
    ) as cluster:
        probe = Probe(cluster)
        try:
            _scenario(cluster, probe)
        finally:
            probe.close()
    print(f"whole test {time.monotonic() - started:.1f} s")


def _scenario(cluster: LocalCluster[LocalDaemon], probe: Probe) -> None:
    # ---- 5 daemons, 2 datacenters
    for name in FIRST:
        cluster.start(name)
    up_s = cluster.wait_healthy(FIRST)
    formed_s = wait_until(lambda: probe.sees_alive(FIRST), STEP_TIMEOUT_S, "every node sees the others alive")
    holders, agreed_s = probe.agreed_views(FIRST)
    first = probe.placement("a1", DOC_IDS[0])
    assert first is not None and first["enforced"] and first["rf"] == 2
    relays = probe.relays("a1")
    assert len(relays) == 2 and {DCS[r] for r in relays} == {"dc1", "dc2"}, relays
    for doc_id, held in holders.items():
        assert {n for n in held if DCS[n] == "dc2"} == {"b1", "b2"}, (doc_id, held)
        assert len({n for n in held if DCS[n] == "dc1"}) == 2, (doc_id, held)
    dc1_relay = next(r for r in relays if DCS[r] == "dc1")
    assert docs_per_node(holders, [dc1_relay])[dc1_relay] < len(DOC_IDS), "a relay holds its share only"
    print(
        f"healthy in {up_s:.1f} s, members alive everywhere {formed_s:.1f} s later, "
        f"placement agreed {agreed_s:.1f} s later; relays {sorted(relays)}; "
        f"docs held per node {docs_per_node(holders, FIRST)}"
    )

    # ---- writes through every node; SIGKILL of a replica (not a relay) during them; restart
    victim = next(n for n in ("a1", "a2", "a3") if n not in relays)
    victims_docs = {doc_id for doc_id, held in holders.items() if victim in held}
    assert victims_docs and len(victims_docs) < len(DOC_IDS), victims_docs
    writer = Writer(cluster, FIRST, DOC_IDS)
    writer.start()
    try:
        wait_until(lambda: len(cluster.acks.acks) >= 60, STEP_TIMEOUT_S, "60 acknowledged writes")
        cluster.kill(victim)
        killed_at = time.monotonic()
        acks_at_kill = len(cluster.acks.acks)
        wait_until(
            lambda: len(cluster.acks.acks) >= acks_at_kill + 100,
            STEP_TIMEOUT_S,
            "100 writes acknowledged by the others",
        )
        acks_at_restart = len(cluster.acks.acks)
        cluster.restart(victim)
        cluster.wait_healthy([victim])
        down_s = time.monotonic() - killed_at
        wait_until(
            lambda: len(cluster.acks.selected(victim, incarnation=2)) >= 20,
            STEP_TIMEOUT_S,
            f"20 writes acknowledged by the restarted {victim}",
        )
    finally:
        writer.stop()
    while_down = [
        ack for ack in cluster.acks.acks[acks_at_kill:acks_at_restart] if ack.write.doc in victims_docs
    ]
    assert while_down, "writes for the killed replica's docs went on through the others"
    # Of those, the ones taken by a node that does not hold the doc either: hints it handed to the
    # other holder while the replica was down.
    hinted = [ack for ack in while_down if ack.write.node not in holders[ack.write.doc]]
    settle_s = probe.wait_settled(FIRST, "every write on every holder after the kill and restart")
    counters = handoff_counters(probe, FIRST)
    print(
        f"killed replica {victim} down {down_s:.1f} s; {len(cluster.acks.acks)} writes acknowledged, "
        f"{len(cluster.acks.failures)} failed (sent to {victim} while down); "
        f"{len(while_down)} for its {len(victims_docs)} docs while it was down ({len(hinted)} of them on "
        f"non-holders), all on it after the restart; "
        f"settled {settle_s:.1f} s after the writes; counters {counters}"
    )
    assert counters["handoff_docs_dropped"] > 0, "writes on non-holders were handed off and dropped"

    # ---- a 6th node joins and takes its share
    joined_at = time.monotonic()
    cluster.start(JOINER)
    cluster.wait_healthy([JOINER])
    wait_until(lambda: probe.sees_alive(EVERYONE), STEP_TIMEOUT_S, f"every node sees {JOINER} alive")
    joined_s = time.monotonic() - joined_at
    with httpx.Client(timeout=HTTP_TIMEOUT_S, trust_env=False) as client:
        for turn, name in enumerate(EVERYONE * 4):
            assert put(cluster, client, name, DOC_IDS[(turn * 5) % len(DOC_IDS)]), name
    rebalance_s = probe.wait_settled(EVERYONE, f"{JOINER} holds its share with its content")
    holders, relays = probe.settled_holders, probe.settled_relays
    share = docs_per_node(holders, EVERYONE)
    print(
        f"{JOINER} alive everywhere {joined_s:.1f} s after its start; every doc on its holders only "
        f"{rebalance_s:.1f} s later; relays {sorted(relays)}; docs held per node {share}"
    )
    assert share[JOINER] > 0, f"{JOINER} took a share"
    assert all(count <= len(DOC_IDS) for count in share.values())

    # ---- SIGKILL of a node in the middle of handing docs off, and of the holder it hands them to
    candidates = [n for n in EVERYONE if DCS[n] == "dc1" and n not in relays]
    handing = max(candidates, key=lambda n: sum(n not in held for held in holders.values()))
    not_held = [doc_id for doc_id, held in holders.items() if handing not in held]
    assert len(not_held) >= 3, (handing, not_held)
    targets = {doc_id: handoff_target(probe, handing, doc_id) for doc_id in not_held}
    receiver = max(
        {t for t in targets.values() if t not in relays} or set(targets.values()),
        key=lambda t: list(targets.values()).count(t),
    )
    acks_before = probe.counter(handing, "handoff_acks_received")
    with httpx.Client(timeout=HTTP_TIMEOUT_S, trust_env=False) as client:
        for doc_id in not_held:
            assert put(cluster, client, handing, doc_id), doc_id
    # The handoff is under way once a holder answered one of the offers (covered): kill both sides
    # before the second covered answer a grace later would let it drop them.
    wait_until(
        lambda: probe.counter(handing, "handoff_acks_received") > acks_before,
        STEP_TIMEOUT_S,
        f"{handing} hears a first answer to its offers",
    )
    still_there = set(probe.listing(handing) or ()) & set(not_held)
    cluster.kill(handing)
    cluster.kill(receiver)
    assert still_there, f"{handing} dropped nothing within the grace"
    handoff_at = time.monotonic()
    cluster.restart(handing)
    cluster.restart(receiver)
    cluster.wait_healthy([handing, receiver])
    resumed_s = probe.wait_settled(EVERYONE, f"{handing} hands off again after its restart")
    dropped = probe.counter(handing, "handoff_docs_dropped")
    print(
        f"killed {handing} with {len(still_there)} of its {len(not_held)} written docs not yet handed off, "
        f"and {receiver} (the target of {list(targets.values()).count(receiver)} of them); "
        f"handoff complete {time.monotonic() - handoff_at:.1f} s after the kills "
        f"({resumed_s:.1f} s after both answered /health); {handing} dropped {dropped} since its restart"
    )
    assert dropped >= len(still_there), f"the restarted {handing} handed off what its store still had"

    # ---- every node places every doc alike, by HTTP and by the CLI. The replicas' states are the
    # failure detectors' observations, which a loaded machine makes flap (a late heartbeat makes a
    # member suspect for a moment): wait for a moment when every node answers alike, all alive.
    runner = CliRunner()
    last: list[str] = []
    first_seen: list[str] = []

    def placement_agrees() -> bool:
        last[:] = placement_disagreements(probe, runner, cluster)
        if last and not first_seen:
            first_seen.extend(last[:3])
        return not last

    agreed_s = wait_until(
        placement_agrees, STEP_TIMEOUT_S, lambda: f"every node places every doc alike: {last[:5]}", poll_s=0.1
    )
    print(
        f"placement answers equal on every node, found in {agreed_s:.1f} s (a look asks every node "
        f"about every doc); disagreements seen before: {first_seen or 'none'}"
    )
    verified = len(cluster.acks.acks)
    print(f"{verified} acknowledged writes on every holder; placement agrees on all {len(EVERYONE)} nodes")

    # ---- each SQLite store keeps exactly the docs its node holds (killed: a SIGTERM is a leave,
    # which would move docs on the nodes still up)
    probe.wait_settled(EVERYONE, "every doc on its holders only before the last kills")
    holders = probe.settled_holders
    for name in EVERYONE:
        cluster.kill(name)
    for name in EVERYONE:
        store = SqliteStore(cluster[name].data_dir, node_id=name)
        try:
            stored = {record.doc_id for record in store.docs()}
        finally:
            store.close()
        assert stored == {doc_id for doc_id, held in holders.items() if name in held}, name


def placement_disagreements(probe: Probe, runner: CliRunner, cluster: LocalCluster[LocalDaemon]) -> list[str]:
    """Where the answers to `GET /v1/placement/{doc}` (and, for a few docs, `crdtsync placement DOC
    --json`) of the nodes differ from the first node's, or name a replica not alive."""
    found: list[str] = []
    for doc_id in DOC_IDS:
        answers: dict[str, Any] = {name: probe.placement(name, doc_id) for name in EVERYONE}
        if doc_id in DOC_IDS[:3]:
            for name in EVERYONE:
                result = runner.invoke(main, ["placement", doc_id, "--json", "--url", cluster[name].url])
                answers[f"{name} (CLI)"] = json.loads(result.output) if result.exit_code == 0 else None
        reference = answers[EVERYONE[0]]
        if reference is None or any(answer is None for answer in answers.values()):
            found.append(f"{doc_id}: no answer from {[n for n, a in answers.items() if a is None]}")
            continue
        for name, answer in answers.items():
            differing = {key: value for key, value in answer.items() if reference.get(key) != value}
            if differing:
                found.append(f"{doc_id}: {name} answers {differing}, {EVERYONE[0]} {reference}")
        states = {r["state"] for placed in reference["replicas"].values() for r in placed}
        if states != {"alive"}:
            found.append(f"{doc_id}: replicas {reference['replicas']}")
    return found


def handoff_target(probe: Probe, name: str, doc_id: str) -> str:
    """Where `name` offers `doc_id` (all up): its datacenter's first replica in preference order
    (as `Handoff._target` chooses)."""
    body = probe.placement(name, doc_id)
    assert body is not None
    order: list[str] = [r["node_id"] for r in body["replicas"][DCS[name]]]
    return next(node for node in order if node != name)
