"""Local clusters of `crdtsync serve` processes on 127.0.0.1, for tests, demos and chaos campaigns.

`LocalCluster` starts N daemons (free ports, a data dir and a log file each, CurveZMQ keys when
asked), waits for their `/health` with a deadline, sends them SIGKILL, SIGSTOP, SIGCONT and SIGTERM,
restarts them on the same data dir and ports, keeps the log of the writes they acknowledged
(`AckLog`) and checks it against every node once they have converged:

    with LocalCluster.named(root, ["a", "b", "c"]) as cluster:
        cluster.start_all()
        cluster.wait_healthy()
        cluster.put("c", "flags/features", "new-router", {"enabled": True}, owned=True)
        cluster.kill("c")
        cluster.restart("c")
        cluster.wait_healthy(["c"])
        assert cluster.wait_converged(30.0)
        assert cluster.verify_acks() == []

`free_ports` is the one free-port picker of the repository. Everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx

from crdtsync.testing._acks import Ack, AckedWrite, AckLog, state_vector_of
from crdtsync.testing._processes import (
    ClusterError,
    curve_args,
    free_port,
    free_ports,
    ignore_signals,
    launch,
    log_tail,
    port_free,
    settings_args,
    terminate,
    toml_text,
    wait_until,
)
from crdtsync.transport.curve import read_key_file, write_key_file

__all__ = [
    "Ack",
    "AckLog",
    "AckedWrite",
    "ClusterError",
    "LocalCluster",
    "LocalDaemon",
    "curve_args",
    "free_port",
    "free_ports",
    "ignore_signals",
    "launch",
    "log_tail",
    "plan_daemons",
    "port_free",
    "settings_args",
    "state_vector_of",
    "terminate",
    "toml_text",
    "wait_until",
]

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
HEALTH_POLL_S = 0.1
HEALTH_TIMEOUT_S = 0.5


# ---------------------------------------------------------------------------------------------- daemons


@dataclass(kw_only=True)
class LocalDaemon:
    """A daemon on 127.0.0.1: its ports, files and current process (None before the first start)."""

    name: str
    listen_port: int
    http_port: int
    data_dir: str
    """The SQLite store's directory; "" for the memory store."""
    log_path: str
    dc: str = "dc1"
    peers: list[str] = field(default_factory=list)
    """Replication addresses it is given (`--peer`): every other node, or a few seeds."""
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    """How many times it was started: the incarnation of the current process."""
    advertise: str = ""
    """The address peers reach its request socket at when not `listen` (a fault proxy in front)."""
    publish: str = ""
    """Where its PUB socket binds; "": an ephemeral port."""
    publish_advertise: str = ""
    source_host: str = ""
    """The local address its outgoing replication connections bind ("": the kernel's choice)."""
    command_prefix: list[str] = field(default_factory=list)
    """Put before its command at every start: a data dir on a `diskfaults.SmallDisk`, say."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def listen(self) -> str:
        return f"tcp://127.0.0.1:{self.listen_port}"

    @property
    def address(self) -> str:
        """The replication address peers know it by: `advertise`, else `listen`."""
        return self.advertise or self.listen

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """Whether its process exists and has not exited (a SIGSTOPped one is running)."""
        return self.process is not None and self.process.poll() is None

    def serve_args(self, dc: str, peers: Sequence[str], extra: Sequence[str]) -> list[str]:
        """`crdtsync serve` arguments for this daemon (key=value logs), then `extra`."""
        args = ["serve", "--node-id", self.name, "--dc", dc, "--listen", self.listen]
        for peer in peers:
            args += ["--peer", peer]
        for flag, value in (
            ("--advertise", self.advertise),
            ("--publish", self.publish),
            ("--publish-advertise", self.publish_advertise),
        ):
            args += [flag, value] if value else []
        args += ["--set", f'source_host="{self.source_host}"'] if self.source_host else []
        args += ["--http", f"127.0.0.1:{self.http_port}"]
        if self.data_dir:
            args += ["--data-dir", self.data_dir]
        args += ["--log-format", "kv"]
        return [*args, *extra]

    def spawn(self, args: Sequence[str], note: str, cwd: str | None = None) -> None:
        """Start `crdtsync ARGS` as its new process, in `cwd` (see `launch`)."""
        self.starts += 1
        self.process = launch(args, self.log_path, note, cwd, self.command_prefix)

    def send(self, signum: int) -> bool:
        """Send `signum` to its process; whether there was one to send it to."""
        if self.process is None:
            return False
        try:
            os.kill(self.process.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL (and SIGCONT, in case it is paused), then reap."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
            os.kill(self.process.pid, signal.SIGCONT)
        self.process.wait()

    def healthy(self, response: httpx.Response) -> bool:
        """Whether `response` to GET /health is this daemon's healthy answer."""
        try:
            return response.status_code == 200 and response.json().get("node_id") == self.name
        except (ValueError, AttributeError):
            return False

    def exited_error(self) -> ClusterError | None:
        """An error naming the exit status and the log's end when its process has exited."""
        if self.process is None or self.process.poll() is None:
            return None
        return ClusterError(
            f"daemon {self.name} failed to start (exit status {self.process.returncode}); "
            f"the end of {self.log_path}:\n{log_tail(self.log_path)}"
        )


