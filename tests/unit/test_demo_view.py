"""The views of `crdtsync demo` without daemons: the live table (rich) drawn on a 100-column console,
the lines (plain), and which one `--view auto` picks."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console

from crdtsync.daemon.demo_rich import RichScreen
from crdtsync.daemon.demo_view import Daemon, DemoView, choose_view

HEADERS = ("node", "state", "dc", "docs", "acked", "err", "behind", "lag", "root", "peers", "dashboard")
ROOT = "a280cc50" + "0" * 56


def status(name: str, *, relay: bool = False, root: str = ROOT, behind: int = 0) -> dict[str, Any]:
    peers = [
        {
            "node_id": other,
            "address": f"tcp://127.0.0.1:{7400 + i}",
            "state": "alive",
            "last_heard_ago_ms": 120.0,
            "behind_updates": behind,
            "lag_ms": 1500.0 if behind else 0.0,
        }
        for i, other in enumerate("abc")
        if other != name
    ]
    return {
        "docs": 4,
        "published_updates": 31,
        "counters": {"deltas_applied": 40, "sync_updates_applied": 2},
        "peers": peers,
        "merkle_root": root,
        "relay": relay,
    }


def cluster() -> dict[str, Daemon]:
    daemons = {
        name: Daemon(
            name=name,
            listen_port=7400 + i,
            http_port=65530 + i,
            data_dir=f"/tmp/demo/{name}",
            log_path=f"/tmp/demo/{name}.log",
            dc="dc2" if name == "c" else "dc1",
        )
        for i, name in enumerate("abc")
    }
    for daemon in daemons.values():
        daemon.state, daemon.acked = "running", 25
    daemons["a"].status = status("a", relay=True)
    daemons["b"].status = status("b", behind=3)
    daemons["c"].state, daemons["c"].status, daemons["c"].failed = "killed", None, 1
    return daemons


def rich_view(width: int, height: int = 40) -> tuple[DemoView, io.StringIO]:
    out = io.StringIO()
    view = DemoView(cluster(), seconds=None, view="plain")
    view.screen = RichScreen(view, Console(file=out, width=width, height=height, force_terminal=False))
    return view, out


def test_the_rich_view_draws_one_row_per_node_in_100_columns_and_a_log_of_the_events() -> None:
    view, out = rich_view(100)
    view.phase = "c killed, writing to a and b"
    view.event("starting daemons a, b, c: data and logs in /tmp/demo")
    view.event("kill -9 c (pid 4242) after 25 acknowledged writes; writes go on to a and b")
    view.event("restart c (pid 4300) on the same data dir /tmp/demo/c")
    view.event("c caught up: equal merkle roots on a, b and c 1.1 s after its restart " + "x" * 80)
    view.render()
    view.close_view()  # a file: rich draws the live part once, when it stops
    lines = out.getvalue().splitlines()
    assert lines, "nothing drawn"
    assert max(len(line) for line in lines) <= 100, "\n".join(lines)

    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["node", "state"])
    assert lines[header].split() == list(HEADERS)
    rows = {line.split()[0]: line.split() for line in lines[header + 2 : header + 5]}
    assert set(rows) == {"a", "b", "c"}
    a_row = [
        "a",
        "running",
        "dc1*",
        "4",
        "25",
        "0",
        "0",
        "0.0s",
        "a280cc50",
        "2/2",
        "http://127.0.0.1:65530/ui",
    ]
    assert rows["a"] == a_row
    assert rows["b"][6:8] == ["3", "1.5s"], "b is 3 updates behind a peer, for 1.5 s"
    assert rows["c"] == ["c", "killed", "dc2", "25", "1", "http://127.0.0.1:65532/ui"]

    log = "\n".join(lines[[line.strip() for line in lines].index("events") :])
    for text in ("kill -9 c (pid 4242)", "restart c (pid 4300)", "c caught up: equal merkle roots"):
        assert text in log
    assert "…" in log, "a long event is cut to one line"
    assert re.search(r"^crdtsync demo .*c killed, writing to a and b$", out.getvalue(), re.MULTILINE)


def test_a_narrow_terminal_lists_the_dashboards_under_the_table_and_a_short_one_the_latest_events() -> None:
    view, out = rich_view(80, height=20)
    for i in range(12):
        view.event(f"event {i}")
    view.close_view()
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    header = next(line for line in text.splitlines() if line.startswith("node"))
    assert header.split() == list(HEADERS[:-1]), "no column of dashboards"
    assert "a: http://127.0.0.1:65530/ui" in text
    assert "event 11" in text and "event 5" not in text and "earlier)" in text


def test_a_multi_line_event_is_printed_in_full_above_the_live_part() -> None:
    view, out = rich_view(100)
    view.event("LOST WRITES on c: 1 of the checks failed:\n    deploys/log c-00007: missing")
    view.close_view()
    text = out.getvalue()
    assert "    deploys/log c-00007: missing" in text
    assert text.index("deploys/log c-00007") < text.index("events")


def test_the_plain_view_prints_lines(capsys: pytest.CaptureFixture[str]) -> None:
    view = DemoView(cluster(), seconds=20, view="plain")
    view.event("kill -9 c")
    view.render()
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("] kill -9 c")
    assert "a: dc=dc1* docs=4 acked=25" in out[1] and "| c: killed" in out[1]


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_auto_is_rich_on_a_terminal_and_plain_for_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    assert choose_view("auto", Stream(tty=True)) == "rich"
    assert choose_view("auto", Stream(tty=False)) == "plain"
    assert choose_view("rich", Stream(tty=False)) == "rich", "forced"
    assert choose_view("plain", Stream(tty=True)) == "plain"
    monkeypatch.setenv("TERM", "dumb")
    assert choose_view("auto", Stream(tty=True)) == "plain"
