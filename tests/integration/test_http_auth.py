"""Bearer tokens and TLS on the HTTP API of real `crdtsync serve` processes.

Three daemons start together: `locked` has a tokens file (a read token and a write token) and a
small body limit, `tls` has the same tokens and serves HTTPS with a self-signed certificate made by
openssl, `open` has no tokens. Every refusal is checked to leave the store unchanged (doc JSON, doc
list and Merkle root).
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from daemon_support import HTTP_TIMEOUT_S, Daemon, DaemonPool, start_all, wait_until
from prometheus_client.parser import text_string_to_metric_families
from pycrdt import Doc, Map

from crdtsync.cli import main

pytestmark = pytest.mark.integration

READ = secrets.token_urlsafe(32)
WRITE = secrets.token_urlsafe(32)
BODY_BYTES_MAX = 16 * 1024
DOC = "auth/doc"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (openssl; the venv has no `cryptography`)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def daemons(pool: DaemonPool) -> dict[str, Daemon]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    pool.root.mkdir(parents=True, exist_ok=True)
    cert, key = make_certificate(pool.root)
    tokens = pool.root / "tokens.toml"
    tokens.write_text(
        f'[[token]]\nname = "dash"\nscope = "read"\nsha256 = "{sha(READ)}"\n\n'
        f'[[token]]\nname = "ops"\nscope = "write"\nsha256 = "{sha(WRITE)}"\n'
    )
    locked = pool.new(
        "locked",
        http={"tokens_file": str(tokens), "body_bytes_max": BODY_BYTES_MAX},
        token=WRITE,
        replication={},
    )
    tls = pool.new(
        "tls",
        http={"tokens_file": str(tokens), "tls_cert": str(cert), "tls_key": str(key)},
        token=WRITE,
        cacert=str(cert),
        replication={},
    )
    open_ = pool.new("open", replication={})
    start_all([locked, tls, open_])
    for daemon in (locked, tls):
        daemon.put(DOC, "name", "before")
        daemon.put(DOC, "n", 1)
    return {"locked": locked, "tls": tls, "open": open_}


@pytest.fixture(scope="module")
def locked(daemons: dict[str, Daemon]) -> Daemon:
    return daemons["locked"]


@pytest.fixture(scope="module")
def tls(daemons: dict[str, Daemon]) -> Daemon:
    return daemons["tls"]


def client(
    daemon: Daemon, token: str | None = None, authorization: str | bytes | None = None
) -> httpx.Client:
    headers: dict[bytes, bytes] = {}
    if token is not None:
        headers[b"Authorization"] = f"Bearer {token}".encode()
    if authorization is not None:
        headers[b"Authorization"] = (
            authorization if isinstance(authorization, bytes) else authorization.encode()
        )
    return httpx.Client(
        base_url=daemon.url, timeout=HTTP_TIMEOUT_S, trust_env=False, headers=headers, verify=daemon.verify
    )


def snapshot(daemon: Daemon) -> tuple[list[str], dict[str, Any] | None, str]:
    """What a refused request must not change, read with the daemon's write token."""
    return daemon.all_doc_ids(), daemon.data(DOC), daemon.status()["merkle_root"]


def yjs_update(key: str, value: Any) -> bytes:
    doc: Doc[Any] = Doc()
    data: Map[Any] = Map()
    doc["data"] = data
    data[key] = value
    return doc.get_update()


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    code: str = body["error"]["code"]
    return code


def refused(daemon: Daemon) -> dict[str, float]:
    response = daemon.client.get("/metrics")
    assert response.status_code == 200, response.text
    text = response.text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "crdtsync_http_requests_refused"
        for sample in family.samples
        if sample.name == "crdtsync_http_requests_refused_total"
    }


def refusal_lines(daemon: Daemon, reason: str) -> list[str]:
    lines = daemon.log_text().splitlines()
    return [line for line in lines if "refused request" in line and f"reason={reason}" in line]


# Every route, with a body where it takes one: (method, path, keyword arguments for httpx).
READS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/metrics", {}),
    ("GET", "/v1/status", {}),
    ("GET", "/v1/docs", {}),
    ("GET", f"/v1/docs/{DOC}", {}),
    ("GET", f"/v1/docs/{DOC}/keys/name", {}),
    ("GET", f"/v1/docs/{DOC}/update", {}),
    ("GET", f"/v1/docs/{DOC}/watch", {}),
    ("GET", "/v1/no/such/route", {}),
]
WRITES: list[tuple[str, str, dict[str, Any]]] = [
    ("PUT", f"/v1/docs/{DOC}/keys/name", {"json": "after"}),
    ("PUT", "/v1/docs/auth/new/keys/k", {"json": 1}),
    ("PATCH", f"/v1/docs/{DOC}", {"json": {"name": "after", "extra": True}}),
    ("DELETE", f"/v1/docs/{DOC}/keys/n", {}),
    ("POST", f"/v1/docs/{DOC}/update", {"content": yjs_update("name", "after")}),
    ("POST", "/v1/docs/auth/other/update", {"content": yjs_update("k", 1)}),
    ("POST", "/v1/backup", {}),
    ("POST", "/v1/restore", {"content": b"SQLite format 3\x00" + bytes(1000)}),
]