D = TypeVar("D", bound=LocalDaemon)


def plan_daemons(
    factory: Callable[..., D],
    root: str,
    names: Sequence[str],
    *,
    ports: Sequence[int] | None = None,
    dcs: Mapping[str, str] | None = None,
    seeds: Sequence[str] | None = None,
    data_dirs: bool = True,
    **fields: Any,
) -> list[D]:
    """Daemons named `names` under `root` (data dir root/NAME, or the memory store without
    `data_dirs`; log root/NAME.log), with `ports` (the replication ports of all, then the HTTP ports
    of all; free ports when None), the datacenter of each (`dcs`, default dc1) and as peers every
    other node, or the nodes of `seeds` other than itself."""
    count = len(names)
    chosen = list(ports) if ports is not None else free_ports(2 * count)
    listens = {name: f"tcp://127.0.0.1:{chosen[i]}" for i, name in enumerate(names)}
    given = list(listens.values()) if seeds is None else [listens[name] for name in seeds]
    return [
        factory(
            name=name,
            listen_port=chosen[index],
            http_port=chosen[count + index],
            data_dir=os.path.join(root, name) if data_dirs else "",
            log_path=os.path.join(root, f"{name}.log"),
            dc=(dcs or {}).get(name, "dc1"),
            peers=[address for address in given if address != listens[name]],
            **fields,
        )
        for index, name in enumerate(names)
    ]


# ---------------------------------------------------------------------------------------------- cluster


