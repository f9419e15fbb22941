"""Ports, files and processes of local `crdtsync serve` daemons (re-exported by crdtsync.testing.cluster)."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

LOG_TAIL_LINES = 15
STACK_DUMP_TIMEOUT_S = 2.0
"""How long a daemon that did not stop gets to write its threads' stacks to its log (SIGABRT)."""


class ClusterError(Exception):
    """A daemon that exited before it was healthy, or did not answer in time (with its log's end)."""


# ---------------------------------------------------------------------------------------------- ports

PORTS_HANDED_OUT_MAX = 2048
"""How many recently handed-out ports `free_ports` will not hand out again (a bounded memory)."""
_ports_handed_out: collections.OrderedDict[int, None] = collections.OrderedDict()
_ports_lock = threading.Lock()


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:port (SO_REUSEADDR, as the daemons bind: TIME_WAIT is fine)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _ephemeral_low() -> int:
    low = 32768
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/sys/net/ipv4/ip_local_port_range") as handle,
    ):
        low = int(handle.read().split()[0])
    return low


def _worker_slice() -> slice:
    """This pytest-xdist worker's share of the candidate ports (every port outside xdist): a killed
    daemon's ports are free until its restart, and a test in another worker must not take them."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or workers < 2:
        return slice(None)
    return slice(int(worker[2:]) % workers, None, workers)


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 below the kernel's ephemeral range.

    A killed daemon's ports stay free until its restart: ports the kernel hands out itself (outgoing
    connections, each daemon's PUB socket on port 0) come from the ephemeral range, so a port below
    it cannot be taken meanwhile. The probes stay bound until all are chosen, so the ports differ,
    and a port handed out before (by this process, among the last `PORTS_HANDED_OUT_MAX`) is not
    handed out again: two calls (a daemon's replication and HTTP ports) cannot return the same free
    port, and a killed daemon's ports stay its own until it restarts.
    """
    ephemeral_low = _ephemeral_low()
    candidates = list(range(max(1024, ephemeral_low - 10_000), ephemeral_low))[_worker_slice()]
    random.shuffle(candidates)
    probes: list[socket.socket] = []
    ports: list[int] = []
    try:
        for candidate in candidates:
            if len(ports) == count:
                break
            if candidate in _ports_handed_out:
                continue
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                probe.close()
                continue
            probes.append(probe)
            ports.append(candidate)
    finally:
        for probe in probes:
            probe.close()
    if len(ports) < count:
        raise ClusterError(f"found only {len(ports)} free ports on 127.0.0.1 below {ephemeral_low}")
    with _ports_lock:
        for port in ports:
            _ports_handed_out[port] = None
        while len(_ports_handed_out) > PORTS_HANDED_OUT_MAX:
            _ports_handed_out.popitem(last=False)
    return ports


def free_port() -> int:
    """One free TCP port on 127.0.0.1 (see `free_ports`)."""
    return free_ports(1)[0]


# ---------------------------------------------------------------------------------------------- files


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a daemon's log, indented, for an error message."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            text = handle.read().decode(errors="replace")
    except OSError as exc:
        return f"    (cannot read {path}: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else "    (the log is empty)"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(top: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML document of top-level keys and one level of tables (all the daemon config needs)."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in top.items()]
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"


def curve_args(key_file: str, peer_keys: Mapping[str, str]) -> list[str]:
    """`--set` arguments for CurveZMQ links: this node's key file and every peer's public key by
    address (gossip spreads addresses, not keys, so a deployment lists every member)."""
    keys = ", ".join(f'"{address}" = "{key}"' for address, key in peer_keys.items())
    return [
        "--set",
        'security.mode="curve"',
        "--set",
        f'security.key_file="{key_file}"',
        "--set",
        f"security.peer_keys={{{keys}}}",
    ]


def settings_args(settings: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """`--set SECTION.KEY=VALUE` arguments (integers, as the config's timers are)."""
    args: list[str] = []
    for section, values in settings.items():
        for key, value in values.items():
            args += ["--set", f"{section}.{key}={value}"]
    return args


# ---------------------------------------------------------------------------------------------- processes

# A tiny launcher: on Linux it asks the kernel to send the daemon SIGTERM if its parent dies (even
# by SIGKILL), then execs `python -m crdtsync ...` in the same process (same pid).
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)  # the parent is already gone\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'crdtsync', *sys.argv[2:]])\n"
)


def launch(
    args: Sequence[str], log_path: str, note: str, cwd: str | None = None, prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start `python -m crdtsync ARGS` with stdout and stderr appended to `log_path` (after a `# note`
    line), in a session of its own so that Ctrl-C reaches only the parent, which stops it. On Linux
    the daemon gets SIGTERM when the thread that launched it ends: call this from one long-lived
    thread (the event loop's). `prefix`: a command that execs the rest in the same process (such as
    `SmallDisk.command_prefix()`)."""
    if sys.platform == "linux":
        command = [*prefix, sys.executable, "-c", _LAUNCHER, str(os.getpid()), *args]
    else:
        command = [*prefix, sys.executable, "-m", "crdtsync", *args]
    with open(log_path, "ab") as log:
        log.write(f"# {note}\n".encode())
        log.flush()
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
            # SIGABRT then writes every thread's stack to the log (see `terminate`).
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )


def terminate(
    processes: Sequence[tuple[str, subprocess.Popen[bytes]]], timeout_s: float
) -> list[tuple[str, int | None]]:
    """SIGCONT (for paused ones) and SIGTERM every process still running, then SIGKILL those not gone
    after `timeout_s`. Returns (name, exit status) of each one that was running, None for the killed."""
    running = [(name, process) for name, process in processes if process.poll() is None]
    for _name, process in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
    outcomes: list[tuple[str, int | None]] = []
    deadline = time.monotonic() + timeout_s
    for name, process in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        if process.poll() is None:
            # Where it hangs goes to its log first: SIGABRT makes faulthandler dump every thread.
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                process.send_signal(signal.SIGABRT)
                process.wait(timeout=STACK_DUMP_TIMEOUT_S)
            process.kill()
            process.wait()
            outcomes.append((name, None))
        else:
            outcomes.append((name, process.returncode))
    return outcomes


def ignore_signals() -> Callable[[], None]:
    """Ignore SIGINT and SIGTERM while the daemons are being stopped (a second Ctrl-C must not leave
    them behind); returns what restores the handlers. Off the main thread, where handlers cannot be
    set, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, signal.SIG_IGN)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str | Callable[[], str], poll_s: float = 0.02
) -> float:
    """Poll `predicate` until it holds and return the seconds waited; after `timeout_s`, fail with
    AssertionError naming `what` (a callable is evaluated then, to describe the state at the deadline)."""
    start = time.monotonic()
    for _ in range(int(timeout_s / poll_s) + 2):
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start >= timeout_s:
            break
        time.sleep(poll_s)
    description = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout_s:.1f} s waiting until {description}")
