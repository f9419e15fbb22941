"""The live view of `crdtsync demo` on a terminal (`--view rich`): a table with one row per node (state,
datacenter, docs, acknowledged writes, lag, Merkle root, peers, dashboard URL) that fits 100 columns,
over a short log of the latest events (kill, restart, caught up), redrawn in place with `rich`.

Text that is not an event (the daemons' addresses, the closing help) and the details of a multi-line
event (lost writes, the end of a log) are printed above the live part, where they scroll."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from rich import box
from rich.columns import Columns
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from crdtsync.daemon.demo_view import Daemon, DemoView

EVENTS_SHOWN = 12
"""The latest events the log shows (fewer on a short terminal)."""
WIDE = 100
"""From this width on, the table has a column of dashboard URLs (else they are listed under it)."""
OTHER_LINES = 14
"""The lines of the live part besides its events: headline, table with caption, blank lines, title."""
STATE_STYLES = {
    "running": "green",
    "starting": "yellow",
    "killed": "bold red",
    "exited": "bold red",
    "stopped": "dim",
}
COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("node", "left"),
    ("state", "left"),
    ("dc", "left"),
    ("docs", "right"),
    ("acked", "right"),
    ("err", "right"),
    ("behind", "right"),
    ("lag", "right"),
    ("root", "left"),
    ("peers", "right"),
    ("dashboard", "left"),
)
CAPTION = (
    "acked/err: the demo's writes to the node · behind: updates from a peer not received yet, "
    "lag: for how long · peers: alive/known · dc: * relay"
)
PROBLEM_WORDS = ("LOST", "NOT", "unexpectedly", "cannot")


class RichScreen:
    """Draws a `DemoView` with `rich.live.Live` on `console` (default: stdout, as a terminal)."""

    def __init__(self, view: DemoView, console: Console | None = None) -> None:
        self.view = view
        self.console = console if console is not None else Console(force_terminal=True)
        self.live: Live | None = None

    # ------------------------------------------------------------------ Screen

    def event(self, at: float, text: str) -> None:
        if "\n" in text:  # lost writes, the end of a log: in full above the live part
            self.console.print(f"[{at:5.1f} s] {text}", markup=False, highlight=False, overflow="fold")
        self.render()

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, overflow="fold")

    def render(self) -> None:
        if self.live is None:
            self.live = Live(self.renderable(), console=self.console, auto_refresh=False, transient=False)
            self.live.start(refresh=True)
        else:
            self.live.update(self.renderable(), refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.update(self.renderable(), refresh=True)
            self.live.stop()
            self.live = None

    # ------------------------------------------------------------------ the picture

    def renderable(self) -> RenderableType:
        wide = self.console.width >= WIDE
        parts: list[RenderableType] = [self.headline(), Text(), self.table(dashboards=wide)]
        if not wide:  # the URLs under the table
            urls = [f"{d.name}: {d.dashboard}" for d in self.view.daemons.values()]
            parts.append(Columns(urls, padding=(0, 3), title="dashboards"))
        return Group(*parts, Text(), self.event_log())

    def headline(self) -> Text:
        view = self.view
        converged, why = view.verdict
        text = Text()
        text.append("crdtsync demo", style="bold")
        text.append(f"  {view.now():5.1f} s (until {view.until()})  ")
        text.append(view.phase, style="bold")
        text.append("\ncluster: ")
        text.append(
            "CONVERGED" if converged else "CATCHING UP", style="bold green" if converged else "bold yellow"
        )
        text.append(f" ({why})")
        if view.idle:
            text.append("   Ctrl-C stops the daemons", style="dim")
        return text

    def table(self, dashboards: bool = True) -> Table:
        """One row per node; `dashboards`: with the column of their dashboard URLs."""
        table = Table(
            box=box.SIMPLE_HEAD,
            collapse_padding=True,
            pad_edge=False,
            show_edge=False,
            caption=CAPTION,
            caption_justify="left",
            caption_style="dim",
        )
        for header, justify in COLUMNS if dashboards else COLUMNS[:-1]:
            table.add_column(header, justify=justify, no_wrap=True)
        roots = Counter(
            d.status["merkle_root"] for d in self.view.daemons.values() if d.status and d.state == "running"
        )
        common = roots.most_common(1)[0][0][:8] if roots else ""
        for daemon in self.view.daemons.values():
            row = self.row(daemon, common)
            table.add_row(*(row if dashboards else row[:-1]))
        return table

    def row(self, daemon: Daemon, common_root: str) -> list[str | Text]:
        state = Text(daemon.state, style=STATE_STYLES.get(daemon.state, ""))
        err = Text(str(daemon.failed), style="red" if daemon.failed else "")
        head: list[str | Text] = [daemon.name, state, self.view.dc_text(daemon)]
        if daemon.status is None or daemon.state != "running":
            return [*head, "", str(daemon.acked), err, "", "", "", "", daemon.dashboard]
        n = self.view.numbers(daemon)
        behind = Text(str(n["behind"]), style="yellow" if n["behind"] else "")
        root = Text(n["root"], style="green" if n["root"] == common_root else "yellow")
        peers = Text(
            f"{n['peers_alive']}/{n['peers']}", style="" if n["peers_alive"] == n["peers"] else "yellow"
        )
        lag = f"{n['lag_s']:.1f}s"
        return [*head, str(n["docs"]), str(daemon.acked), err, behind, lag, root, peers, daemon.dashboard]

    def event_log(self) -> Table:
        shown = max(3, min(EVENTS_SHOWN, self.console.height - OTHER_LINES))
        log = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1), title_justify="left")
        log.title = Text("events", style="bold")
        log.add_column(justify="right", style="dim", no_wrap=True, min_width=7)
        log.add_column(overflow="ellipsis")  # (a no_wrap column would not shrink: each Text is no_wrap)
        events = self.view.events
        if len(events) > shown:
            log.add_row("", Text(f"({len(events) - shown} earlier)", style="dim"))
            events = events[len(events) - shown + 1 :]
        for at, text in events:
            first = text.split("\n", 1)[0]
            style = "bold red" if any(word in first for word in PROBLEM_WORDS) else ""
            log.add_row(f"{at:5.1f} s", Text(first, style=style, overflow="ellipsis", no_wrap=True))
        return log