class LocalCluster(Generic[D]):
    """`crdtsync serve` daemons on 127.0.0.1 under `root`, started, signalled and stopped together.

    Built from daemon names (plain `LocalDaemon`s, see `plan_daemons` for the keyword arguments) or
    from daemons already made (subclasses that carry more state). `curve`: CurveZMQ links, a key file
    root/NAME.key per node (kept if it exists) and every member's public key configured; plaintext
    otherwise. `extra_args` and `settings` (`--set SECTION.KEY=VALUE`) go to every daemon.
    `config_toml`: a config file every daemon reads (written to root/config.toml, `--config`), for
    what flags and `--set` do not give as a deployment writes it, such as `[[placement]]` arrays of
    tables; the flags win over it, as in `crdtsync serve`."""

    def __init__(
        self,
        root: str,
        daemons: Sequence[str] | Sequence[D],
        *,
        curve: bool = False,
        extra_args: Sequence[str] = (),
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        config_toml: str = "",
        note: str = "crdtsync.testing.cluster",
        **plan: Any,
    ) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)
        config_args: list[str] = []
        if config_toml:
            config_path = os.path.join(root, "config.toml")
            with open(config_path, "w", encoding="utf-8") as file:
                file.write(config_toml)
            config_args = ["--config", config_path]
        made: list[Any] = [d for d in daemons if isinstance(d, LocalDaemon)]
        if len(made) != len(daemons):
            made = plan_daemons(LocalDaemon, root, [str(d) for d in daemons], **plan)
        self.daemons: dict[str, D] = {daemon.name: daemon for daemon in made}
        self.extra_args = [*config_args, *extra_args, *settings_args(settings or {})]
        self.note = note
        self.acks = AckLog()
        self.public_keys: dict[str, str] = {}
        """Node name -> CurveZMQ public key when the links use CurveZMQ (empty: plaintext)."""
        if curve:
            for name in self.daemons:
                key_file = self.key_file(name)
                if not os.path.exists(key_file):
                    write_key_file(key_file, name)
                self.public_keys[name] = read_key_file(key_file)[0].decode()
        self._client: httpx.Client | None = None

    @staticmethod
    def named(root: str, names: Sequence[str], **options: Any) -> LocalCluster[LocalDaemon]:
        """A cluster of plain `LocalDaemon`s named `names` (the constructor's and `plan_daemons`'s
        keyword arguments apply), typed for mypy."""
        return LocalCluster[LocalDaemon](root, names, **options)

    def __enter__(self) -> LocalCluster[D]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def __getitem__(self, name: str) -> D:
        return self.daemons[name]

    # ------------------------------------------------------------------ processes

    def key_file(self, name: str) -> str:
        return os.path.join(self.root, f"{name}.key")

    def serve_args(self, daemon: D) -> list[str]:
        """The `crdtsync serve` arguments of `daemon`: ports, peers, data dir, security, extras."""
        if self.public_keys:
            peer_keys = {
                other.address: self.public_keys[other.name]
                for other in self.daemons.values()
                if other is not daemon
            }
            security = curve_args(self.key_file(daemon.name), peer_keys)
        else:
            security = ["--plaintext"]
        return daemon.serve_args(daemon.dc, daemon.peers, [*security, *self.extra_args])

    def start(self, name: str) -> D:
        """Start (or restart, on the same data dir and ports) the daemon `name`."""
        daemon = self.daemons[name]
        if daemon.running:
            raise ClusterError(f"{name} is already running")
        daemon.spawn(self.serve_args(daemon), f"{self.note}: start {daemon.starts + 1} of {name}")
        return daemon

    def start_all(self) -> None:
        for name in self.daemons:
            self.start(name)

    def kill(self, name: str) -> None:
        """SIGKILL: the daemon loses whatever it had not persisted."""
        self.daemons[name].kill()

    def pause(self, name: str) -> None:
        """SIGSTOP: the process stays, silent, until `resume`."""
        self.daemons[name].send(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        """SIGCONT."""
        self.daemons[name].send(signal.SIGCONT)

    def terminate(self, name: str, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and its exit status; None if it had to be killed after `timeout_s`."""
        daemon = self.daemons[name]
        if daemon.process is None:
            return None
        outcomes = terminate([(name, daemon.process)], timeout_s)
        return outcomes[0][1] if outcomes else daemon.process.returncode

    def restart(self, name: str) -> D:
        """Start a daemon that was killed or terminated again, on the same data dir and ports."""
        return self.start(name)

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> list[tuple[str, int | None]]:
        """SIGCONT and SIGTERM every daemon still running, SIGKILL those not gone after `timeout_s`:
        (name, exit status) of each one that was running, None for the killed."""
        processes = [(d.name, d.process) for d in self.daemons.values() if d.process is not None]
        return terminate(processes, timeout_s)

    def close(self) -> None:
        """Stop every daemon (see `stop_all`) and the HTTP client."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self.stop_all()

    # ------------------------------------------------------------------ health

    def _pending(self, waiting: list[D], answers: Iterable[httpx.Response | None]) -> list[D]:
        still: list[D] = []
        for daemon, response in zip(waiting, answers, strict=True):
            error = daemon.exited_error()
            if error is not None:
                raise error
            if response is None or not daemon.healthy(response):
                still.append(daemon)
        return still

    def _timed_out(self, waiting: Sequence[D], timeout_s: float) -> ClusterError:
        names = ", ".join(d.name for d in waiting)
        tails = "\n".join(f"  {d.log_path}:\n{log_tail(d.log_path)}" for d in waiting)
        return ClusterError(f"{names} did not answer /health within {timeout_s:.0f} s\n{tails}")

    def wait_healthy(self, names: Iterable[str] | None = None, timeout_s: float = START_TIMEOUT_S) -> float:
        """Poll /health of the started daemons `names` (all: None) until each answers with its node id;
        the seconds waited. ClusterError if one exits first or `timeout_s` passes."""
        waiting = [self.daemons[n] for n in (self.daemons if names is None else names)]
        started = time.monotonic()
        for _ in range(int(timeout_s / HEALTH_POLL_S) + 2):
            answers = [self._get(d, "/health", HEALTH_TIMEOUT_S) for d in waiting]
            waiting = self._pending(waiting, answers)
            if not waiting or time.monotonic() - started > timeout_s:
                break
            time.sleep(HEALTH_POLL_S)
        if waiting:
            raise self._timed_out(waiting, timeout_s)
        return time.monotonic() - started

    async def wait_healthy_async(
        self, client: httpx.AsyncClient, daemons: Sequence[D], timeout_s: float = START_TIMEOUT_S
    ) -> float:
        """`wait_healthy` for an event loop, with the caller's client."""

        async def health(daemon: D) -> httpx.Response | None:
            with contextlib.suppress(httpx.HTTPError):
                return await client.get(f"{daemon.url}/health", timeout=HEALTH_TIMEOUT_S)
            return None

        waiting = list(daemons)
        started = time.monotonic()
        for _ in range(int(timeout_s / HEALTH_POLL_S) + 2):
            waiting = self._pending(waiting, await asyncio.gather(*(health(d) for d in waiting)))
            if not waiting or time.monotonic() - started > timeout_s:
                break
            await asyncio.sleep(HEALTH_POLL_S)
        if waiting:
            raise self._timed_out(waiting, timeout_s)
        return time.monotonic() - started

    # ------------------------------------------------------------------ HTTP (synchronous)

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=10.0, trust_env=False)
        return self._client

    def _get(self, daemon: D, path: str, timeout_s: float = 10.0) -> httpx.Response | None:
        try:
            return self.client.get(daemon.url + path, timeout=timeout_s)
        except httpx.HTTPError:
            return None

    def put(self, name: str, doc: str, key: str, value: Any, *, owned: bool = False) -> bool:
        """PUT a key on node `name` and log the write (`owned`: only this node writes this key);
        whether it was acknowledged."""
        daemon = self.daemons[name]
        write = AckedWrite(name, self.acks.next_seq(name), doc, key, value, owned, daemon.starts)
        try:
            response: httpx.Response | None = self.client.put(
                f"{daemon.url}/v1/docs/{doc}/keys/{key}", json=value
            )
        except httpx.HTTPError:
            response = None
        return self.acks.record(write, response)

    def status(self, name: str) -> dict[str, Any] | None:
        """GET /v1/status of `name`, None without an answer."""
        response = self._get(self.daemons[name], "/v1/status")
        if response is None or response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body

    def converged(self) -> bool:
        """Whether every daemon answers /v1/status and all report the same Merkle root."""
        roots = [self.status(name) for name in self.daemons]
        return None not in roots and len({status["merkle_root"] for status in roots if status}) == 1

    def wait_converged(self, timeout_s: float, poll_s: float = 0.1) -> bool:
        """Whether the daemons converged (see `converged`) within `timeout_s`."""
        with contextlib.suppress(AssertionError):
            wait_until(self.converged, timeout_s, "equal merkle roots", poll_s)
            return True
        return False

    def verify_acks(self, names: Iterable[str] | None = None) -> list[str]:
        """Check every acknowledged write against each node of `names` (all: None), once converged;
        the problems found, each prefixed by the node."""

        async def verify() -> list[str]:
            async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
                problems: list[str] = []
                for name in self.daemons if names is None else names:
                    found, _owned = await self.acks.verify(client, self.daemons[name].url, self.acks.acks)
                    problems += [f"{name}: {problem}" for problem in found]
                return problems

        return asyncio.run(verify())
