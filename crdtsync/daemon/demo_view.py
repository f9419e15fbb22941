"""The views of `crdtsync demo`: what the scenario shows (`DemoView`: the daemons' rows, the phase, the
verdict, the events) and the two screens that draw it: `PlainScreen`, timestamped lines (one per event,
one per refresh: for logs, pipes and CI), and `crdtsync.daemon.demo_rich.RichScreen`, a live table with
a short event log on a terminal."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from crdtsync.testing.cluster import LocalDaemon

SILENCE_SHOWN_MS = 2000.0
VIEWS = ("auto", "rich", "plain")
"""`--view`: auto is rich on a terminal, plain otherwise."""


def choose_view(requested: str, stream: TextIO) -> str:
    """ "rich" or "plain": `requested`, or for "auto" rich when `stream` is a terminal (and $TERM is not
    dumb), plain for a file or a pipe."""
    if requested != "auto":
        return requested
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        terminal = False
    return "rich" if terminal and os.environ.get("TERM") != "dumb" else "plain"


@dataclass(kw_only=True)
class Daemon(LocalDaemon):
    """A demo daemon as the view shows it."""

    state: str = "new"
    """new, starting, running, killed, exited (unexpectedly), stopped."""
    status: dict[str, Any] | None = None
    acked: int = 0
    failed: int = 0
    last_error: str = ""

    @property
    def dashboard(self) -> str:
        """The URL of its dashboard page."""
        return f"{self.url}/ui"


class Screen(Protocol):
    """Where the view is drawn."""

    def event(self, at: float, text: str) -> None: ...
    def say(self, text: str) -> None: ...
    def render(self) -> None: ...
    def close(self) -> None: ...


class DemoView:
    """What the demo shows; the scenario (`crdtsync.daemon.demo.Demo`) updates `phase`, `verdict`, `idle`
    and the daemons' rows, and calls `event`, `say`, `render`, `print_help` and, at the end, `close_view`.
    `view` is "plain" or "rich" (see `choose_view`)."""

    def __init__(self, daemons: dict[str, Daemon], seconds: float | None, view: str = "plain") -> None:
        self.daemons = daemons
        self.seconds = seconds
        self.started = time.monotonic()
        self.phase = "starting"
        self.idle = False
        self.verdict: tuple[bool, str] = (False, "no status yet")
        self.last_render = 0.0
        self.events: list[tuple[float, str]] = []
        """(seconds since the start, text) of every event."""
        self.screen: Screen
        if view == "rich":
            from crdtsync.daemon.demo_rich import RichScreen

            self.screen = RichScreen(self)
        else:
            self.screen = PlainScreen(self)

    # ------------------------------------------------------------------ output

    def now(self) -> float:
        return time.monotonic() - self.started

    def event(self, text: str) -> None:
        at = self.now()
        self.events.append((at, text))
        self.screen.event(at, text)

    def say(self, text: str = "") -> None:
        self.screen.say(text)

    def render(self) -> None:
        self.last_render = time.monotonic()
        self.screen.render()

    def close_view(self) -> None:
        """Leave the last picture on the screen (the rich view stops redrawing)."""
        self.screen.close()

    # ------------------------------------------------------------------ what the screens show

    def until(self) -> str:
        return "Ctrl-C" if self.seconds is None else f"{self.seconds:.0f} s"

    def peers_text(self, daemon: Daemon, separator: str) -> str:
        if daemon.status is None:
            return ""
        names = {d.listen: d.name for d in self.daemons.values()}
        parts = []
        for peer in sorted(daemon.status["peers"], key=lambda p: str(p["node_id"] or p["address"])):
            name = peer["node_id"] or names.get(peer["address"], peer["address"])
            text = f"{name}:{peer['state']}"
            heard = peer["last_heard_ago_ms"]
            if heard is not None and heard >= SILENCE_SHOWN_MS:
                text += f"({heard / 1000:.0f}s)"
            parts.append(text)
        return separator.join(parts)

    @staticmethod
    def dc_text(daemon: Daemon) -> str:
        """The node's datacenter, starred while it is that datacenter's relay."""
        relay = daemon.status is not None and daemon.state == "running" and daemon.status.get("relay")
        return daemon.dc + ("*" if relay else "")

    @staticmethod
    def numbers(daemon: Daemon) -> dict[str, Any]:
        """What a running daemon's status says: docs, updates published and applied, the largest lag
        behind a peer (updates, and seconds), its Merkle root (8 hex digits), its peers (alive, all)."""
        status = daemon.status
        assert status is not None
        counters = status["counters"]
        peers = status["peers"]
        return {
            "docs": status["docs"],
            "published": status["published_updates"],
            "applied": counters.get("deltas_applied", 0) + counters.get("sync_updates_applied", 0),
            "behind": max((peer["behind_updates"] for peer in peers), default=0),
            "lag_s": max((peer["lag_ms"] for peer in peers), default=0.0) / 1000,
            "root": status["merkle_root"][:8],
            "peers_alive": sum(1 for peer in peers if peer["state"] == "alive"),
            "peers": len(peers),
        }

    def print_help(self) -> None:
        cli = _cli_command()
        a, b, c = (self.daemons[name] for name in ("a", "b", "c"))
        lines = ["", "The daemons keep running:"]
        for daemon in self.daemons.values():
            lines.append(
                f"  {daemon.name}: dashboard {daemon.dashboard}   HTTP API {daemon.url}   "
                f"metrics {daemon.url}/metrics   log {daemon.log_path}"
            )
        lines += [
            "",
            "Try, in another terminal:",
            f"  {cli} status --url {a.url}",
            f"  {cli} docs --url {b.url}",
            f"  {cli} get --url {b.url} models/registry",
            f"  {cli} watch --url {c.url} flags/features",
            f"  {cli} put --url {a.url} flags/features new-router '{{\"enabled\": true}}'",
            f"  curl -s {a.url}/metrics | grep ^crdtsync_peer",
            "",
            "Ctrl-C stops the daemons"
            + (f" (or they stop {self.seconds:.0f} s after the start)." if self.seconds is not None else "."),
        ]
        self.say("\n".join(lines))


class PlainScreen:
    """Lines for logs, pipes and CI (`--plain`): each event, and once a second each node's state on one
    line (while idle, only when the cluster's state changes)."""

    def __init__(self, view: DemoView) -> None:
        self.view = view
        self.last_idle_line = ""

    def event(self, at: float, text: str) -> None:
        print(f"[{at:5.1f} s] {text}", flush=True)

    def say(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        pass

    def render(self) -> None:
        view = self.view
        if view.idle:
            self._render_idle()
            return
        parts = []
        for daemon in view.daemons.values():
            if daemon.status is None or daemon.state != "running":
                parts.append(f"{daemon.name}: {daemon.state}")
                continue
            n = view.numbers(daemon)
            parts.append(
                f"{daemon.name}: dc={view.dc_text(daemon)} docs={n['docs']} acked={daemon.acked} "
                f"pub={n['published']} applied={n['applied']} behind={n['behind']} root={n['root']} "
                f"peers={view.peers_text(daemon, ',')}"
            )
        label = "converged" if view.verdict[0] else "catching up"
        print(f"[{view.now():5.1f} s] {view.phase}: {label} | " + " | ".join(parts), flush=True)

    def _render_idle(self) -> None:
        view = self.view
        converged, why = view.verdict
        states = " ".join(f"{d.name}:{d.state}" for d in view.daemons.values())
        line = f"cluster {'CONVERGED' if converged else 'CATCHING UP'} ({why}); {states}"
        if line != self.last_idle_line:
            print(f"[{view.now():5.1f} s] {line}", flush=True)
        self.last_idle_line = line


def _cli_command() -> str:
    """How to call the `crdtsync` command of this installation from the current directory."""
    script = os.path.join(os.path.dirname(sys.executable), "crdtsync")
    on_path = shutil.which("crdtsync")
    if on_path is not None and os.path.realpath(on_path) == os.path.realpath(script):
        return "crdtsync"
    if os.path.exists(script):
        relative = os.path.relpath(script)
        return relative if not relative.startswith("..") else script
    return f"{sys.executable} -m crdtsync"
