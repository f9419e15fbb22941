"""The terminal view of `crdtsync demo`: the live table (redrawn in place on a terminal, one line per
refresh for a file or a pipe), the timestamped events and the closing help."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

from crdtsync.testing.cluster import LocalDaemon

SILENCE_SHOWN_MS = 2000.0


@dataclass(kw_only=True)
class Daemon(LocalDaemon):
    """A demo daemon as the view shows it."""

    state: str = "new"
    """new, starting, running, killed, exited (unexpectedly), stopped."""
    status: dict[str, Any] | None = None
    acked: int = 0
    failed: int = 0
    last_error: str = ""


class DemoView:
    """What the demo shows; the scenario (`crdtsync.daemon.demo.Demo`) updates `phase`, `verdict`
    and the daemons' rows, and calls `event`, `render` and `print_help`."""

    def __init__(self, daemons: dict[str, Daemon], seconds: float | None) -> None:
        self.daemons = daemons
        self.seconds = seconds
        self.started = time.monotonic()
        self.tty = sys.stdout.isatty()
        self.drawn_lines = 0
        self.phase = "starting"
        self.idle = False
        self.verdict: tuple[bool, str] = (False, "no status yet")
        self.last_render = 0.0
        self.last_idle_line = ""

    # ------------------------------------------------------------------ output

    def now(self) -> float:
        return time.monotonic() - self.started

    def _clear(self) -> None:
        if self.tty and self.drawn_lines:
            sys.stdout.write(f"\033[{self.drawn_lines}F\033[J")
        self.drawn_lines = 0

    def event(self, text: str) -> None:
        self._clear()
        print(f"[{self.now():5.1f} s] {text}", flush=True)

    def say(self, text: str = "") -> None:
        self._clear()
        print(text, flush=True)

    def _peers_text(self, daemon: Daemon, separator: str) -> str:
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
    def _dc_text(daemon: Daemon) -> str:
        """The node's datacenter, starred while it is that datacenter's relay."""
        relay = daemon.status is not None and daemon.state == "running" and daemon.status.get("relay")
        return daemon.dc + ("*" if relay else "")

    @staticmethod
    def _numbers(daemon: Daemon) -> dict[str, Any]:
        status = daemon.status
        assert status is not None
        counters = status["counters"]
        return {
            "docs": status["docs"],
            "published": status["published_updates"],
            "applied": counters.get("deltas_applied", 0) + counters.get("sync_updates_applied", 0),
            "behind": max((peer["behind_updates"] for peer in status["peers"]), default=0),
            "root": status["merkle_root"][:8],
        }

    def table(self) -> list[str]:
        """The live view; fits in 80 columns while every peer is heard."""
        converged, why = self.verdict
        label = "CONVERGED" if converged else "CATCHING UP"
        until = "Ctrl-C" if self.seconds is None else f"{self.seconds:.0f} s"
        lines = [
            f"crdtsync demo {self.now():5.1f} s (until {until}): {self.phase}",
            f"cluster: {label} ({why})",
            f"{'node':<4}{'dc':<5}{'pid':>7} {'state':<8}{'docs':>5}{'acked':>6}{'err':>4}{'pub':>6}{'applied':>8}"
            f"{'behind':>7}  {'root':<8}  peers",
        ]
        for daemon in self.daemons.values():
            running = daemon.state in ("starting", "running")
            pid = str(daemon.pid) if daemon.pid is not None and running else "-"
            head = f"{daemon.name:<4}{self._dc_text(daemon):<5}{pid:>7} {daemon.state:<8}"
            if daemon.status is None or daemon.state != "running":
                lines.append(f"{head}{'':>5}{daemon.acked:>6}{daemon.failed:>4}")
                continue
            n = self._numbers(daemon)
            lines.append(
                f"{head}{n['docs']:>5}{daemon.acked:>6}{daemon.failed:>4}{n['published']:>6}{n['applied']:>8}"
                f"{n['behind']:>7}  {n['root']:<8}  {self._peers_text(daemon, ' ')}"
            )
        lines += [
            "acked/err: the demo's writes to the node; pub: updates it published this epoch",
            "applied: updates from peers; behind: lag; peers: state (silent for N s); dc: * relay",
        ]
        return lines

    def render(self) -> None:
        self.last_render = time.monotonic()
        if self.idle:
            self._render_idle()
            return
        if self.tty:
            self._clear()
            lines = self.table()
            sys.stdout.write("\n".join(_fit(line) for line in lines) + "\n")
            sys.stdout.flush()
            self.drawn_lines = len(lines)
            return
        converged = self.verdict[0]
        parts = []
        for daemon in self.daemons.values():
            if daemon.status is None or daemon.state != "running":
                parts.append(f"{daemon.name}: {daemon.state}")
                continue
            n = self._numbers(daemon)
            parts.append(
                f"{daemon.name}: dc={self._dc_text(daemon)} docs={n['docs']} acked={daemon.acked} pub={n['published']} "
                f"applied={n['applied']} behind={n['behind']} root={n['root']} "
                f"peers={self._peers_text(daemon, ',')}"
            )
        label = "converged" if converged else "catching up"
        print(f"[{self.now():5.1f} s] {self.phase}: {label} | " + " | ".join(parts), flush=True)

    def _render_idle(self) -> None:
        converged, why = self.verdict
        states = " ".join(f"{d.name}:{d.state}" for d in self.daemons.values())
        line = f"cluster {'CONVERGED' if converged else 'CATCHING UP'} ({why}); {states}"
        if self.tty:
            self._clear()
            sys.stdout.write(_fit(f"[{self.now():5.1f} s] {line}   (Ctrl-C stops the daemons)") + "\n")
            sys.stdout.flush()
            self.drawn_lines = 1
        elif line != self.last_idle_line:  # a file or a pipe: only changes
            print(f"[{self.now():5.1f} s] {line}", flush=True)
        self.last_idle_line = line

    def print_help(self) -> None:
        cli = _cli_command()
        a, b, c = (self.daemons[name] for name in ("a", "b", "c"))
        lines = ["", "The daemons keep running:"]
        for daemon in self.daemons.values():
            lines.append(
                f"  {daemon.name}: HTTP API {daemon.url}   metrics {daemon.url}/metrics   log {daemon.log_path}"
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


def _fit(line: str) -> str:
    """Cut a line that is redrawn in place to the terminal's width: a wrapped line would take two rows
    and break the redraw."""
    width = shutil.get_terminal_size().columns
    return line if len(line) < width else line[: max(1, width - 2)] + "~"


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
