"""The disk faults of the chaos campaign (`python -m fuzz.chaos --faults process,disk`).

Every daemon's data dir is a small tmpfs of its own (`crdtsync.testing.diskfaults.SmallDisk`: a user
and mount namespace, no privileges needed) that outlives its kills and restarts. One at a time, a
seeded schedule hits a node with:

- `full`: a ballast file takes every free byte of its disk for 2-8 s, while probe writes of 48 KB go
  to it until one is refused; then the ballast is deleted and the node must report ready again
  (/health 200) by itself;
- `ioerror`: every write of the process past a file's first byte fails (RLIMIT_FSIZE of 1 byte) for
  2-8 s, with a few probe writes; then the limit is lifted and the node must recover by itself;
- `backup-kill`: kill -9 while a backup streams out of it (POST /v1/backup), then a restart;
- `restore-kill`: kill -9 while it merges a backup of itself (POST /v1/restore), then a restart.

A probe write answered 200 is acknowledged and checked at the end like every other write; the
others are counted by what the client saw. A backup stream that the client read to its end must be
a whole backup (`check_backup_file`); one cut by the kill must fail in the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from crdtsync.store.sqlite import StoreError, check_backup_file
from crdtsync.testing.diskfaults import SmallDisk, io_errors

if TYPE_CHECKING:
    from fuzz.chaos import Campaign, Daemon

DISK_BYTES = 128 << 20
"""Each node's tmpfs: far more than a campaign writes, so only the ballast fills it."""
DISK_FAULT_KINDS = ("full", "ioerror", "backup-kill", "restore-kill")
FIRST_FAULT_S = 4.0
DISK_FAULT_GAP_S = (4.0, 12.0)
DISK_FAULT_S = (2.0, 8.0)
"""How long a full disk or the I/O errors last."""
KILL_DELAY_S = (0.0, 0.03)
"""From sending a backup's or a restore's request to the kill: a campaign's store takes milliseconds
to copy and stream, so later kills find the work done."""
DOWNTIME_S = (0.5, 3.0)
PROBE_VALUE_BYTES = 48 * 1024
FULL_PROBES_MAX = 128
"""Probe writes to a full disk, at most: about 6 MB, more than SQLite's write-ahead log keeps."""
IOERROR_PROBES = 3
PROBE_DOC_PREFIX = "chaos/disk-"
RECOVER_TIMEOUT_S = 30.0
SLOT_WAIT_S = 30.0
POLL_S = 0.1
REQUEST_TIMEOUT_S = 10.0
BACKUP_BYTES_MAX = 1 << 30
FAULTS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class DiskFault:
    at_s: float
    kind: str
    node: int
    duration_s: float


def plan_disk(rng: random.Random, seconds: float, nodes: int) -> list[DiskFault]:
    """The disk faults of a run, one at a time, kinds in shuffled rounds of all four."""
    faults: list[DiskFault] = []
    kinds: list[str] = []
    at_s = FIRST_FAULT_S
    for _ in range(FAULTS_MAX):
        if at_s >= seconds - 1.0:
            break
        if not kinds:
            kinds = rng.sample(DISK_FAULT_KINDS, len(DISK_FAULT_KINDS))
        kind = kinds.pop()
        duration_s = rng.uniform(*(DISK_FAULT_S if kind in ("full", "ioerror") else DOWNTIME_S))
        faults.append(DiskFault(at_s, kind, rng.randrange(nodes), duration_s))
        at_s += duration_s + rng.uniform(*DISK_FAULT_GAP_S)
    return faults


@dataclass
class DiskSummary:
    faults: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    answers: dict[str, Counter[str]] = field(default_factory=dict)
    """By fault kind: what the probe writes were answered (200, HTTP 507, HTTP 503, timeout...)."""
    recover_s: dict[str, list[float]] = field(default_factory=dict)
    """By fault kind: from the end of the fault until /health answered 200 again."""
    unrecovered: int = 0
    refusing: Counter[str] = field(default_factory=Counter)
    """By fault kind: faults in which a probe write was refused (a full disk may still take writes
    into the pages SQLite's write-ahead log already has)."""
    cut: Counter[str] = field(default_factory=Counter)
    """Backups and restores the kill cut short (the client saw an error)."""

    @property
    def kills(self) -> int:
        return self.faults["backup-kill"] + self.faults["restore-kill"]

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{kind} {self.faults[kind]}" for kind in DISK_FAULT_KINDS)
        lines = [
            f"  disk: {sum(self.faults.values())} faults ({kinds})"
            + (f", {self.skipped} skipped" if self.skipped else "")
            + f"; backups cut by the kill {self.cut['backup']}, restores {self.cut['restore']}"
        ]
        for kind in ("full", "ioerror"):
            answers = self.answers.get(kind)
            if answers:
                seen = ", ".join(f"{count} {answer}" for answer, count in sorted(answers.items()))
                lines.append(
                    f"  {kind}: probe writes answered {seen}; {self.refusing[kind]} of "
                    f"{self.faults[kind]} faults refused one"
                )
            times = self.recover_s.get(kind)
            if times:
                lines.append(
                    f"  {kind}: ready again {min(times):.1f}-{max(times):.1f} s after the fault ended "
                    f"(n={len(times)})"
                )
        return lines

    def figures(self) -> dict[str, Any]:
        return {
            "faults": dict(self.faults),
            "skipped": self.skipped,
            "probe_answers": {kind: dict(answers) for kind, answers in self.answers.items()},
            "recover_s": {kind: [round(s, 3) for s in times] for kind, times in self.recover_s.items()},
            "unrecovered": self.unrecovered,
            "faults_refusing_a_probe": dict(self.refusing),
            "cut": dict(self.cut),
        }


