"""bench.topology, part (3): a paused `crdtsync serve` process among three, launched through the
local-cluster harness (`crdtsync.testing.cluster`)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    BenchError,
)
from bench._topology_sim import Settings
from crdtsync.testing.cluster import LocalCluster, LocalDaemon, log_tail, plan_daemons

# Real processes
PROC_NAMES = ("p0", "p1", "p2")
PROC_DC = "dc0"
PROC_START_TIMEOUT_S = 30.0
POLL_S = 0.05
DETECT_TIMEOUT_S = 30.0
ALIVE_TIMEOUT_S = 20.0
SHORT_PAUSE_S = 1.5
SHORT_PAUSE_WATCH_S = 3.0
HTTP_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 5.0


# ---------------------------------------------------------------------------------------------------------
# (3) A paused process


@dataclass(kw_only=True)
class Proc(LocalDaemon):
    """One `crdtsync serve` of the paused-process runs (memory store, plaintext links, kv logs at
    info), with a synchronous client for its status."""

    client: httpx.Client | None = None

    def status(self) -> dict[str, Any] | None:
        """/v1/status, or None when it does not answer in time (a paused process)."""
        assert self.client is not None
        if not self.running:
            rc = None if self.process is None else self.process.returncode
            raise BenchError(f"{self.name} exited (rc {rc})")
        try:
            response = self.client.get("/v1/status")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body

    def states(self) -> dict[str, str] | None:
        """node id -> alive / suspect / down (from `members` when the API has them, else `peers`)."""
        status = self.status()
        if status is None:
            return None
        return states_of(status)


_PEER_STATES = {"alive": "alive", "suspect": "suspect", "down": "down", "connecting": "connecting"}


def states_of(status: dict[str, Any]) -> dict[str, str]:
    members = status.get("members")
    if isinstance(members, list):
        return {str(m["node_id"]): str(m["state"]) for m in members}
    return {
        str(p["node_id"]): _PEER_STATES.get(str(p["state"]), str(p["state"]))
        for p in status.get("peers", [])
        if p.get("node_id")
    }


def _counter(status: dict[str, Any] | None, name: str) -> int:
    if status is None:
        return 0
    return int(status.get("counters", {}).get(name, 0))


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    for _ in range(int(timeout_s / POLL_S) + 1):
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            break
        time.sleep(POLL_S)
    raise BenchError(f"timed out after {timeout_s:.0f} s waiting until {what}")


def _everyone_alive(procs: list[Proc]) -> bool:
    for proc in procs:
        states = proc.states()
        others = {p.name for p in procs} - {proc.name}
        if states is None or any(states.get(name) != "alive" for name in others):
            return False
    return True


def pause_runs(settings: Settings, log_dir: Path) -> dict[str, Any]:
    procs = plan_daemons(
        Proc, str(log_dir), PROC_NAMES, dcs=dict.fromkeys(PROC_NAMES, PROC_DC), data_dirs=False
    )
    cluster = LocalCluster(str(log_dir), procs, extra_args=["--log-level", "info"], note="bench.topology")
    try:
        for proc in procs:
            cluster.start(proc.name)
            proc.client = httpx.Client(base_url=proc.url, timeout=HTTP_TIMEOUT_S, trust_env=False)
        _wait(lambda: _everyone_alive(procs), PROC_START_TIMEOUT_S, "every process sees every other alive")
        time.sleep(settings.pause_settle_s)
        victim, observers = procs[-1], procs[:-1]
        reps: list[dict[str, Any]] = []
        short: dict[str, Any] | None = None
        for rep in range(settings.pause_reps):
            reps.append(_pause_once(victim, observers, rep))
            if rep + 1 < settings.pause_reps or settings.short_pause:
                time.sleep(settings.pause_settle_s)
        if settings.short_pause:
            short = _short_pause(victim, observers)
        return {"victim": victim.name, "observers": [o.name for o in observers], "reps": reps, "short": short}
    except BenchError as exc:
        tails = [f"{proc.name}:\n{log_tail(proc.log_path, 8)}" for proc in procs]
        raise BenchError(f"{exc}\n" + "\n".join(tails)) from exc
    finally:
        for proc in procs:
            if proc.client is not None:
                proc.client.close()
                proc.client = None
        cluster.stop_all(STOP_TIMEOUT_S)  # SIGCONT and SIGTERM, SIGKILL after the timeout


def _pause_once(victim: Proc, observers: list[Proc], rep: int) -> dict[str, Any]:
    before = {o.name: o.status() for o in observers}
    victim_before = victim.status()
    first: dict[tuple[str, str], float] = {}
    stopped = time.monotonic()
    victim.send(signal.SIGSTOP)
    try:
        for _ in range(int(DETECT_TIMEOUT_S / POLL_S) + 1):
            for observer in observers:
                state = (observer.states() or {}).get(victim.name)
                now = time.monotonic() - stopped  # when the answer came: an upper bound
                if state in ("suspect", "down"):
                    first.setdefault((observer.name, "suspect"), now)
                if state == "down":
                    first.setdefault((observer.name, "down"), now)
            if (
                all((o.name, "down") in first for o in observers)
                or time.monotonic() - stopped > DETECT_TIMEOUT_S
            ):
                break
            time.sleep(POLL_S)
    finally:
        paused_s = time.monotonic() - stopped
        victim.send(signal.SIGCONT)
    resumed = time.monotonic()
    alive_after: dict[str, float] = {}
    for _ in range(int(ALIVE_TIMEOUT_S / POLL_S) + 1):
        for observer in observers:
            if (observer.states() or {}).get(victim.name) == "alive":
                alive_after.setdefault(observer.name, time.monotonic() - resumed)
        if len(alive_after) == len(observers) or time.monotonic() - resumed > ALIVE_TIMEOUT_S:
            break
        time.sleep(POLL_S)
    # Let the paused node's own detector run a few liveness checks, then read what it concluded.
    time.sleep(1.0)
    after = {o.name: o.status() for o in observers}
    victim_after = victim.status()
    victim_states = victim.states() or {}
    return {
        "rep": rep + 1,
        "paused_s": paused_s,
        "suspect_s": {o.name: first.get((o.name, "suspect")) for o in observers},
        "down_s": {o.name: first.get((o.name, "down")) for o in observers},
        "alive_after_cont_s": {o.name: alive_after.get(o.name) for o in observers},
        "observer_suspicions": {
            o.name: _counter(after[o.name], "member_suspect") - _counter(before[o.name], "member_suspect")
            for o in observers
        },
        "victim_suspicions_of_others": _counter(victim_after, "member_suspect")
        - _counter(victim_before, "member_suspect"),
        "victim_downs_of_others": _counter(victim_after, "member_down")
        - _counter(victim_before, "member_down"),
        "victim_view_after": victim_states,
    }


def _short_pause(victim: Proc, observers: list[Proc]) -> dict[str, Any]:
    before = {o.name: o.status() for o in observers}
    victim_before = victim.status()
    victim.send(signal.SIGSTOP)
    try:
        time.sleep(SHORT_PAUSE_S)
    finally:
        victim.send(signal.SIGCONT)
    seen: set[str] = set()
    started = time.monotonic()
    for _ in range(int(SHORT_PAUSE_WATCH_S / POLL_S) + 1):
        for observer in observers:
            state = (observer.states() or {}).get(victim.name)
            if state is not None and state != "alive":
                seen.add(f"{observer.name}:{state}")
        if time.monotonic() - started > SHORT_PAUSE_WATCH_S:
            break
        time.sleep(POLL_S)
    after = {o.name: o.status() for o in observers}
    victim_after = victim.status()
    return {
        "pause_s": SHORT_PAUSE_S,
        "states_seen": sorted(seen),
        "observer_suspicions": sum(
            _counter(after[o.name], "member_suspect") - _counter(before[o.name], "member_suspect")
            for o in observers
        ),
        "victim_suspicions_of_others": _counter(victim_after, "member_suspect")
        - _counter(victim_before, "member_suspect"),
    }
