"""The [http] security keys: `tokens_file` (bearer tokens kept as SHA-256) and `tls_cert`/`tls_key`,
their errors (each names the key), and `crdtsync token`, which makes a token and its entry."""

from __future__ import annotations

import hashlib
import json
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crdtsync.cli import main
from crdtsync.daemon.config import (
    ConfigError,
    DaemonConfig,
    Token,
    load_config,
    load_tokens,
    tls_context,
    token_entry,
)

READ_TOKEN = "read-secret"
WRITE_TOKEN = "write-secret"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


TOKENS = f"""
[[token]]
name = "dash"
scope = "read"
sha256 = "{sha(READ_TOKEN)}"

[[token]]
name = "ops.1"
scope = "write"
sha256 = "{sha(WRITE_TOKEN).upper()}"
"""


def load(tmp_path: Path, http: str, *assignments: str) -> DaemonConfig:
    path = tmp_path / "crdtsync.toml"
    path.write_text(f'node_id = "n"\n[http]\n{http}\n')
    return load_config(path, {}, ['security.mode="plaintext"', *assignments])


def error(tmp_path: Path, http: str, *assignments: str) -> str:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, http, *assignments)
    return str(raised.value)


def tokens_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ tokens


def test_no_tokens_file_means_no_tokens(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert (config.http.tokens_file, config.tokens) == ("", ())


def test_a_tokens_file_gives_the_tokens_by_digest(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, TOKENS)
    config = load(tmp_path, f'tokens_file = "{path}"')
    assert config.tokens == (
        Token(name="dash", scope="read", sha256=hashlib.sha256(READ_TOKEN.encode()).digest()),
        Token(name="ops.1", scope="write", sha256=hashlib.sha256(WRITE_TOKEN.encode()).digest()),
    )


def test_the_tokens_file_can_be_set_with_set(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, TOKENS)
    config = load(tmp_path, "", f"http.tokens_file={path}")
    assert [token.name for token in config.tokens] == ["dash", "ops.1"]


ENTRY = 'name = "a"\nscope = "read"\nsha256 = "' + "0" * 64 + '"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('node_id = "x"\n', ": node_id: unknown key (expected [[token]] tables)"),
        ('token = "abc"\n', ": token: expected [[token]] tables"),
        ("", " has no [[token]] entries"),
        ("token = []\n", " has no [[token]] entries"),
        ("[[token]]\n" + ENTRY.replace('name = "a"\n', ""), ": token[0].name: required"),
        ("[[token]]\n" + ENTRY + "secret = true\n", ": token[0].secret: unknown key"),
        ("[[token]]\n" + ENTRY.replace('"read"', '"admin"'), ": token[0].scope: must be read or write"),
        ("[[token]]\n" + ENTRY.replace('"read"', "1"), ": token[0].scope: expected str"),
        ("[[token]]\n" + ENTRY.replace('"a"', '"a b"'), ": token[0].name: 'a b' is not 1..64"),
        ("[[token]]\n" + ENTRY.replace("0" * 64, "0" * 63), ": token[0].sha256: expected 64 hex digits"),
        ("[[token]]\n" + ENTRY.replace("0" * 64, "g" * 64), ": token[0].sha256: expected 64 hex digits"),
        ("[[token]]\n" + ENTRY + "[[token]]\n" + ENTRY.replace("0" * 64, "1" * 64), ": token[1].name: 'a'"),
        ("[[token]]\n" + ENTRY + "[[token]]\n" + ENTRY.replace('"a"', '"b"'), ": token[1].sha256: the same"),
        ("[[token\n", " is not valid TOML"),
    ],
)
def test_tokens_file_errors_name_the_key_and_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tokens_file(tmp_path, text)
    assert error(tmp_path, f'tokens_file = "{path}"').startswith(f"http.tokens_file: {path}{message}")


