"""The daemon's configuration: a TOML file, overridden key by key by command-line flags.

Every error names the key and what is wrong with it (`ConfigError`). `config.example.toml` at the
repository root lists every key with its default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from crdtsync.artifacts.transfer import ArtifactsConfig
from crdtsync.core.membership import MembershipConfig
from crdtsync.core.placement import PARTITIONS_DEFAULT, PlacementError, PlacementPolicy, PlacementRule
from crdtsync.core.replica import ReplicaConfig
from crdtsync.daemon.logs import LOG_FORMATS, LOG_LEVELS, LogFormat
from crdtsync.daemon.websocket import WebSocketConfig
from crdtsync.node import NodeConfig
from crdtsync.store.base import Durability, check_durability
from crdtsync.transport.curve import CurveConfig, CurveKeyError, CurveKeys
from crdtsync.transport.endpoint import parse_endpoint


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: str = "127.0.0.1:7480"
    """HOST:PORT of the HTTP API; localhost by default."""
    body_bytes_max: int = 4 * 1024 * 1024
    """Largest request body accepted (JSON or binary update)."""
    docs_page_max: int = 1000
    """Largest `limit` of a doc listing."""
    watchers_max: int = 4096
    """Concurrent `watch` streams (server-sent events) across all docs: each costs about 15 KB of
    daemon memory (measured, docs/consistency.md) and an open file, so 4096 take about 60 MB."""
    wait_ms_max: int = 30_000
    """Longest `wait_ms` a read may wait for its `min_state` token (docs/consistency.md)."""
    watch_keepalive_ms: int = 5_000
    """A comment line on an idle watch stream this often, so that proxies keep it open (>= 100)."""
    tokens_file: str = ""
    """TOML file of `[[token]]` entries (name, scope, sha256 of the token); empty: no tokens, the API
    is open to anyone who can reach `listen`."""
    tls_cert: str = ""
    """PEM certificate (chain) to serve HTTPS with; set both tls_cert and tls_key, or neither."""
    tls_key: str = ""
    """PEM private key (unencrypted) of `tls_cert`."""
    forward: bool = True
    """Forward a request about a doc this node does not hold to its nearest alive holder
    (docs/placement.md#forwarding); false: serve it here from a fetched copy, hand writes over."""
    forward_timeout_ms: int = 2_000
    """How long a forwarded request waits for the holder's answer (plus the request's `wait_ms`)
    before this node serves it itself."""


TokenScope = Literal["read", "write"]
TOKEN_SCOPES: tuple[TokenScope, ...] = ("read", "write")
TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token as the daemon knows it: never the token itself, only its SHA-256."""

    name: str
    scope: TokenScope
    sha256: bytes


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def token_entry(name: str, scope: TokenScope, token: str) -> str:
    """The `[[token]]` entry of a tokens file for `token`."""
    return f'[[token]]\nname = "{name}"\nscope = "{scope}"\nsha256 = "{token_digest(token).hex()}"\n'


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: LogFormat = "kv"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    node: NodeConfig
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    tokens: tuple[Token, ...] = ()
    """Read from `http.tokens_file`; empty: the API is open."""
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    """The y-websocket endpoint's limits (`[websocket]`)."""
    artifacts: ArtifactsConfig = field(default_factory=ArtifactsConfig)
    """Chunk transfer between nodes (`[artifacts]`: window, link caps; docs/artifacts.md)."""


_NODE_KEYS = {
    "node_id",
    "listen",
    "advertise",
    "peers",
    "publish",
    "publish_advertise",
    "source_host",
    "data_dir",
    "durability",
}
_TOP_KEYS = _NODE_KEYS | {
    "dc",
    "zone",
    "weight",
    "leave_on_stop",
    "http",
    "log",
    "replication",
    "membership",
    "security",
    "cluster",
    "placement",
    "websocket",
    "artifacts",
}
_PLACEMENT_KEYS = {"prefix", "rf"}
_SECURITY_KEYS = {"mode", "key_file", "peer_keys", "allowed_keys"}


def _security(raw: dict[str, Any]) -> CurveConfig | None:
    """The [security] table: `mode` must be chosen, "curve" (with a key file and the peers' public
    keys) or "plaintext" (tests and trusted networks only)."""
    table = raw.get("security")
    if table is None:
        raise ConfigError(
            'security.mode: required: "curve" (encrypted, authenticated links; see `crdtsync keygen`) '
            'or "plaintext" (only on a network where every host that can reach the ports is trusted)'
        )
    if not isinstance(table, dict):
        raise ConfigError("security: expected a table")
    for key in table:
        if key not in _SECURITY_KEYS:
            raise ConfigError(f"security.{key}: unknown key (known: {', '.join(sorted(_SECURITY_KEYS))})")
    mode = table.get("mode")
    if mode == "plaintext":
        extra = sorted(set(table) - {"mode"})
        if extra:
            raise ConfigError(f'security.{extra[0]}: only used with mode = "curve"')
        return None
    if mode != "curve":
        raise ConfigError(f'security.mode: must be "curve" or "plaintext", not {mode!r}')
    key_file = _typed("security.key_file", table.get("key_file"), str) if "key_file" in table else None
    if key_file is None:
        raise ConfigError(
            'security.key_file: required with mode = "curve" (create one with `crdtsync keygen`)'
        )
    peer_keys = _typed("security.peer_keys", table.get("peer_keys", {}), dict)
    allowed = _typed("security.allowed_keys", table.get("allowed_keys", []), list)
    config = CurveConfig(
        key_file=key_file,
        peer_keys={str(address): str(key) for address, key in peer_keys.items()},
        allowed_keys=[str(key) for key in allowed],
    )
    try:
        CurveKeys.load(config)
    except CurveKeyError as exc:
        raise ConfigError(f"security: {exc}") from None
    for address in config.peer_keys:
        try:
            parse_endpoint(address, "security.peer_keys")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return config


def _placement(raw: dict[str, Any]) -> PlacementPolicy:
    """`[cluster] partitions` and the `[[placement]]` rules (see docs/placement.md)."""
    cluster = raw.get("cluster", {})
    if not isinstance(cluster, dict):
        raise ConfigError("cluster: expected a table")
    for key in cluster:
        if key != "partitions":
            raise ConfigError(f"cluster.{key}: unknown key (known: partitions)")
    partitions = _typed("cluster.partitions", cluster.get("partitions", PARTITIONS_DEFAULT), int)
    entries = _typed("placement", raw.get("placement", []), list)
    rules = []
    for index, entry in enumerate(entries):
        where = f"placement[{index}]"
        _typed(where, entry, dict)
        for key in entry:
            if key not in _PLACEMENT_KEYS:
                raise ConfigError(f"{where}.{key}: unknown key (known: prefix, rf)")
        if "rf" not in entry:
            raise ConfigError(f'{where}.rf: required: a number, "all" or a table of datacenter = number')
        prefix = _typed(f"{where}.prefix", entry["prefix"], str) if "prefix" in entry else None
        rf = entry["rf"]
        if isinstance(rf, str) and rf != "all":
            raise ConfigError(
                f'{where}.rf: must be a number, "all" or a table of datacenter = number, not {rf!r}'
            )
        rules.append(PlacementRule(dict(rf) if isinstance(rf, dict) else rf, prefix))
    try:
        return PlacementPolicy(tuple(rules), partitions)
    except PlacementError as exc:
        raise ConfigError(f"placement: {exc}") from None


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) reaches only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_http_listen(value: str, key: str = "http.listen") -> tuple[str, int]:
    try:
        return parse_endpoint(value, key, scheme=None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _typed(key: str, value: Any, expected: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) and expected in (int, float, (int, float)):
        raise ConfigError(f"{key}: expected a number, got a boolean")
    if not isinstance(value, expected):
        names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
        raise ConfigError(f"{key}: expected {names}, got {type(value).__name__} {value!r}")
    return value


def _section(raw: dict[str, Any], name: str, cls: type[Any]) -> Any:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(fields))})")
        default = getattr(cls(), key)
        expected: type | tuple[type, ...] = (int, float) if isinstance(default, float) else type(default)
        values[key] = _typed(f"{name}.{key}", value, expected)
        if isinstance(default, (int, float)) and not isinstance(default, bool) and values[key] < 0:
            raise ConfigError(f"{name}.{key}: must not be negative")
    try:
        return cls(**values)
    except ValueError as exc:  # a check across fields, or of a field's range (ReplicaConfig's)
        raise ConfigError(f"{name}: {exc}") from None


