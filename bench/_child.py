"""Child side of the benchmark protocol: one asyncio loop per process that reads JSON commands on stdin,
writes JSON events on stdout, writes to or observes a pycrdt Map, and reports CPU time and bytes sent.

Every system module (``_mesh``, ``_ws``, ``_crdtsync``) builds an :class:`Adapter` and calls :func:`serve`.

Commands (parent -> child) and replies (child -> parent):

- ``expect {last}`` -> ``expecting``; later ``done {t_ns}`` once the Map shows ``k{last % KEYS} == last``
- ``burst {start, n}`` (writer) -> ``wrote {t0_ns, t1_ns}``
- ``paced {start, n, rate_hz}`` (writer) -> ``wrote {send_ns: [...]}``
- ``records`` -> ``records {recs: [i, t_ns, i, t_ns, ...]}`` (arrivals since the last ``expect``)
- ``digest`` -> ``digest {sha, keys}``;  ``stats`` -> ``stats {user_s, sys_s, counters}``;  ``quit``
- anything else goes to :meth:`Adapter.command`.

Timestamps are ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by all processes of one Linux machine).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol

from pycrdt import Doc, Map, MapEvent
from pycrdt._base import BaseEvent

from bench._common import JSON, KEYS, self_cpu_s

YIELD_EVERY_WRITES = 100  # burst writers yield to the event loop this often so the transport can send
STDIN_LINE_BYTES_MAX = 1 << 24


def emit(ev: str, **fields: Any) -> None:
    """Write one protocol event to stdout (the parent's pump thread reads it)."""
    sys.stdout.write(json.dumps({"ev": ev, **fields}, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Adapter(Protocol):
    """What a system module provides to :func:`serve`."""

    @property
    def data(self) -> Map[Any]: ...

    async def flush(self) -> None:
        """Called once after a burst or paced run: hand pending local writes to the transport."""

    async def after_write(self) -> None:
        """Called after each paced write."""

    def counters(self) -> dict[str, int]:
        """Must contain ``bytes_out``: application bytes this process sent so far; ``bytes_published``, where
        present, is the part of it sent on a PUB socket (once per frame, though each subscriber gets a copy)."""

    async def command(self, cmd: JSON) -> bool:
        """Handle a system-specific command; return False if unknown."""


def detached_map(name: str) -> Map[Any]:
    """A Map in a Doc of its own that nothing replicates: for a child that :func:`serve` needs a Map from
    although the benchmark never writes through it."""
    doc: Doc[Map[Any]] = Doc()
    return doc.get(name, type=Map)


class CountingAdapter:
    """:class:`Adapter` of a transport that sends on its own (nothing to flush) and counts what it sends in
    ``bytes_out`` and ``msgs_out``; a subclass adds its commands by overriding :meth:`command`."""

    def __init__(self, data: Map[Any]) -> None:
        self._data = data
        self.bytes_out = 0
        self.msgs_out = 0

    @property
    def data(self) -> Map[Any]:
        return self._data

    async def flush(self) -> None:
        return None

    async def after_write(self) -> None:
        return None

    def counters(self) -> dict[str, int]:
        return {"bytes_out": self.bytes_out, "msgs_out": self.msgs_out}

    async def command(self, cmd: JSON) -> bool:
        return False


class Recorder:
    """Timestamps every value that arrives in the Map (receivers only)."""

    def __init__(self, data: Map[Any]) -> None:
        self.recs: list[int] = []  # flat [i, t_ns, i, t_ns, ...]
        self.expect: int | None = None
        self._subscription = data.observe(self._on_event)

    def _on_event(self, event: BaseEvent) -> None:
        now = time.monotonic_ns()
        if not isinstance(event, MapEvent):
            return
        keys: dict[str, dict[str, Any]] = event.keys  # type: ignore[attr-defined]
        for change in keys.values():
            value = change.get("newValue")
            if isinstance(value, int | float):
                i = int(value)
                self.recs.append(i)
                self.recs.append(now)
                if i == self.expect:
                    self.expect = None
                    emit("done", t_ns=now)


def digest(data: Map[Any]) -> tuple[str, int]:
    content = data.to_py() or {}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16], len(content)


async def write_burst(
    data: Map[Any], start: int, n: int, flush: Callable[[], Awaitable[None]]
) -> tuple[int, int]:
    """n writes as fast as possible, one transaction each, yielding every YIELD_EVERY_WRITES."""
    t0 = time.monotonic_ns()
    for j in range(n):
        i = start + j
        data[f"k{i % KEYS}"] = i
        if j % YIELD_EVERY_WRITES == YIELD_EVERY_WRITES - 1:
            await asyncio.sleep(0)
    await flush()
    return t0, time.monotonic_ns()


async def write_paced(
    data: Map[Any],
    start: int,
    n: int,
    rate_hz: float,
    after_write: Callable[[], Awaitable[None]],
    flush: Callable[[], Awaitable[None]],
) -> list[int]:
    """n writes on an absolute schedule of rate_hz; returns the monotonic_ns taken just before each write.

    asyncio timers have ~1 ms resolution, so at rates above 1 kHz writes that fell due meanwhile go out
    back to back; the recorded send time is always the real one.
    """
    period_ns = 1e9 / rate_hz
    sends: list[int] = []
    t_start = time.monotonic_ns() + 1_000_000
    for j in range(n):
        target = t_start + int(j * period_ns)
        now = time.monotonic_ns()
        await asyncio.sleep((target - now) / 1e9 if target > now else 0)
        i = start + j
        sends.append(time.monotonic_ns())
        data[f"k{i % KEYS}"] = i
        await after_write()
    await flush()
    return sends


async def read_commands() -> AsyncIterator[JSON]:
    """The parent's commands, one JSON object a line on stdin, until the parent is gone."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STDIN_LINE_BYTES_MAX)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return  # the parent is gone: stop
        cmd = json.loads(line)
        if isinstance(cmd, dict):
            yield cmd


async def serve(adapter: Adapter, *, receiver: bool) -> None:
    """Run the command loop until ``quit`` or stdin EOF."""
    data = adapter.data
    recorder = Recorder(data) if receiver else None
    async for cmd in read_commands():
        name = cmd.get("cmd")
        if name == "quit":
            return
        if name == "stats":
            user_s, sys_s = self_cpu_s()
            emit("stats", user_s=user_s, sys_s=sys_s, counters=adapter.counters())
        elif name == "digest":
            sha, keys = digest(data)
            emit("digest", sha=sha, keys=keys)
        elif name == "expect" and recorder is not None:
            recorder.recs.clear()
            last = int(cmd["last"])
            if data.get(f"k{last % KEYS}") == last:
                emit("expecting")
                emit("done", t_ns=time.monotonic_ns())
            else:
                recorder.expect = last
                emit("expecting")
        elif name == "records" and recorder is not None:
            emit("records", recs=recorder.recs)
            recorder.recs = []
        elif name == "burst":
            t0, t1 = await write_burst(data, int(cmd["start"]), int(cmd["n"]), adapter.flush)
            emit("wrote", t0_ns=t0, t1_ns=t1)
        elif name == "paced":
            sends = await write_paced(
                data,
                int(cmd["start"]),
                int(cmd["n"]),
                float(cmd["rate_hz"]),
                adapter.after_write,
                adapter.flush,
            )
            emit("wrote", send_ns=sends)
        elif not await adapter.command(cmd):
            emit("error", msg=f"unknown command {name!r}")


def _describe(exc: BaseException) -> str:
    """The leaf exceptions of a (possibly nested) exception group, as one line."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def run_main(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Entry point of a child: run ``main`` and report any failure as an ``error`` event, then exit 1."""
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException as exc:
        emit("error", msg=_describe(exc))
        traceback.print_exc()
        sys.exit(1)
