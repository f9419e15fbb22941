"""`crdtsync serve` daemons as OS processes for the integration tests, on the local-cluster harness
(`crdtsync.testing.cluster`: its free ports, launcher, TOML writer and deadline waits).

Each daemon gets free ports on 127.0.0.1, its own work dir (SQLite data dir, TOML config, log file)
and short replication timers. A `DaemonPool` owns every daemon it started and kills them all (SIGCONT
first, for paused ones) when closed, so a fixture's teardown never leaves a process behind.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from crdtsync.testing.cluster import LocalDaemon, log_tail, toml_text
from crdtsync.testing.cluster import free_port as free_port
from crdtsync.testing.cluster import wait_until as wait_until
from fuzz.chaos import FAST_MEMBERSHIP as FAST_MEMBERSHIP
from fuzz.chaos import FAST_REPLICATION as FAST_REPLICATION

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CONVERGE_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 10.0


class Daemon(LocalDaemon):
    """One `crdtsync serve` process started from a TOML config (a harness `LocalDaemon` whose data dir
    and log live in its work dir); restartable on the same data dir, ports and node id."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        dc: str = "test-dc",
        http: dict[str, Any] | None = None,
        replication: dict[str, Any] | None = None,
        membership: dict[str, Any] | None = None,
        websocket: dict[str, Any] | None = None,
        token: str | None = None,
        cacert: str | None = None,
        placement_rf: int | dict[str, int] | None = None,
    ) -> None:
        """`token`: the bearer token `client` (and the health check) sends; `cacert`: the CA file
        that verifies the daemon's certificate when `http` sets tls_cert (the URL is https then);
        `placement_rf`: a default `[[placement]]` rule of that many replicas per datacenter (or
        of so many in each datacenter named)."""
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            name=name,
            listen_port=free_port(),
            http_port=free_port(),
            data_dir=str(workdir / "data"),
            log_path=str(workdir / "daemon.log"),
            dc=dc,
        )
        self.workdir = workdir
        self.http = dict(http or {})
        self.replication = dict(FAST_REPLICATION if replication is None else replication)
        self.membership = dict(FAST_MEMBERSHIP if membership is None else membership)
        self.websocket = dict(websocket or {})
        self.top: dict[str, Any] = {}
        """Top-level config keys added to (or overriding) the generated ones."""
        self._client: httpx.Client | None = None
        self.token = token
        self.cacert = cacert
        self.placement_rf = placement_rf

    @property
    def url(self) -> str:
        scheme = "https" if self.http.get("tls_cert") else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return True if self.cacert is None else ssl.create_default_context(cafile=self.cacert)

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.token is None else {"Authorization": f"Bearer {self.token}"}

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process

    def config_path(self, peers: list[str], listen: str) -> Path:
        top: dict[str, Any] = {
            "node_id": self.name,
            "dc": self.dc,
            "listen": listen,
            "peers": peers,
            "data_dir": self.data_dir,
            "durability": "fsync",
            **self.top,
        }
        tables = {
            "http": {"listen": f"127.0.0.1:{self.http_port}", **self.http},
            "log": {"level": "info", "format": "kv"},
            "replication": self.replication,
            "membership": self.membership,
            "security": {"mode": "plaintext"},
            **({"websocket": self.websocket} if self.websocket else {}),
        }
        path = self.workdir / ("config.toml" if listen == self.listen else "config-isolated.toml")
        rf = self.placement_rf
        rf_text = (
            "{ " + ", ".join(f"{dc} = {n}" for dc, n in rf.items()) + " }" if isinstance(rf, dict) else rf
        )
        placement = "" if rf_text is None else f"\n[[placement]]\nrf = {rf_text}\n"
        path.write_text(toml_text(top, tables) + placement)
        return path

    def start(self, *, isolated: bool = False) -> None:
        """Start the process; `wait_healthy` waits for its API. An `isolated` daemon has no peers and
        listens on another replication port, so its peers cannot reach it either."""
        assert not self.running, f"{self.name} is already running"
        if isolated:
            config = self.config_path([], f"tcp://127.0.0.1:{free_port()}")
        else:
            config = self.config_path(self.peers, self.listen)
        self.spawn(["serve", "--config", str(config)], f"start {self.starts + 1}", cwd=str(self.workdir))
        self.reset_client()

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def log_text(self) -> str:
        """Everything the daemon logged so far (all its starts)."""
        return Path(self.log_path).read_text(errors="replace")

    def _healthy(self) -> bool:
        error = self.exited_error()
        if error is not None:
            raise AssertionError(str(error))
        try:
            # The daemon's client: httpx.get would build an SSL context per call (20 ms of CPU), and
            # wait_healthy polls every 20 ms, so the test took a core from the daemon it waited for.
            response = self.client.get("/health", timeout=1.0)
        except httpx.HTTPError:
            return False
        return self.healthy(response)

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        wait_until(self._healthy, timeout_s, lambda: f"{self.name} answers /health:\n{self.log_tail()}")

    def send(self, signum: int) -> bool:
        assert self.running, f"{self.name} is not running"
        return super().send(signum)

    def kill(self) -> None:
        """SIGKILL (and SIGCONT, in case it is paused) and reap; a no-op if it is not running."""
        if self.process is not None and self.process.poll() is None:
            super().kill()
        self.reset_client()

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and the exit code, which must come within `timeout_s`."""
        self.send(signal.SIGTERM)
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout_s} s of SIGTERM:\n{self.log_tail()}"
            ) from None
        self.reset_client()
        return code

    # ---------------------------------------------------------------- HTTP

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.url,
                timeout=HTTP_TIMEOUT_S,
                trust_env=False,
                headers=self.headers,
                verify=self.verify,
            )
        return self._client

    def reset_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def get_json(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        assert response.status_code == 200, f"{self.name} GET {path}: {response.status_code} {response.text}"
        return response.json()

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get_json("/v1/status")
        return body

    def data(self, doc_id: str) -> dict[str, Any] | None:
        """The doc's JSON data, or None while this node does not hold it."""
        response = self.client.get(f"/v1/docs/{doc_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, (
            f"{self.name} GET {doc_id}: {response.status_code} {response.text}"
        )
        data: dict[str, Any] = response.json()["data"]
        return data

    def put(self, doc_id: str, key: str, value: Any) -> None:
        response = self.client.put(f"/v1/docs/{doc_id}/keys/{key}", json=value)
        assert response.status_code == 200, f"{self.name} PUT {doc_id} {key}: {response.text}"

    def all_doc_ids(self) -> list[str]:
        ids: list[str] = []
        after = ""
        while True:
            page = self.get_json("/v1/docs", limit=1000, after=after)
            ids.extend(page["docs"])
            if page["next"] is None:
                return ids
            after = page["next"]

    def peers_up(self) -> bool:
        peers = self.status()["peers"]
        return len(peers) == len(self.peers) and all(p["state"] == "alive" and p["node_id"] for p in peers)