def read_toml(path: str | Path, where: str) -> dict[str, Any]:
    """A TOML file's content; every failure is a ConfigError that starts with `where`."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} is not valid TOML (UTF-8): {exc}") from None


def load_tokens(path: str, key: str = "http.tokens_file") -> tuple[Token, ...]:
    """The tokens of a tokens file: `[[token]]` tables of `name`, `scope` (read or write) and
    `sha256` (hex of the SHA-256 of the token). Every error names `key`, the file and the entry."""
    where = f"{key}: {path}"
    raw = read_toml(path, where)
    for name in raw:
        if name != "token":
            raise ConfigError(f"{where}: {name}: unknown key (expected [[token]] tables)")
    entries = raw.get("token", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ConfigError(f"{where}: token: expected [[token]] tables")
    if not entries:
        raise ConfigError(
            f"{where} has no [[token]] entries; add one (crdtsync token --name NAME --scope read|write) "
            "or unset the key to run without tokens"
        )
    tokens: list[Token] = []
    for index, entry in enumerate(entries):
        at = f"{where}: token[{index}]"
        for field_name in entry:
            if field_name not in ("name", "scope", "sha256"):
                raise ConfigError(f"{at}.{field_name}: unknown key (known: name, scope, sha256)")
        for field_name in ("name", "scope", "sha256"):
            if field_name not in entry:
                raise ConfigError(f"{at}.{field_name}: required")
            _typed(f"{at}.{field_name}", entry[field_name], str)
        name, scope, digest = entry["name"], entry["scope"], entry["sha256"].lower()
        if not TOKEN_NAME_RE.match(name):
            raise ConfigError(f"{at}.name: {name!r} is not 1..64 of A-Z a-z 0-9 . _ -")
        if scope not in TOKEN_SCOPES:
            raise ConfigError(f"{at}.scope: must be read or write, not {scope!r}")
        if not _SHA256_RE.match(digest):
            raise ConfigError(
                f"{at}.sha256: expected 64 hex digits (the SHA-256 of the token), not {digest!r}"
            )
        for other in tokens:
            if other.name == name:
                raise ConfigError(f"{at}.name: {name!r} is used twice")
            if other.sha256.hex() == digest:
                raise ConfigError(f"{at}.sha256: the same token as {other.name!r}")
        tokens.append(Token(name=name, scope=scope, sha256=bytes.fromhex(digest)))
    return tuple(tokens)


def tls_context(http: HttpConfig) -> ssl.SSLContext | None:
    """The server's TLS context from `http.tls_cert` and `http.tls_key`; None when both are unset.
    Errors name the key."""
    if not http.tls_cert and not http.tls_key:
        return None
    if not http.tls_cert or not http.tls_key:
        missing, given = (
            ("http.tls_key", "http.tls_cert") if http.tls_cert else ("http.tls_cert", "http.tls_key")
        )
        raise ConfigError(f"{missing}: required when {given} is set (set both or neither)")
    for key, path in (("http.tls_cert", http.tls_cert), ("http.tls_key", http.tls_key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{key}: {path} cannot be read: {exc.strerror or exc}") from None
    try:
        ssl.create_default_context(cafile=http.tls_cert)
    except ssl.SSLError as exc:
        raise ConfigError(f"http.tls_cert: {http.tls_cert} is not a PEM certificate: {exc}") from None

    def no_password() -> str:
        raise ConfigError(f"http.tls_key: {http.tls_key} is encrypted; give the key unencrypted")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(http.tls_cert, http.tls_key, password=no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(
                f"http.tls_key: {http.tls_key} is not the private key of http.tls_cert {http.tls_cert}"
            ) from None
        raise ConfigError(f"http.tls_key: {http.tls_key} is not a PEM private key: {exc}") from None
    return context


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """`section.key=VALUE` (or `key=VALUE`) with VALUE in TOML syntax; a bare word is a string."""
    name, sep, value_text = text.partition("=")
    path = name.strip().split(".")
    if not sep or not all(path) or len(path) > 2:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE or SECTION.KEY=VALUE")
    try:
        value = tomllib.loads(f"v = {value_text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()
    return path, value


def load_config(
    path: str | Path | None, overrides: dict[str, Any], assignments: list[str] | None = None
) -> DaemonConfig:
    """Read `path` (TOML; None for flags only), then apply `assignments` (`--set section.key=value`,
    any key) and `overrides` (the named flags: node_id, dc, listen, advertise, peers, publish,
    publish_advertise, data_dir,
    durability, http_listen, log_level, log_format). Flags win over the file."""
    raw = _raw_config(path, overrides, assignments or [])
    node_id, listen, peers, durability = _node_keys(raw)
    replication = _section(raw, "replication", ReplicaConfig)
    membership = _section(raw, "membership", MembershipConfig)
    http, log, tokens = _http_and_log(raw)
    dc = _typed("dc", raw.get("dc", "default"), str)
    zone = _typed("zone", raw.get("zone", ""), str)
    leave_on_stop = _typed("leave_on_stop", raw.get("leave_on_stop", True), bool)
    weight = raw.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ConfigError(f"weight: expected a number, got {weight!r}")
    try:
        # NodeConfig checks node_id, the endpoints and dc (naming the key) before the security
        # section is read, whose key files would otherwise be the first complaint.
        node = NodeConfig(
            node_id=node_id,
            listen=listen,
            peers=list(peers),
            publish=raw.get("publish"),
            advertise=raw.get("advertise"),
            publish_advertise=raw.get("publish_advertise"),
            source_host=raw.get("source_host"),
            data_dir=raw.get("data_dir"),
            durability=durability,
            replication=replication,
            dc=dc,
            membership=membership,
            placement=_placement(raw),
            zone=zone,
            weight=float(weight),
            leave_on_close=leave_on_stop,
        )
        node = dataclasses.replace(node, curve=_security(raw))
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None
    return DaemonConfig(
        node=node, http=http, log=log, tokens=tokens, websocket=_websocket(raw), artifacts=_artifacts(raw)
    )


def _raw_config(path: str | Path | None, overrides: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """The config file's tables (no file: none), then the `--set` assignments, then the flags."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(path, f"config file {path}")
    for assignment in assignments:
        keys, value = parse_assignment(assignment)
        if len(keys) == 1:
            raw[keys[0]] = value
        else:
            table = raw.setdefault(keys[0], {})
            if not isinstance(table, dict):
                raise ConfigError(f"{keys[0]}: expected a table")
            table[keys[1]] = value
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    for key in ("http_listen", "log_level", "log_format"):
        if overrides.get(key) is not None:
            section, sub = key.split("_", 1)
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                raise ConfigError(f"{section}: expected a table")
            raw[section][sub] = overrides[key]
    for key in _NODE_KEYS | {"dc"}:
        value = overrides.get(key)
        if value is not None and value != []:
            raw[key] = value
    return raw