def test_a_missing_tokens_file_is_named(tmp_path: Path) -> None:
    assert error(tmp_path, f'tokens_file = "{tmp_path / "nope.toml"}"').startswith("http.tokens_file: ")
    assert "does not exist" in error(tmp_path, f'tokens_file = "{tmp_path / "nope.toml"}"')
    assert error(tmp_path, "tokens_file = 3").startswith("http.tokens_file: expected str")


# ------------------------------------------------------------------------------------------ TLS


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate and its key, another key, an encrypted key and a junk file."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    root = tmp_path_factory.mktemp("pems")
    paths = {name: root / f"{name}.pem" for name in ("cert", "key", "other", "encrypted", "junk")}
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(paths["key"]), "-out", str(paths["cert"]),
    )  # fmt: skip
    openssl("genrsa", "-out", str(paths["other"]), "2048")
    openssl("genrsa", "-aes128", "-passout", "pass:secret", "-out", str(paths["encrypted"]), "2048")
    paths["junk"].write_text("not a PEM file\n")
    return paths


def test_no_tls_keys_means_plain_http(tmp_path: Path) -> None:
    assert tls_context(load(tmp_path, "").http) is None


def test_a_certificate_and_its_key_give_a_server_context(tmp_path: Path, pems: dict[str, Path]) -> None:
    config = load(tmp_path, f'tls_cert = "{pems["cert"]}"\ntls_key = "{pems["key"]}"')
    assert (config.http.tls_cert, config.http.tls_key) == (str(pems["cert"]), str(pems["key"]))
    context = tls_context(config.http)
    assert context is not None
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("cert", None, "http.tls_key: required when http.tls_cert is set"),
        (None, "key", "http.tls_cert: required when http.tls_key is set"),
        ("missing", "key", "http.tls_cert: "),
        ("cert", "missing", "http.tls_key: "),
        ("junk", "key", "http.tls_cert: "),
        ("key", "key", "http.tls_cert: "),
        ("cert", "junk", "http.tls_key: "),
        ("cert", "cert", "http.tls_key: "),
        ("cert", "other", "http.tls_key: "),
        ("cert", "encrypted", "http.tls_key: "),
    ],
)
def test_tls_errors_name_the_key(
    tmp_path: Path, pems: dict[str, Path], cert: str | None, key: str | None, message: str
) -> None:
    def path(name: str) -> Path:
        return tmp_path / "missing.pem" if name == "missing" else pems[name]

    lines = []
    if cert is not None:
        lines.append(f'tls_cert = "{path(cert)}"')
    if key is not None:
        lines.append(f'tls_key = "{path(key)}"')
    text = error(tmp_path, "\n".join(lines))
    assert text.startswith(message), text
    if key == "other":
        assert "is not the private key of http.tls_cert" in text
    if key == "encrypted":
        assert "is encrypted" in text


# ------------------------------------------------------------------------------------------ crdtsync token


def test_token_command_prints_a_token_and_the_entry_that_grants_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["token", "--name", "ops", "--scope", "write"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    secret = lines[1].strip()
    assert len(secret) >= 43
    entry = result.stdout[result.stdout.index("[[token]]") :]
    assert entry == token_entry("ops", "write", secret)
    assert secret not in entry
    (token,) = load_tokens(str(tokens_file(tmp_path, entry)))
    assert token == Token(name="ops", scope="write", sha256=hashlib.sha256(secret.encode()).digest())


def test_token_command_json_and_fresh_tokens() -> None:
    answers: list[dict[str, Any]] = []
    for _ in range(2):
        result = CliRunner().invoke(main, ["token", "--name", "dash", "--scope", "read", "--json"])
        assert result.exit_code == 0, result.output
        answers.append(json.loads(result.stdout))
    assert answers[0]["token"] != answers[1]["token"]
    for answer in answers:
        assert (answer["name"], answer["scope"]) == ("dash", "read")
        assert answer["sha256"] == sha(answer["token"])


def test_token_command_refuses_a_bad_name() -> None:
    result = CliRunner().invoke(main, ["token", "--name", "a b", "--scope", "read"])
    assert result.exit_code == 2
    assert "--name" in result.stderr
