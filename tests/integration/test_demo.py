"""The README's first command: `crdtsync demo`, bounded, on real daemons with the default store: as
lines through a pipe (what CI and logs get by default), and as the live table on a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

pytestmark = pytest.mark.integration

HEADERS = ["node", "state", "dc", "docs", "acked", "err", "behind", "lag", "root", "peers", "dashboard"]
MOVES = re.compile(r"\x1b\[[0-9]*[A-HJK]|\r")
"""Cursor moves, erasures and carriage returns: where a redraw starts (a new line here)."""
STYLES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
"""Colours, the cursor hidden and shown, hyperlinks."""


def test_the_demo_kills_restarts_and_converges_with_every_acknowledged_write() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crdtsync", "demo", "--seconds", "22"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    print(done.stdout[-4000:], done.stderr[-2000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "kept every write it acknowledged before the kill" in done.stdout
    assert "converged: equal merkle roots" in done.stdout
    assert "dc=dc1*" in done.stdout or "dc=dc2*" in done.stdout, "a relay is shown"
    assert "\x1b[" not in done.stdout, "a pipe gets plain lines by default"
    assert re.search(r"a: pid \d+, .*dashboard http://127\.0\.0\.1:\d+/ui", done.stdout)


def run_on_a_terminal(args: list[str], columns: int, rows: int, timeout_s: float) -> tuple[int, str]:
    """Run `args` with a pseudo-terminal of `columns` x `rows` as stdin, stdout and stderr: its exit
    status and everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                break
            if not chunk:
                break
            chunks.append(chunk)
        status = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return status, b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_the_demo_draws_a_live_table_in_100_columns_with_an_event_log() -> None:
    status, raw = run_on_a_terminal(
        [sys.executable, "-m", "crdtsync", "demo", "--seconds", "20"], columns=100, rows=40, timeout_s=180
    )
    text = STYLES.sub("", MOVES.sub("\n", raw.replace("\r\n", "\n")))
    print(text[-5000:])
    assert status == 0, text[-4000:]
    lines = text.split("\n")
    too_wide = [line for line in lines if len(line) > 100]
    assert not too_wide, too_wide[:3]

    headers = [i for i, line in enumerate(lines) if line.split()[:2] == ["node", "state"]]
    assert len(headers) > 10, "the table is redrawn"
    last = headers[-1]
    assert lines[last].split() == HEADERS
    rows = [line.split() for line in lines[last + 2 : last + 5]]
    assert [row[0] for row in rows] == ["a", "b", "c"]
    for row in rows:
        assert row[1] == "running", row
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/ui", row[-1]), row
    assert len({row[8] for row in rows}) == 1, "equal Merkle roots at the end"
    assert any(row[2].endswith("*") for row in rows), "a relay is shown"
    assert any("killed" in line.split()[1:2] for line in lines if line.startswith("c ")), "c is shown killed"

    log = [line.strip() for line in lines]
    for event in (r"kill -9 c \(pid \d+\)", r"restart c \(pid \d+\)", r"c caught up: equal merkle roots"):
        assert any(re.match(r"\d+\.\d s  " + event, line) for line in log), event
    assert "converged: equal merkle roots" in text
    assert "\n  a: dashboard http://127.0.0.1:" in text, "the closing help names the dashboards"