WEBSOCKET_FRAME_BYTES_MIN = 4096
"""A smaller frame bound would refuse the sync step 1 (a state vector) of a client of a doc with many
writers."""
WEBSOCKET_FRAME_BYTES_MAX = 1 << 30


def _artifacts(raw: dict[str, Any]) -> ArtifactsConfig:
    """The [artifacts] table: how chunks move between nodes, each value within its range."""
    try:
        config: ArtifactsConfig = _section(raw, "artifacts", ArtifactsConfig)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"artifacts: {exc}") from None
    return config


def _websocket(raw: dict[str, Any]) -> WebSocketConfig:
    """The [websocket] table: the y-websocket endpoint's limits, each within the range it works in."""
    config: WebSocketConfig = _section(raw, "websocket", WebSocketConfig)
    if not WEBSOCKET_FRAME_BYTES_MIN <= config.frame_bytes_max <= WEBSOCKET_FRAME_BYTES_MAX:
        # aiohttp takes 0 as "no limit": the bound must be explicit.
        raise ConfigError(
            f"websocket.frame_bytes_max: must be {WEBSOCKET_FRAME_BYTES_MIN}..{WEBSOCKET_FRAME_BYTES_MAX} "
            f"bytes, not {config.frame_bytes_max}"
        )
    if not config.frame_bytes_max <= config.receive_bytes_max <= WEBSOCKET_FRAME_BYTES_MAX:
        raise ConfigError(
            f"websocket.receive_bytes_max: must be websocket.frame_bytes_max ({config.frame_bytes_max})"
            f"..{WEBSOCKET_FRAME_BYTES_MAX} bytes, not {config.receive_bytes_max}"
        )
    if config.send_queue_max < 1:
        raise ConfigError(
            "websocket.send_queue_max: must be at least 1 (a message is queued before it is sent)"
        )
    if config.send_queue_bytes_max < config.frame_bytes_max:
        raise ConfigError(
            f"websocket.send_queue_bytes_max: must be at least websocket.frame_bytes_max "
            f"({config.frame_bytes_max}): a large sync answer is queued in messages of that size"
        )
    if config.close_timeout_s <= 0:
        raise ConfigError("websocket.close_timeout_s: must be more than 0 s")
    return config


