"""The network faults of the chaos campaign (`python -m fuzz.chaos --faults process,network`).

Every daemon sits behind a `crdtsync.testing.faultproxy.FaultProxy` in the campaign's event loop: its
own source address 127.0.0.N, the proxy's listeners advertised for its request and PUB sockets, so
every replication byte crosses the proxy. Links between datacenters get a WAN latency drawn in
30-150 ms (10% jitter) and a 5 MB/s cap for the whole run. Then, one at a time, the seeded schedule
(`plan_network`) partitions the cluster (a node, a datacenter, one-way, bridge, two halves) for 1-6 s,
resets the connections between two nodes, or degrades a node's links to 200-500 ms and 64 KB/s. In
the quiet gaps between those, slow closes: the connections between two nodes are closed (FIN) while
their links deliver a close 0.2-2 s late, as a proxy or load balancer draining a connection does;
drawn from a stream of their own, after the plan's, so that a seed keeps the plan it had before.

Two measurements ride on it:
- after each partition heals, probe writes made on every available node just before the heal (one
  per node, acknowledged, checked at the end like every other write) are awaited on every available
  node: the time until all are everywhere is the convergence time of that heal, by shape;
- one arrival probe at a time: a write to one key of `ARRIVAL_DOC` on a random available node, and
  the time from its send until each node's watch stream (GET /v1/docs/{doc}/watch) shows it, with
  the base latency of the link from writer to reader (so the WAN figure reads against it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from crdtsync.testing.faultplans import NetworkFault, NetworkPlan, plan_network
from crdtsync.testing.faultproxy import FaultProxy, LinkFaults, put_behind_proxy

if TYPE_CHECKING:
    from fuzz.chaos import Campaign, Daemon

PROBE_DOC_PREFIX = "chaos/heal-"
PROBES_PER_DOC = 100
"""Heal probes per doc (one key per node and heal): no doc grows without bound."""
HEAL_CONVERGE_TIMEOUT_S = 30.0
HEAL_POLL_S = 0.1
ARRIVAL_DOC = "chaos/arrival"
ARRIVAL_GAP_S = (0.3, 1.0)
ARRIVAL_TIMEOUT_S = 10.0
"""An arrival probe not seen everywhere by then is abandoned (a node down, a partition): not a finding."""
WATCH_RETRY_S = 0.5
WATCH_LINE_BYTES_MAX = 1 << 20
ARRIVALS_MAX = 100_000
REQUEST_TIMEOUT_S = 5.0
SLOW_CLOSE_MS = (200.0, 2000.0)
SLOW_CLOSE_HOLD_S = (0.5, 1.5)
"""How long the links keep their slow close after the connections were closed (reconnects meet it too)."""
SLOW_CLOSE_SHARE = 0.8
"""Of the quiet gaps long enough for one, those that get a slow close."""
SLOW_CLOSE_GAP_S = 0.25
"""A slow close keeps this far from the faults before and after it."""


@dataclass
class NetworkSummary:
    """What the network side did and measured."""

    faults: Counter[str] = field(default_factory=Counter)
    """By kind and shape: "partition node", "reset", "degrade node", ..."""
    heal_converge_s: dict[str, list[float]] = field(default_factory=dict)
    """By partition shape: seconds from the heal until every heal probe was on every available node."""
    heal_unconverged: int = 0
    """Heals whose probes were not everywhere within HEAL_CONVERGE_TIMEOUT_S (a node faulty meanwhile)."""
    arrivals: list[tuple[bool, float, float]] = field(default_factory=list)
    """(same datacenter, the link's base latency in ms, seconds from the send to the watch event)."""
    arrival_probes: int = 0
    arrival_abandoned: int = 0
    proxy_bytes: int = 0
    proxy_resets: int = 0
    unknown_clients: int = 0

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.faults.items()))
        lines = [
            f"  network: {sum(self.faults.values())} faults ({kinds or 'none'}); "
            f"{self.proxy_bytes / 1e6:.1f} MB through the proxy, {self.proxy_resets} connections reset"
        ]
        heals = [s for times in self.heal_converge_s.values() for s in times]
        if heals:
            shapes = "; ".join(
                f"{shape} {_p(times, 50):.2f}/{_p(times, 99):.2f} s (n={len(times)})"
                for shape, times in sorted(self.heal_converge_s.items())
            )
            lines.append(
                f"  convergence after a partition heals: p50 {_p(heals, 50):.2f} s, p99 {_p(heals, 99):.2f} s "
                f"(n={len(heals)}, {self.heal_unconverged} not measured); by shape p50/p99: {shapes}"
            )
        for same, label in ((False, "another datacenter"), (True, "the same datacenter")):
            times_ms = [s * 1000.0 for same_dc, _l, s in self.arrivals if same_dc == same]
            if times_ms:
                excess_ms = [s * 1000.0 - latency for same_dc, latency, s in self.arrivals if same_dc == same]
                lines.append(
                    f"  write arrival on {label}: p50 {_p(times_ms, 50):.0f} ms, p99 {_p(times_ms, 99):.0f} ms "
                    f"(n={len(times_ms)}); over the link's latency: p50 {_p(excess_ms, 50):.0f} ms, "
                    f"p99 {_p(excess_ms, 99):.0f} ms"
                )
        if self.arrival_probes:
            lines.append(
                f"  arrival probes: {self.arrival_probes}, {self.arrival_abandoned} not seen everywhere "
                f"within {ARRIVAL_TIMEOUT_S:.0f} s"
            )
        return lines

    def figures(self) -> dict[str, Any]:
        """The measurements as JSON-ready numbers."""
        heals = [s for times in self.heal_converge_s.values() for s in times]
        arrivals: dict[str, Any] = {}
        for same, label in ((False, "cross_dc"), (True, "same_dc")):
            times_ms = [s * 1000.0 for same_dc, _l, s in self.arrivals if same_dc == same]
            if times_ms:
                excess_ms = [s * 1000.0 - link_ms for same_dc, link_ms, s in self.arrivals if same_dc == same]
                arrivals[label] = {
                    "n": len(times_ms),
                    "p50_ms": _p(times_ms, 50),
                    "p99_ms": _p(times_ms, 99),
                    "over_link_latency_p50_ms": _p(excess_ms, 50),
                    "over_link_latency_p99_ms": _p(excess_ms, 99),
                    "by_link_latency_ms": {
                        f"{link_ms:.0f}": {"n": len(group), "p50_ms": _p(group, 50), "p99_ms": _p(group, 99)}
                        for link_ms, group in sorted(_by_link(self.arrivals, same).items())
                    },
                    "link_latency_ms_max": max(
                        link_ms for same_dc, link_ms, _s in self.arrivals if same_dc == same
                    ),
                }
        return {
            "faults": dict(self.faults),
            "heal_converge_s": {
                "all": {"n": len(heals), "p50": _p(heals, 50), "p99": _p(heals, 99)} if heals else None,
                **{
                    shape: {
                        "n": len(t),
                        "p50": _p(t, 50),
                        "p99": _p(t, 99),
                        "times": [round(x, 3) for x in t],
                    }
                    for shape, t in sorted(self.heal_converge_s.items())
                },
            },
            "heal_unconverged": self.heal_unconverged,
            "arrivals": arrivals,
            "proxy_bytes": self.proxy_bytes,
            "proxy_resets": self.proxy_resets,
        }