class DiskFaults:
    """The small disks, the disk schedule and its probes of one campaign."""

    def __init__(self, campaign: Campaign, rng: random.Random) -> None:
        self.campaign = campaign
        self.daemons: Sequence[Daemon] = campaign.daemons
        self.plan = plan_disk(rng, campaign.seconds, len(self.daemons))
        self.kill_rng = random.Random(rng.getrandbits(64))
        self.disks = {daemon.name: SmallDisk(daemon.data_dir, DISK_BYTES) for daemon in self.daemons}
        self.summary = DiskSummary()
        self.backups: dict[str, bytes] = {}
        """Node -> the last whole backup streamed out of it (what a restore-kill sends back)."""

    def start(self) -> None:
        for daemon in self.daemons:
            disk = self.disks[daemon.name].start()
            daemon.command_prefix = disk.command_prefix()

    def close(self) -> None:
        """After the daemons are stopped: the tmpfs and everything on them go."""
        for disk in self.disks.values():
            disk.close()

    async def schedule(self, started: float, heal: asyncio.Event) -> None:
        for index, fault in enumerate(self.plan):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(heal.wait(), max(0.0, started + fault.at_s - time.monotonic()))
            if heal.is_set():
                return
            await self.run(index, fault, heal)

    async def run(self, index: int, fault: DiskFault, heal: asyncio.Event) -> None:
        campaign = self.campaign
        daemon = self.daemons[fault.node]
        if not await campaign.take_slot(daemon, SLOT_WAIT_S):
            self.summary.skipped += 1
            campaign.say(
                f"disk: skip the {fault.kind} of {daemon.name}: not up, or too many nodes are faulty"
            )
            return
        self.summary.faults[fault.kind] += 1
        spans = campaign.timeline.begin(daemon.name, fault.kind)
        daemon.disturbed += 1
        try:
            if fault.kind in ("full", "ioerror"):
                await self.store_fault(index, fault, daemon, heal)
            else:
                await self.kill_fault(fault, daemon, heal)
        finally:
            campaign.timeline.end(spans)
            daemon.faulty = False

    async def store_fault(self, index: int, fault: DiskFault, daemon: Daemon, heal: asyncio.Event) -> None:
        campaign, disk = self.campaign, self.disks[daemon.name]
        assert daemon.pid is not None
        ended_at = time.monotonic() + fault.duration_s
        if fault.kind == "full":
            taken = await asyncio.to_thread(disk.fill)
            campaign.say(
                f"disk: {daemon.name}'s disk full ({taken / 1e6:.0f} MB of ballast) for {fault.duration_s:.1f} s"
            )
            probes, size = FULL_PROBES_MAX, PROBE_VALUE_BYTES
        else:
            with contextlib.suppress(ProcessLookupError):  # it exited on its own: the monitor reports it
                io_errors(daemon.pid)
            campaign.say(f"disk: I/O errors on every write of {daemon.name} for {fault.duration_s:.1f} s")
            probes, size = IOERROR_PROBES, 64
        answers = self.summary.answers.setdefault(fault.kind, Counter())
        doc = f"{PROBE_DOC_PREFIX}{index}"
        campaign.log_docs.add(doc)
        from fuzz.chaos import Write

        for probe in range(probes):
            if heal.is_set() or time.monotonic() >= ended_at:
                break
            value = {"disk": index, "i": probe, "pad": "x" * size}
            answer = await campaign.send(
                daemon, Write(probe, doc, f"{daemon.name}-d{index}-{probe}", value, True)
            )
            answers[answer] += 1
            if answer != "200":
                self.summary.refusing[fault.kind] += 1
                break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(heal.wait(), max(0.0, ended_at - time.monotonic()))
        if fault.kind == "full":
            disk.free()
        else:
            with contextlib.suppress(ProcessLookupError):
                io_errors(daemon.pid, False)
        ended = time.monotonic()
        if await self.wait_ready(daemon):
            recover_s = time.monotonic() - ended
            self.summary.recover_s.setdefault(fault.kind, []).append(recover_s)
            campaign.say(f"disk: {daemon.name} ready again {recover_s:.1f} s after the {fault.kind} ended")
        else:
            self.summary.unrecovered += 1
            campaign.problem(
                f"{daemon.name} did not answer /health 200 within {RECOVER_TIMEOUT_S:.0f} s after its "
                f"{fault.kind} ended"
            )

    async def wait_ready(self, daemon: Daemon) -> bool:
        deadline = time.monotonic() + RECOVER_TIMEOUT_S
        for _ in range(int(RECOVER_TIMEOUT_S / POLL_S) + 2):
            if daemon.state != "running":
                return False
            if await self.campaign.healthy(daemon):
                return True
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_S)
        return False

    async def kill_fault(self, fault: DiskFault, daemon: Daemon, heal: asyncio.Event) -> None:
        campaign = self.campaign
        delay_s = self.kill_rng.uniform(*KILL_DELAY_S)
        if fault.kind == "backup-kill":
            what, request = "backup", self.backup(daemon, delay_s)
        else:
            body = self.backups.get(daemon.name) or await self.whole_backup(daemon)
            if body is None:
                campaign.say(f"disk: no backup of {daemon.name} to restore; the restore-kill is a plain kill")
                body = b""
            what, request = "restore", self.restore(daemon, body, delay_s)
        pid = daemon.pid
        cut = await request
        self.summary.cut[what] += cut
        campaign.say(
            f"disk: kill -9 {daemon.name} (pid {pid}) {delay_s * 1000:.0f} ms into a {what}"
            f" ({'cut short' if cut else 'it had finished'}); restart in {fault.duration_s:.1f} s"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(heal.wait(), fault.duration_s)
        campaign.spawn(daemon)
        restarted = time.monotonic()
        if await campaign.wait_healthy(daemon):
            campaign.say(
                f"disk: {daemon.name} answers /health {time.monotonic() - restarted:.1f} s after its restart"
            )

    def kill(self, daemon: Daemon) -> None:
        self.campaign.signal_daemon(daemon, signal.SIGKILL, "killed")
        assert daemon.process is not None
        daemon.process.wait(timeout=REQUEST_TIMEOUT_S)

    async def backup(self, daemon: Daemon, delay_s: float) -> bool:
        """Stream a backup out of the node and kill it `delay_s` after the request; whether the
        stream was cut (a stream read to its end must hold a whole backup)."""
        chunks: list[bytes] = []
        size = 0
        killer = asyncio.get_running_loop().call_later(delay_s, self.kill, daemon)
        try:
            async with self.campaign.client.stream(
                "POST", f"{daemon.url}/v1/backup", timeout=REQUEST_TIMEOUT_S
            ) as response:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > BACKUP_BYTES_MAX:
                        raise httpx.ReadError("backup over BACKUP_BYTES_MAX")
                    chunks.append(chunk)
                complete = response.status_code == 200
        except httpx.HTTPError:
            complete = False
        await self.await_kill(daemon, killer)
        if complete:
            self.check_whole(daemon, b"".join(chunks))
        return not complete

    async def await_kill(self, daemon: Daemon, killer: asyncio.TimerHandle) -> None:
        """The kill happens in any case, at its time: wait for it if it is still due."""
        wait_s = killer.when() - asyncio.get_running_loop().time()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        if daemon.state != "killed":
            killer.cancel()
            self.kill(daemon)

    def check_whole(self, daemon: Daemon, body: bytes) -> None:
        path = os.path.join(self.campaign.root, f"{daemon.name}-backup-check.db")
        with open(path, "wb") as handle:
            handle.write(body)
        try:
            check_backup_file(path)
            self.backups[daemon.name] = body
        except StoreError as exc:
            self.campaign.problem(f"a backup of {daemon.name} read to its end is not whole: {exc}")
        finally:
            os.unlink(path)

    async def whole_backup(self, daemon: Daemon) -> bytes | None:
        try:
            response = await self.campaign.client.post(f"{daemon.url}/v1/backup", timeout=REQUEST_TIMEOUT_S)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        self.check_whole(daemon, response.content)
        return self.backups.get(daemon.name)

    async def restore(self, daemon: Daemon, body: bytes, delay_s: float) -> bool:
        """Send the backup back to the node and kill it `delay_s` later; whether the restore was cut."""
        killer = asyncio.get_running_loop().call_later(delay_s, self.kill, daemon)
        try:
            response = await self.campaign.client.post(
                f"{daemon.url}/v1/restore", content=body, timeout=REQUEST_TIMEOUT_S
            )
            complete = response.status_code == 200
        except httpx.HTTPError:
            complete = False
        await self.await_kill(daemon, killer)
        return not complete