def _node_keys(raw: dict[str, Any]) -> tuple[str, str, list[str], Durability]:
    """node_id (required), listen, peers and durability, with the types of publish and data_dir."""
    node_id = raw.get("node_id")
    if node_id is None:
        raise ConfigError("node_id: required (set it in the config file or with --node-id)")
    listen = raw.get("listen", "tcp://127.0.0.1:7400")
    peers = raw.get("peers", [])
    _typed("node_id", node_id, str)
    _typed("listen", listen, str)
    _typed("peers", peers, list)
    for index, peer in enumerate(peers):
        _typed(f"peers[{index}]", peer, str)
    for key in ("publish", "data_dir", "advertise", "publish_advertise", "source_host"):
        if raw.get(key) is not None:
            _typed(key, raw[key], str)
    try:
        durability = check_durability(raw.get("durability", "fsync"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return node_id, listen, peers, durability


def _http_and_log(raw: dict[str, Any]) -> tuple[HttpConfig, LogConfig, tuple[Token, ...]]:
    """The [http] and [log] tables, checked: the listen address, the tokens file, TLS, the log level
    and format."""
    http = _section(raw, "http", HttpConfig)
    log = _section(raw, "log", LogConfig)
    parse_http_listen(http.listen)
    tokens = load_tokens(http.tokens_file) if http.tokens_file else ()
    tls_context(http)
    if http.watch_keepalive_ms < 100:
        raise ConfigError("http.watch_keepalive_ms: must be at least 100 ms")
    if not 10 <= http.forward_timeout_ms <= 600_000:
        raise ConfigError("http.forward_timeout_ms: must be in 10..600000 ms")
    if log.level not in LOG_LEVELS:
        raise ConfigError(f"log.level: must be one of {', '.join(LOG_LEVELS)}, not {log.level!r}")
    if log.format not in LOG_FORMATS:
        raise ConfigError(f"log.format: must be json or kv, not {log.format!r}")
    return http, log, tokens