def _most_cut(fault: NetworkFault) -> list[str]:
    """The nodes a fault touches most: the isolated node or datacenter of a partition (every node
    for halves), the degraded node, both ends of a reset or a slow close."""
    counts = Counter(node for link in fault.links for node in link)
    most = max(counts.values(), default=0)
    return sorted(node for node, count in counts.items() if count == most)


def plan_slow_closes(
    rng: random.Random, plan: NetworkPlan, names: Sequence[str], seconds: float
) -> list[NetworkFault]:
    """The plan's faults with slow closes of a random pair's connections in some of the gaps
    between them (one fault at a time still), in order of start."""
    faults: list[NetworkFault] = []
    free_from_s = 0.0
    for fault in [*plan.faults, None]:
        next_s = fault.at_s if fault is not None else seconds - 1.0
        hold_s = rng.uniform(*SLOW_CLOSE_HOLD_S)
        start_s = free_from_s + SLOW_CLOSE_GAP_S
        if start_s + hold_s + SLOW_CLOSE_GAP_S <= next_s and rng.random() < SLOW_CLOSE_SHARE:
            a, b = rng.sample(list(names), 2)
            slow = LinkFaults(slow_close_ms=rng.uniform(*SLOW_CLOSE_MS))
            faults.append(NetworkFault(start_s, "slow-close", hold_s, frozenset({(a, b), (b, a)}), "", slow))
        if fault is not None:
            faults.append(fault)
            free_from_s = fault.at_s + fault.duration_s
    return faults