# ------------------------------------------------------------------------------------------ tokens


@pytest.mark.parametrize("daemon_name", ["locked", "tls", "open"])
def test_health_needs_no_token(daemons: dict[str, Daemon], daemon_name: str) -> None:
    daemon = daemons[daemon_name]
    with client(daemon) as anonymous:
        response = anonymous.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "node_id": daemon.name}


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        f"Bearer {READ}x",
        f"Bearer {sha(WRITE)}",  # the digest from the tokens file is not a token
        f"Basic {WRITE}",
        "Bearer",
        f"{WRITE}",
        b"Bearer \xff\xfe" + WRITE.encode(),
    ],
    ids=["missing", "wrong", "digest", "basic", "empty", "no-scheme", "not-utf8"],
)
def test_no_or_a_wrong_token_gets_401_on_every_route_and_changes_nothing(
    locked: Daemon, authorization: str | bytes | None
) -> None:
    before = snapshot(locked)
    with client(locked, authorization=authorization) as anonymous:
        for method, path, kwargs in READS + WRITES:
            response = anonymous.request(method, path, **kwargs)
            assert response.status_code == 401, (method, path, response.text)
            assert error_code(response) == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert snapshot(locked) == before


def test_a_read_token_on_a_write_gets_403_and_changes_nothing(locked: Daemon) -> None:
    before = snapshot(locked)
    with client(locked, READ) as reader:
        for method, path, kwargs in WRITES:
            response = reader.request(method, path, **kwargs)
            assert response.status_code == 403, (method, path, response.text)
            assert error_code(response) == "forbidden"
            assert "dash" in response.json()["error"]["message"]
    assert snapshot(locked) == before


def test_a_read_token_reads_every_route(locked: Daemon) -> None:
    with client(locked, READ) as reader:
        for method, path, _ in READS:
            if path.endswith("/watch"):
                with reader.stream(method, path) as response:
                    assert response.status_code == 200
                    line = next(line for line in response.iter_lines() if line.startswith("data: "))
                    assert '"name": "before"' in line
                continue
            response = reader.request(method, path)
            expected = 404 if path == "/v1/no/such/route" else 200
            assert response.status_code == expected, (method, path, response.text)
        assert reader.get(f"/v1/docs/{DOC}").json()["data"] == {"name": "before", "n": 1}
        # The scheme is case-insensitive.
        assert reader.get("/v1/status", headers={"Authorization": f"bearer {READ}"}).status_code == 200


def test_a_write_token_writes(locked: Daemon) -> None:
    with client(locked, WRITE) as writer:
        assert writer.put("/v1/docs/auth/w/keys/a", json=1).status_code == 200
        assert writer.patch("/v1/docs/auth/w", json={"b": 2, "c": 3}).status_code == 200
        assert writer.delete("/v1/docs/auth/w/keys/c").status_code == 200
        assert writer.post("/v1/docs/auth/w2/update", content=yjs_update("y", "js")).status_code == 200
        backup = writer.post("/v1/backup")
        assert backup.status_code == 200 and backup.content.startswith(b"SQLite format 3\x00")
        restored = writer.post("/v1/restore", content=backup.content)
        assert restored.status_code == 200, restored.text
        assert writer.get("/v1/docs/auth/w").json()["data"] == {"a": 1, "b": 2}
        assert writer.get("/v1/docs/auth/w2").json()["data"] == {"y": "js"}


def test_a_body_over_the_limit_without_a_token_gets_401_not_413(locked: Daemon) -> None:
    with client(locked) as anonymous:
        response = anonymous.put(
            f"/v1/docs/{DOC}/keys/big", content=b'"' + b"x" * (2 * BODY_BYTES_MAX) + b'"'
        )
    assert response.status_code == 401
    with client(locked, WRITE) as writer:
        response = writer.put(f"/v1/docs/{DOC}/keys/big", content=b'"' + b"x" * (2 * BODY_BYTES_MAX) + b'"')
    assert response.status_code == 413