class DaemonPool:
    """Daemons started under one directory; `close()` kills every one still running."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.daemons: list[Daemon] = []

    def new(self, name: str, **kwargs: Any) -> Daemon:
        daemon = Daemon(name, self.root / name, **kwargs)
        self.daemons.append(daemon)
        return daemon

    def cluster(self, names: Iterable[str], **kwargs: Any) -> list[Daemon]:
        """Daemons that list each other as peers, started together and healthy with all peers up."""
        return start_mesh([self.new(name, **kwargs) for name in names])

    def close(self) -> None:
        errors: list[str] = []
        for daemon in self.daemons:
            try:
                daemon.kill()
            except Exception as exc:
                errors.append(f"{daemon.name}: {exc!r}")
        assert not errors, errors


def start_all(daemons: Iterable[Daemon], *, isolated: bool = False) -> None:
    """Start the daemons in parallel and wait for all of them to be healthy."""
    started = list(daemons)
    for daemon in started:
        daemon.start(isolated=isolated)
    for daemon in started:
        daemon.wait_healthy()


def same_everywhere(daemons: Iterable[Daemon], doc_ids: Iterable[str]) -> bool:
    """Whether every daemon holds every doc with the same data and they agree on the Merkle root."""
    nodes = list(daemons)
    ids = list(doc_ids)
    for doc_id in ids:
        contents = [node.data(doc_id) for node in nodes]
        if contents[0] is None or any(content != contents[0] for content in contents):
            return False
    return len({node.status()["merkle_root"] for node in nodes}) == 1


def describe(daemons: Iterable[Daemon], doc_ids: Iterable[str]) -> str:
    nodes = list(daemons)
    ids = list(doc_ids)
    parts = []
    for node in nodes:
        status = node.status()
        docs = {doc_id: node.data(doc_id) for doc_id in ids}
        parts.append(f"{node.name}: root {status['merkle_root']} docs {json.dumps(docs, sort_keys=True)}")
    return "all nodes agree:\n" + "\n".join(parts)


def start_mesh(daemons: list[Daemon]) -> list[Daemon]:
    """Make `daemons` list each other as peers, start them together and wait until every peer is up."""
    for daemon in daemons:
        daemon.peers = [other.listen for other in daemons if other is not daemon]
    start_all(daemons)
    wait_until(
        lambda: all(d.peers_up() for d in daemons),
        START_TIMEOUT_S,
        lambda: "every peer is up: " + json.dumps([d.status()["peers"] for d in daemons]),
    )
    return daemons
