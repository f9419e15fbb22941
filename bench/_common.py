"""Shared helpers for the benchmarks: machine facts, statistics, CPU and byte accounting, tables, and the
parent side of the line-delimited JSON protocol spoken with child processes.

Nothing here starts a process on import. Every wait is bounded by a :class:`Deadline`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import queue
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal

JSON = dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYS = 1000  # the writer sets m[f"k{i % KEYS}"] = i
CHILD_QUIT_TIMEOUT_S = 3.0
STDERR_TAIL_LINES = 12


# ---------------------------------------------------------------------------------------------------------
# Errors and deadlines


class BenchError(Exception):
    """A system could not be measured (a child died, reported an error, or diverged)."""


class BenchTimeoutError(BenchError):
    """A wait ran past the system's deadline."""


class Deadline:
    """A point in time (``time.monotonic``) after which every wait gives up."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining_s(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at


# ---------------------------------------------------------------------------------------------------------
# Machine facts


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, str]:
    """CPU model, core count, kernel, Python and the versions of every package the benchmarks touch."""
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count() or 0),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }
    for dist in (
        "pycrdt",
        "pyzmq",
        "lz4",
        "msgpack",
        "pycrdt-websocket",
        "hypercorn",
        "httpx-ws",
        "crdtsync",
    ):
        info[dist] = _version(dist)
    try:
        import zmq

        info["libzmq"] = zmq.zmq_version()
    except ImportError:
        info["libzmq"] = "not installed"
    return info


# ---------------------------------------------------------------------------------------------------------
# Statistics


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (``pct`` in [0, 100]); NaN when empty."""
    if not sorted_values:
        return math.nan
    if pct <= 0:
        return float(sorted_values[0])
    rank = math.ceil(pct / 100.0 * len(sorted_values))
    return float(sorted_values[min(len(sorted_values), rank) - 1])


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0 or math.isnan(denominator):
        return None
    if math.isnan(numerator):
        return None
    return numerator / denominator


# ---------------------------------------------------------------------------------------------------------
# CPU time and bytes


def self_cpu_s() -> tuple[float, float]:
    """(user, system) CPU seconds of the calling process, all threads, microsecond resolution."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int, tid: int | None = None) -> float | None:
    """user+sys CPU seconds of another process, all threads, from /proc/<pid>/stat (clock-tick resolution);
    with `tid`, of that thread of it.

    Used as a cross-check of what the children report about themselves; None if the process is gone.
    """
    try:
        path = Path(f"/proc/{pid}/stat") if tid is None else Path(f"/proc/{pid}/task/{tid}/stat")
        stat = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    try:
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS_PER_S
    except (IndexError, ValueError):
        return None


def thread_cpu_s() -> dict[str, float]:
    """user+sys CPU seconds of the calling process's threads, by the name of the Python thread
    (a pool's prefix, without its index) or "main"; "other" for threads Python did not start (ZeroMQ's
    I/O threads) and for those already ended. Clock-tick resolution, from /proc/self/task."""
    names = {thread.native_id: thread.name.split("_")[0] for thread in threading.enumerate()}
    names[threading.main_thread().native_id] = "main"
    by_name: dict[str, float] = {}
    for tid, name in names.items():
        cpu_s = proc_cpu_s(os.getpid(), tid) if tid is not None else None
        if cpu_s is not None:
            by_name[name] = by_name.get(name, 0.0) + cpu_s
    user_s, sys_s = self_cpu_s()
    by_name["other"] = max(0.0, user_s + sys_s - sum(by_name.values()))
    return by_name


_SS_PID = re.compile(r"pid=(\d+)")
_SS_BYTES_SENT = re.compile(r"\bbytes_sent:(\d+)")
_SS_SEGS_OUT = re.compile(r"\bsegs_out:(\d+)")
IPV4_TCP_HEADER_BYTES = 40  # 20 IPv4 + 20 TCP, no options
TCP_TIMESTAMP_OPTION_BYTES = 12


@dataclass(frozen=True)
class TcpSent:
    """What the TCP sockets of some processes sent so far.

    ``payload``: TCP payload bytes (protocol framing included: ZMTP, websocket frames, HTTP upgrade).
    ``ip``: the IP packets, i.e. payload plus an IPv4+TCP header for every segment sent (pure ACKs included).
    """

    payload: int
    ip: int


def tcp_sent(pids: Iterable[int]) -> TcpSent | None:
    """Totals over the open TCP sockets of ``pids`` from ``ss -tinp``; None if ss is unavailable.

    Sockets closed in the meantime are not counted, so sample only while the processes keep their links.
    """
    wanted = set(pids)
    if not wanted or shutil.which("ss") is None:
        return None
    try:
        out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    payload = 0
    ip = 0
    seen = False
    owner_ok = False
    for line in out.splitlines():
        if line and not line[0].isspace():
            owner_ok = any(int(p) in wanted for p in _SS_PID.findall(line))
        sent = _SS_BYTES_SENT.search(line)
        if not (owner_ok and sent):
            continue
        segs = _SS_SEGS_OUT.search(line)
        header = IPV4_TCP_HEADER_BYTES + (
            TCP_TIMESTAMP_OPTION_BYTES if re.search(r"(^|\s)ts(\s|$)", line) else 0
        )
        payload += int(sent.group(1))
        ip += int(sent.group(1)) + (int(segs.group(1)) * header if segs else 0)
        seen = True
        owner_ok = False
    return TcpSent(payload, ip) if seen else None


# ---------------------------------------------------------------------------------------------------------
# Networking


# ---------------------------------------------------------------------------------------------------------
# Tables


def fmt(value: float | int | str | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def print_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = ()
) -> None:
    """Print a plain-text table: first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for col, cell in enumerate(row):
            widths[col] = max(widths[col], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[col]) if col == 0 else cell.rjust(widths[col]) for col, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    print()
    print(title)
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    for note in notes:
        print(f"  {note}")


