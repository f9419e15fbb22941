"""`crdtsync serve` daemons as child processes: what the demo and the chaos campaign share."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# A tiny launcher: on Linux it asks the kernel to send the daemon SIGTERM if its parent dies (even
# by SIGKILL), then execs `python -m crdtsync ...` in the same process (same pid).
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)  # the parent is already gone\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'crdtsync', *sys.argv[2:]])\n"
)


@dataclass(kw_only=True)
class LocalDaemon:
    """A daemon on 127.0.0.1: its ports, files and current process (None before the first start)."""

    name: str
    listen_port: int
    http_port: int
    data_dir: str
    log_path: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def listen(self) -> str:
        return f"tcp://127.0.0.1:{self.listen_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def serve_args(self, dc: str, peers: Sequence[str], extra: Sequence[str]) -> list[str]:
        """`crdtsync serve` arguments for this daemon (key=value logs), then `extra`."""
        args = ["serve", "--node-id", self.name, "--dc", dc, "--listen", self.listen]
        for peer in peers:
            args += ["--peer", peer]
        args += ["--http", f"127.0.0.1:{self.http_port}", "--data-dir", self.data_dir, "--log-format", "kv"]
        return [*args, *extra]


def curve_args(key_file: str, peer_keys: dict[str, str]) -> list[str]:
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


def launch(args: Sequence[str], log_path: str, note: str) -> subprocess.Popen[bytes]:
    """Start `python -m crdtsync ARGS` with stdout and stderr appended to `log_path` (after a `# note`
    line), in a session of its own so that Ctrl-C reaches only the parent, which stops it. On Linux
    the daemon gets SIGTERM when the thread that launched it ends: call this from one long-lived
    thread (the event loop's)."""
    if sys.platform == "linux":
        command = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *args]
    else:
        command = [sys.executable, "-m", "crdtsync", *args]
    with open(log_path, "ab") as log:
        log.write(f"# {note}\n".encode())
        log.flush()
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
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