def _by_link(arrivals: Sequence[tuple[bool, float, float]], same_dc: bool) -> dict[float, list[float]]:
    """Arrival times in ms grouped by the base latency of the link (one per pair of datacenters)."""
    groups: dict[float, list[float]] = {}
    for same, link_ms, seconds in arrivals:
        if same == same_dc:
            groups.setdefault(link_ms, []).append(seconds * 1000.0)
    return groups


def _p(values: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100.0 * len(ordered)))
    return ordered[rank - 1]


class NetworkFaults:
    """The proxy, the network schedule and the probes of one campaign. `rng` plans the schedule."""

    def __init__(self, campaign: Campaign, rng: random.Random, seed: int, *, partitions: bool = True) -> None:
        """`partitions`: run the planned partitions, resets and degraded links; without, the WAN's
        latency and caps only (the plan is drawn all the same, so a seed means one schedule)."""
        self.campaign = campaign
        self.daemons: list[Daemon] = campaign.daemons
        names = [daemon.name for daemon in self.daemons]
        self.dcs = {daemon.name: daemon.dc for daemon in self.daemons}
        self.plan: NetworkPlan = plan_network(rng, campaign.seconds, self.dcs)
        self.probe_rng = random.Random(rng.getrandbits(64))
        self.faults = plan_slow_closes(random.Random(rng.getrandbits(64)), self.plan, names, campaign.seconds)
        """The plan's faults with the slow closes in its gaps, in order of start."""
        routes = put_behind_proxy(self.daemons)
        self.proxy = FaultProxy(routes, seed=seed)
        self.summary = NetworkSummary()
        self.heals = 0
        self.names = names
        self.partitions = partitions
        self.disturbances = 0
        """Partitions and degraded links begun or ended so far: an arrival measured across a change
        is not a figure of the WAN."""
        self.disturbed = False
        self.connected: dict[str, float] = {}
        """Node -> when its watch stream opened (absent while it is not open)."""
        # Watch streams hold their connections: a client of their own, apart from the writers' limits.
        self.watch_client = httpx.AsyncClient(
            trust_env=False, limits=httpx.Limits(max_connections=len(names) + 2)
        )

    async def start(self) -> None:
        await self.proxy.start()
        for (source, target), faults in self.plan.base.items():
            self.proxy.set_link(source, target, faults)

    def heal(self) -> None:
        """Every partition and degraded link ends; the WAN's standing latency and caps stay."""
        self.proxy.heal()
        for source in self.names:
            for target in self.names:
                if source != target:
                    self.proxy.set_link(source, target, self.plan.base.get((source, target), LinkFaults()))

    async def aclose(self) -> None:
        self.collect()
        await self.watch_client.aclose()
        await self.proxy.aclose()

    def collect(self) -> None:
        links = self.proxy.links
        self.summary.proxy_bytes = sum(stats.bytes for stats in links.values())
        self.summary.proxy_resets = sum(stats.resets for stats in links.values())
        self.summary.unknown_clients = self.proxy.unknown_clients

    def base_latency_ms(self, source: str, target: str) -> float:
        return self.plan.base.get((source, target), LinkFaults()).latency_ms

    # ------------------------------------------------------------------ the schedule

    async def schedule(self, started: float, heal: asyncio.Event) -> None:
        """Run the planned faults one after another until the heal (each ends itself at the heal)."""
        for fault in self.faults if self.partitions else []:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(heal.wait(), max(0.0, started + fault.at_s - time.monotonic()))
            if heal.is_set():
                return
            self.disturbances += 1
            self.disturbed = fault.kind != "reset"
            try:
                await self.run(fault, heal)
            finally:
                self.disturbances += 1
                self.disturbed = False

    async def run(self, fault: NetworkFault, heal: asyncio.Event) -> None:
        campaign = self.campaign
        label = f"{fault.kind} {fault.shape}".strip()
        self.summary.faults[label] += 1
        campaign.say(f"network: {fault.describe()}")
        spans = campaign.timeline.begin(_most_cut(fault), label)
        try:
            await self.run_kind(fault, heal)
        finally:
            campaign.timeline.end(spans)

    async def run_kind(self, fault: NetworkFault, heal: asyncio.Event) -> None:
        campaign = self.campaign
        if fault.kind == "slow-close":
            await self.slow_close(fault, heal)
            return
        if fault.kind == "reset":
            for source, target in fault.links:
                count = self.proxy.reset(source, target)
                campaign.say(f"network: reset {count} connections between {source} and {target}")
            return
        if fault.kind == "degrade":
            assert fault.faults is not None
            for source, target in fault.links:
                self.proxy.set_link(source, target, fault.faults)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(heal.wait(), fault.duration_s)
            for source, target in fault.links:
                self.proxy.set_link(source, target, self.plan.base.get((source, target), LinkFaults()))
            return
        self.proxy.partition(fault.links)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(heal.wait(), fault.duration_s)
        if heal.is_set():
            self.proxy.heal()
            return
        probes = await self.heal_probes()
        self.proxy.heal()
        healed = time.monotonic()
        campaign.say(f"network: heal the {fault.shape} partition; {len(probes)} probe writes to await")
        converged_s = await self.await_probes(probes, healed, heal)
        if heal.is_set():
            campaign.say(
                f"network: the end of the run interrupted the wait for the {fault.shape} heal's probes"
            )
        elif converged_s is None:
            self.summary.heal_unconverged += 1
            campaign.say(f"network: the probes of the {fault.shape} heal were not everywhere in time")
        else:
            self.summary.heal_converge_s.setdefault(fault.shape, []).append(converged_s)
            campaign.say(
                f"network: every probe of the {fault.shape} heal everywhere {converged_s:.2f} s after it"
            )

    async def slow_close(self, fault: NetworkFault, heal: asyncio.Event) -> None:
        """Close every connection of the links while a close takes `slow_close_ms` to arrive, hold
        that for the fault's duration, then give the links their base faults back."""
        assert fault.faults is not None
        slow_close_ms = fault.faults.slow_close_ms
        for source, target in fault.links:
            base = self.plan.base.get((source, target), LinkFaults())
            self.proxy.set_link(source, target, dataclasses.replace(base, slow_close_ms=slow_close_ms))
        closed = sum(self.proxy.close(source, target) for source, target in fault.links if source < target)
        self.campaign.say(f"network: {closed} connections closed, each close {slow_close_ms:.0f} ms late")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(heal.wait(), fault.duration_s)
        for source, target in fault.links:
            self.proxy.set_link(source, target, self.plan.base.get((source, target), LinkFaults()))

    async def heal_probes(self) -> list[tuple[str, str, dict[str, Any]]]:
        """One acknowledged write on every available node just before the heal: (doc, key, value)."""
        from fuzz.chaos import Write

        campaign = self.campaign
        index = self.heals
        self.heals += 1
        doc = f"{PROBE_DOC_PREFIX}{index // PROBES_PER_DOC}"
        campaign.log_docs.add(doc)
        writes = [
            (daemon, Write(index, doc, f"{daemon.name}-h{index}", {"heal": index}, unique=True))
            for daemon in self.daemons
            if daemon.available
        ]
        before = len(campaign.acked)
        await asyncio.gather(*(campaign.send(daemon, write) for daemon, write in writes))
        return [(w.doc, w.key, w.value) for w in campaign.acked[before:] if w.doc == doc]

    async def await_probes(
        self, probes: list[tuple[str, str, dict[str, Any]]], healed: float, heal: asyncio.Event
    ) -> float | None:
        if not probes:
            return None
        doc = probes[0][0]
        for _ in range(int(HEAL_CONVERGE_TIMEOUT_S / HEAL_POLL_S) + 1):
            if heal.is_set():
                return None
            readers = [daemon for daemon in self.daemons if daemon.available]
            answers = await asyncio.gather(*(self.campaign.get_json(d, f"/v1/docs/{doc}") for d in readers))
            contents = [a.get("data", {}) if isinstance(a, dict) else None for a in answers]
            if all(
                isinstance(data, dict) and all(data.get(key) == value for _d, key, value in probes)
                for data in contents
            ):
                return time.monotonic() - healed
            if time.monotonic() - healed > HEAL_CONVERGE_TIMEOUT_S:
                return None
            await asyncio.sleep(HEAL_POLL_S)
        return None

    # ------------------------------------------------------------------ arrivals

    async def arrivals(self, stop_at: float, heal: asyncio.Event) -> None:
        """Arrival probes, one at a time, until `stop_at` or the heal; watch streams on every node."""
        seen: dict[str, tuple[int, float]] = {}
        """Node -> (the highest probe seq its watch showed, when)."""
        changed = asyncio.Event()
        watchers = [asyncio.create_task(self.watch(daemon, seen, changed, heal)) for daemon in self.daemons]
        try:
            # The doc must exist on every node before a watch can open (404 otherwise).
            writer = next((d for d in self.daemons if d.available), None)
            if writer is None or not await self.put_arrival(writer, 0):
                return
            for seq in range(1, ARRIVALS_MAX):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(heal.wait(), self.probe_rng.uniform(*ARRIVAL_GAP_S))
                if heal.is_set() or time.monotonic() >= stop_at:
                    return
                candidates = [d for d in self.daemons if d.available]
                if not candidates:
                    continue
                writer = self.probe_rng.choice(candidates)
                sent = time.monotonic()
                disturbances = self.disturbances
                self.summary.arrival_probes += 1
                if self.disturbed or not await self.put_arrival(writer, seq):
                    continue
                # Only readers whose stream was open before the send: a stream opened later shows
                # the probe at once, whenever it arrived.
                waiting = {
                    d.name
                    for d in self.daemons
                    if d is not writer and self.connected.get(d.name, sent) < sent
                }
                deadline = sent + ARRIVAL_TIMEOUT_S
                while waiting and time.monotonic() < deadline and not heal.is_set():
                    changed.clear()
                    for name in list(waiting):
                        got = seen.get(name)
                        if got is not None and got[0] >= seq:
                            waiting.discard(name)
                            if (
                                self.disturbances == disturbances
                                and self.connected.get(name, math.inf) < sent
                            ):
                                self.record_arrival(writer, name, got[1] - sent)
                    if waiting:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(changed.wait(), max(0.0, deadline - time.monotonic()))
                if waiting and not heal.is_set():
                    self.summary.arrival_abandoned += 1
                    self.campaign.say(
                        f"network: arrival probe {seq} written on {writer.name} not seen on {' '.join(sorted(waiting))} "
                        f"within {ARRIVAL_TIMEOUT_S:.0f} s"
                    )
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    def record_arrival(self, writer: Daemon, reader: str, seconds: float) -> None:
        same_dc = self.dcs[writer.name] == self.dcs[reader]
        self.summary.arrivals.append((same_dc, self.base_latency_ms(writer.name, reader), max(0.0, seconds)))

    async def put_arrival(self, daemon: Daemon, seq: int) -> bool:
        try:
            response = await self.campaign.client.put(
                f"{daemon.url}/v1/docs/{ARRIVAL_DOC}/keys/probe", json={"seq": seq}, timeout=REQUEST_TIMEOUT_S
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def watch(
        self, daemon: Daemon, seen: dict[str, tuple[int, float]], changed: asyncio.Event, heal: asyncio.Event
    ) -> None:
        """Follow the node's watch stream of ARRIVAL_DOC, reconnecting after a restart, until cancelled."""
        for _ in range(ARRIVALS_MAX):
            if heal.is_set():
                return
            with contextlib.suppress(httpx.HTTPError, ValueError):
                async with self.watch_client.stream(
                    "GET", f"{daemon.url}/v1/docs/{ARRIVAL_DOC}/watch", timeout=httpx.Timeout(5.0, read=None)
                ) as response:
                    if response.status_code == 200:
                        self.connected[daemon.name] = time.monotonic()
                        async for line in response.aiter_lines():
                            if len(line) > WATCH_LINE_BYTES_MAX or not line.startswith("data:"):
                                continue
                            event = json.loads(line[5:])
                            probe = event.get("data", {}).get("probe") if isinstance(event, dict) else None
                            seq = probe.get("seq") if isinstance(probe, dict) else None
                            if isinstance(seq, int) and seq > seen.get(daemon.name, (-1, 0.0))[0]:
                                seen[daemon.name] = (seq, time.monotonic())
                                changed.set()
            self.connected.pop(daemon.name, None)
            await asyncio.sleep(WATCH_RETRY_S)
