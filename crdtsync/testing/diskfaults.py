"""Disk faults for local daemons, without special privileges (Linux): a data directory on a small
tmpfs that fills up, and I/O errors on every write.

`SmallDisk` mounts a size-limited tmpfs over a directory inside a user and mount namespace of its
own, held open by a holder process: the host's view of the directory is unchanged (nothing to
unmount, nothing left mounted if the test dies), daemons started with `SmallDisk.command_prefix()`
run inside the namespace and see the tmpfs, and the tmpfs outlives kill -9 and restarts of those
daemons (it goes when the holder and every daemon in the namespace are gone). `fill()` takes every
free byte with a ballast file, `free()` deletes it: a disk that fills up and recovers.

`io_errors(pid)` lowers the soft file size limit (RLIMIT_FSIZE) of a running process to one byte:
every write past the first byte of any file fails with EFBIG (Python ignores SIGXFSZ), which SQLite
reports as a disk I/O error. `io_errors(pid, False)` lifts it again. The process's other writes
fail too meanwhile, its log's lines among them.

Needs `unshare` and `nsenter` (util-linux) and unprivileged user namespaces, or root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

__all__ = ["DiskFaultError", "SmallDisk", "io_errors"]

BALLAST_FILE = ".ballast"
FILL_CHUNK_BYTES = 1 << 20
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
UNSHARE = ("unshare", "--user", "--map-root-user", "--mount")

# Runs inside the new namespaces: mount the tmpfs, say so, and hold the namespace until stdin closes
# (the owner closed it or died; PR_SET_PDEATHSIG covers a parent killed before it could).
_HOLDER = (
    "import ctypes, signal, subprocess, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG\n"
    "subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=' + sys.argv[2], 'tmpfs', sys.argv[1]], check=True)\n"
    "print('mounted', flush=True)\n"
    "sys.stdin.read()\n"
)


class DiskFaultError(Exception):
    """A disk fault could not be set up (no user namespaces, no unshare); the message says which."""


class SmallDisk:
    """A tmpfs of `size_bytes` over `path` (created if missing), seen only by the processes started
    with `command_prefix()`. Use as a context manager, or `start()` and `close()`."""

    def __init__(self, path: str | os.PathLike[str], size_bytes: int) -> None:
        if size_bytes < 64 * 1024:
            raise ValueError("size_bytes must be at least 64 KiB")
        self.path = Path(path).resolve()
        self.size_bytes = size_bytes
        self._holder: subprocess.Popen[bytes] | None = None

    def start(self) -> SmallDisk:
        for tool in ("unshare", "nsenter", "mount"):
            if shutil.which(tool) is None:
                raise DiskFaultError(f"{tool} is not installed (util-linux): no small disk")
        self.path.mkdir(parents=True, exist_ok=True)
        holder = subprocess.Popen(
            [*UNSHARE, sys.executable, "-c", _HOLDER, str(self.path), str(self.size_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._holder = holder
        assert holder.stdout is not None
        line = holder.stdout.readline()  # the holder answers at once or exits
        if line.strip() != b"mounted":
            self.close()
            error = holder.stderr.read().decode(errors="replace").strip() if holder.stderr else ""
            raise DiskFaultError(f"cannot mount a tmpfs in a user namespace: {error or 'the holder exited'}")
        return self

    @property
    def holder_pid(self) -> int:
        if self._holder is None or self._holder.poll() is not None:
            raise DiskFaultError("the small disk is not mounted (start() it first)")
        return self._holder.pid

    def command_prefix(self) -> list[str]:
        """What to put before a command so that it runs in the namespace and sees the tmpfs (the
        command keeps its pid: nsenter execs it)."""
        return ["nsenter", f"--target={self.holder_pid}", "--user", "--mount", "--preserve-credentials", "--"]

    def host_path(self, relative: str = "") -> Path:
        """The path, from outside the namespace, of `relative` on the tmpfs (through /proc)."""
        return Path(f"/proc/{self.holder_pid}/root") / self.path.relative_to("/") / relative

    def used_bytes(self) -> int:
        stats = os.statvfs(self.host_path())
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize

    def free_bytes(self) -> int:
        stats = os.statvfs(self.host_path())
        return stats.f_bavail * stats.f_frsize

    def fill(self) -> int:
        """Take every free byte with a ballast file (more after an earlier fill); the bytes taken."""
        taken = 0
        size = FILL_CHUNK_BYTES
        with open(self.host_path(BALLAST_FILE), "ab", buffering=0) as ballast:
            # Whole chunks until one does not fit, then halves down to one byte: every byte is taken.
            for _ in range(self.size_bytes // FILL_CHUNK_BYTES + FILL_CHUNK_BYTES.bit_length() + 2):
                try:
                    written = ballast.write(b"\0" * size) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    written = 0
                taken += written
                if written < size:
                    if size == 1:
                        break
                    size //= 2
        return taken

    def free(self) -> None:
        """Delete the ballast: the space it took is free again."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.host_path(BALLAST_FILE))

    def close(self) -> None:
        """End the holder (the tmpfs goes once no daemon is left in the namespace)."""
        holder, self._holder = self._holder, None
        if holder is None:
            return
        with contextlib.suppress(OSError):
            if holder.stdin is not None:
                holder.stdin.close()
        try:
            holder.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        for stream in (holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> SmallDisk:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def io_errors(pid: int, on: bool = True) -> None:
    """Make every write of process `pid` past the first byte of a file fail with EFBIG (`on`), or
    lift that again (the soft RLIMIT_FSIZE back to the hard limit)."""
    _soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1 if on else hard, hard))