# ---------------------------------------------------------------------------------------------------------
# Child processes (parent side of the protocol)


class Child:
    """One benchmark process: ``python -m <module> <args>`` with JSON lines on stdin/stdout.

    The child answers commands ``{"cmd": ...}`` with events ``{"ev": ...}``; ``{"ev": "error"}`` from the
    child, its exit, or a deadline turn into :class:`BenchError`. stderr goes to a log file.
    """

    def __init__(self, name: str, module: str, args: Sequence[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[str] = self.log_path.open("w", encoding="utf-8")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO_ROOT,
            env=env,
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        self._events: queue.Queue[JSON | None] = queue.Queue()
        self._pending: list[JSON] = []
        self._pump_thread = threading.Thread(target=self._pump, name=f"pump-{name}", daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            for raw in stdout:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue  # stray output from a library; only JSON lines are protocol
                if isinstance(event, dict) and isinstance(event.get("ev"), str):
                    self._events.put(event)
        except (OSError, ValueError):
            pass
        finally:
            self._events.put(None)

    def send(self, cmd: str, **fields: Any) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
            stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise BenchError(f"{self.name}: cannot send {cmd!r} ({exc}); {self._exit_text()}") from exc

    def wait(self, ev: str, deadline: Deadline, what: str = "") -> JSON:
        for index, pending in enumerate(self._pending):
            if pending["ev"] == ev:
                return self._pending.pop(index)
        while True:
            remaining = deadline.remaining_s()
            if remaining <= 0:
                raise BenchTimeoutError(f"{self.name}: no {ev!r} before the deadline {what}".rstrip())
            try:
                event = self._events.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if event is None:
                self._events.put(None)  # keep reporting the exit to later waits
                raise BenchError(f"{self.name}: exited while waiting for {ev!r}; {self._exit_text()}")
            if event["ev"] == "error":
                raise BenchError(f"{self.name}: {event.get('msg', 'error')}")
            if event["ev"] == ev:
                return event
            self._pending.append(event)

    def request(self, cmd: str, reply: str, deadline: Deadline, **fields: Any) -> JSON:
        self.send(cmd, **fields)
        return self.wait(reply, deadline, f"(after {cmd!r})")

    def _exit_text(self) -> str:
        try:
            rc = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            rc = None
        return f"rc={rc}; stderr tail:\n{self.stderr_tail()}"

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        try:
            self._log.flush()
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def close(self) -> None:
        """Ask the child to quit, then kill it if it has not exited within a few seconds."""
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(BenchError):
                    self.send("quit")
                try:
                    self.proc.wait(timeout=CHILD_QUIT_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=CHILD_QUIT_TIMEOUT_S)
        finally:
            self._pump_thread.join(timeout=1.0)  # the child has exited: its stdout reaches EOF
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            self._log.close()


def close_all(children: Sequence[Child]) -> None:
    """Close every child; the first ones are asked to quit together so shutdown is not serialised."""
    for child in children:
        if child.proc.poll() is None:
            with contextlib.suppress(BenchError):
                child.send("quit")
    for child in children:
        try:
            child.close()
        except Exception as exc:  # never leave a process behind because another one misbehaved
            print(f"warning: closing {child.name}: {exc}", file=sys.stderr)
            if child.proc.poll() is None:
                child.proc.kill()


# ---------------------------------------------------------------------------------------------------------
# Memory


def proc_status_kb(key: str = "VmRSS") -> int:
    """A ``kB`` field of /proc/self/status (VmRSS: resident now, VmHWM: peak); 0 where unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass(frozen=True)
class Target:
    """One figure against a target from an issue. `limit` None prints it for information, without a
    verdict; `unit` "" means a ratio; `tolerance` is a relative slack, for a figure that can equal
    its bound exactly up to float rounding."""

    key: str
    text: str
    value: float | None
    limit: float | None
    unit: str = ""
    op: Literal["<=", ">="] = "<="
    tolerance: float = 0.0

    @property
    def verdict(self) -> str:
        if self.limit is None:
            return "info"
        if self.value is None or math.isnan(self.value):
            return "n/a"
        slack = abs(self.limit) * self.tolerance
        ok = self.value <= self.limit + slack if self.op == "<=" else self.value >= self.limit - slack
        return "PASS" if ok else "MISS"

    def as_json(self) -> JSON:
        return asdict(self) | {"verdict": self.verdict}


# ---------------------------------------------------------------------------------------------------------
# Reports


def write_json(path: Path, summary: JSON) -> None:
    """Write a benchmark's ``--json`` summary (parent directories created; values JSON has no type for
    become strings) and say where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nJSON written to {path}")