def test_refusals_are_counted_and_logged_at_most_once_a_second_per_reason(locked: Daemon) -> None:
    counts = refused(locked)
    assert set(counts) == {"unauthorized", "forbidden"}
    lines = {reason: len(refusal_lines(locked, reason)) for reason in counts}
    burst = 40
    start = time.monotonic()
    with client(locked) as anonymous, client(locked, READ) as reader:
        for _ in range(burst):
            assert anonymous.get("/v1/status").status_code == 401
            assert reader.delete(f"/v1/docs/{DOC}/keys/n").status_code == 403
    elapsed = time.monotonic() - start
    after = refused(locked)
    assert after == {reason: counts[reason] + burst for reason in counts}
    logged = {reason: len(refusal_lines(locked, reason)) - lines[reason] for reason in counts}
    for reason in counts:
        assert logged[reason] <= elapsed + 1, (reason, logged, elapsed)
    # A second later the next refusal is logged again, with how many were not.
    time.sleep(1.05)
    with client(locked) as anonymous:
        assert anonymous.get("/v1/status").status_code == 401
    wait_until(
        lambda: len(refusal_lines(locked, "unauthorized")) > lines["unauthorized"] + logged["unauthorized"],
        5.0,
        "the refusal after a quiet second is logged",
    )
    last = refusal_lines(locked, "unauthorized")[-1]
    assert "method=GET" in last and "path=/v1/status" in last and "refused_unlogged=" in last
    assert "refused_unlogged=0" not in last
    assert READ not in locked.log_text() and WRITE not in locked.log_text()


def test_without_tokens_the_api_is_open_and_serve_warns(daemons: dict[str, Daemon]) -> None:
    open_ = daemons["open"]
    with client(open_) as anonymous:
        assert anonymous.put("/v1/docs/open/doc/keys/k", json=1).status_code == 200
    assert refused(open_) == {"unauthorized": 0, "forbidden": 0}
    log = open_.log_text()
    assert "has no tokens" in log and "anyone who can reach" in log
    assert "has no tokens" not in daemons["locked"].log_text()


# ------------------------------------------------------------------------------------------ TLS


def test_the_api_answers_over_https_with_the_test_ca(tls: Daemon) -> None:
    assert tls.url.startswith("https://")
    with client(tls, READ) as reader:
        assert reader.get(f"/v1/docs/{DOC}").json()["data"] == {"name": "before", "n": 1}
    with client(tls) as anonymous:
        assert anonymous.get("/v1/status").status_code == 401
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(tls.url + "/health", trust_env=False, timeout=HTTP_TIMEOUT_S)
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls.url.replace("https://", "http://") + "/health", trust_env=False, timeout=HTTP_TIMEOUT_S)
    assert f"http=https://127.0.0.1:{tls.http_port}" in tls.log_text()


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="crdtsync", env=env, catch_exceptions=False)


def test_the_cli_works_over_https_with_cacert_and_token(tls: Daemon, tmp_path: Path) -> None:
    assert tls.cacert is not None
    common = ["--url", tls.url, "--cacert", tls.cacert]
    result = cli("put", *common, "--token", WRITE, "cli/doc", "k", '{"v": 1}')
    assert result.exit_code == 0, result.output
    env = {"CRDTSYNC_TOKEN": READ, "CRDTSYNC_CACERT": tls.cacert}
    result = cli("get", "--url", tls.url, "cli/doc", env=env)
    assert result.exit_code == 0, result.output
    assert '"v": 1' in result.stdout
    for args in (("status", "--json"), ("docs",), ("watch", "--count", "1", "cli/doc")):
        result = cli(args[0], *common, "--token", READ, *args[1:])
        assert result.exit_code == 0, (args, result.output)
    out = tmp_path / "backup.db"
    result = cli("backup", *common, "--token", WRITE, "--out", str(out))
    assert result.exit_code == 0, result.output
    result = cli("restore", *common, "--token", WRITE, str(out))
    assert result.exit_code == 0, result.output
    result = cli("del", *common, "--token", WRITE, "cli/doc", "k")
    assert result.exit_code == 0, result.output


def test_the_cli_reports_refusals_and_certificate_problems(tls: Daemon, tmp_path: Path) -> None:
    assert tls.cacert is not None
    common = ["--url", tls.url, "--cacert", tls.cacert]
    result = cli("get", *common, DOC)
    assert result.exit_code == 1 and "(401 unauthorized)" in result.stderr
    result = cli("put", *common, "--token", READ, DOC, "k", "1")
    assert result.exit_code == 1 and "(403 forbidden)" in result.stderr
    result = cli("backup", *common, "--token", READ, "--out", str(tmp_path / "b.db"))
    assert result.exit_code == 1 and "(403 forbidden)" in result.stderr
    assert not (tmp_path / "b.db").exists()
    result = cli("watch", *common, "--count", "1", DOC)
    assert result.exit_code == 1 and "(401 unauthorized)" in result.stderr
    result = cli("get", "--url", tls.url, "--token", READ, DOC)
    assert result.exit_code == 1 and "CERTIFICATE_VERIFY_FAILED" in result.stderr
    (tmp_path / "junk.pem").write_text("junk\n")
    result = cli("get", "--url", tls.url, "--token", READ, "--cacert", str(tmp_path / "junk.pem"), DOC)
    assert result.exit_code == 2 and "--cacert" in result.stderr


def test_serve_refuses_half_a_tls_config_naming_the_key(tls: Daemon) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "crdtsync",
            "serve",
            "--node-id",
            "x",
            "--set",
            f"http.tls_cert={tls.http['tls_cert']}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "configuration: http.tls_key: required when http.tls_cert is set" in done.stderr
