"""`load_config`: TOML files, flag overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from crdtsync.core.membership import MembershipConfig
from crdtsync.core.replica import ReplicaConfig
from crdtsync.daemon.config import (
    ConfigError,
    DaemonConfig,
    HttpConfig,
    LogConfig,
    load_config,
    parse_http_listen,
)
from crdtsync.daemon.websocket import WebSocketConfig

FULL = """
node_id = "n1"
dc = "eu-west"
listen = "tcp://10.0.0.1:7400"
peers = ["tcp://10.0.0.2:7400", "tcp://10.0.0.3:7401"]
publish = "tcp://10.0.0.1:7500"
data_dir = "/var/lib/crdtsync"
durability = "process"

[replication]
hello_interval_ms = 100
tick_interval_ms = 20.5
ae_interval_ms = 500
batch_deltas_max = 64
retransmit_enabled = false

[http]
listen = "0.0.0.0:8080"
body_bytes_max = 1024
docs_page_max = 10
watchers_max = 3

[log]
level = "debug"
format = "json"
"""

NO_OVERRIDES: dict[str, Any] = {
    "node_id": None,
    "dc": None,
    "listen": None,
    "peers": [],
    "publish": None,
    "advertise": None,
    "publish_advertise": None,
    "data_dir": None,
    "durability": None,
    "http_listen": None,
    "log_level": None,
    "log_format": None,
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "crdtsync.toml"
    path.write_text(text)
    return path


PLAINTEXT = ['security.mode="plaintext"']
"""Every test config chooses plaintext links explicitly, as a real one must choose (see the security tests)."""


def load(tmp_path: Path, text: str, **overrides: Any) -> DaemonConfig:
    assignments = [] if "[security]" in text else PLAINTEXT
    return load_config(write(tmp_path, text), {**NO_OVERRIDES, **overrides}, assignments)


def error(tmp_path: Path, text: str, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, text, **overrides)
    return str(raised.value)


# ------------------------------------------------------------------------------------------ values


def test_a_full_file_sets_every_section(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)
    node = config.node
    assert (node.node_id, config.node.dc, node.listen) == ("n1", "eu-west", "tcp://10.0.0.1:7400")
    assert node.peers == ["tcp://10.0.0.2:7400", "tcp://10.0.0.3:7401"]
    assert (node.publish, node.data_dir, node.durability) == (
        "tcp://10.0.0.1:7500",
        "/var/lib/crdtsync",
        "process",
    )
    assert node.replication == ReplicaConfig(
        hello_interval_ms=100,
        tick_interval_ms=20.5,
        ae_interval_ms=500,
        batch_deltas_max=64,
        retransmit_enabled=False,
    )
    assert config.http == HttpConfig(
        listen="0.0.0.0:8080", body_bytes_max=1024, docs_page_max=10, watchers_max=3
    )
    assert config.log == LogConfig(level="debug", format="json")


def test_flags_alone_give_the_defaults() -> None:
    config = load_config(None, {**NO_OVERRIDES, "node_id": "solo"}, PLAINTEXT)
    assert config.node.node_id == "solo"
    assert (config.node.listen, config.node.peers, config.node.publish) == ("tcp://127.0.0.1:7400", [], None)
    assert (config.node.data_dir, config.node.durability) == (None, "fsync")
    assert config.node.replication == ReplicaConfig()
    assert (config.node.dc, config.http, config.log) == ("default", HttpConfig(), LogConfig())


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        FULL,
        node_id="n9",
        dc="us-east",
        listen="tcp://127.0.0.1:9400",
        peers=["tcp://127.0.0.1:9401"],
        publish="tcp://127.0.0.1:9500",
        data_dir="/tmp/other",
        durability="none",
        http_listen="127.0.0.1:9480",
        log_level="warning",
        log_format="kv",
    )
    node = config.node
    assert (node.node_id, config.node.dc, node.listen, node.peers) == (
        "n9",
        "us-east",
        "tcp://127.0.0.1:9400",
        ["tcp://127.0.0.1:9401"],
    )
    assert (node.publish, node.data_dir, node.durability) == ("tcp://127.0.0.1:9500", "/tmp/other", "none")
    assert config.http.listen == "127.0.0.1:9480"
    assert config.http.body_bytes_max == 1024  # the rest of [http] still comes from the file
    assert config.log == LogConfig(level="warning", format="kv")
    assert node.replication.hello_interval_ms == 100


def test_unset_flags_and_no_peer_flags_keep_the_file_values(tmp_path: Path) -> None:
    config = load(tmp_path, FULL, peers=[], node_id=None)
    assert config.node.node_id == "n1"
    assert config.node.peers == ["tcp://10.0.0.2:7400", "tcp://10.0.0.3:7401"]


def test_http_and_log_flags_work_without_those_tables(tmp_path: Path) -> None:
    config = load(tmp_path, 'node_id = "n"\n', http_listen="[::1]:7481", log_level="error", log_format="json")
    assert config.http.listen == "[::1]:7481"
    assert config.log == LogConfig(level="error", format="json")


def test_replication_float_fields_take_integers_and_floats(tmp_path: Path) -> None:
    config = load(tmp_path, 'node_id = "n"\n[replication]\ncausal_wait_ms = 2000\nlinger_ms = 0.5\n')
    assert config.node.replication.causal_wait_ms == 2000
    assert config.node.replication.linger_ms == 0.5


def test_parse_http_listen() -> None:
    assert parse_http_listen("127.0.0.1:7480") == ("127.0.0.1", 7480)
    assert parse_http_listen("[::1]:80") == ("::1", 80)
    for bad in ("7480", ":7480", "host:", "host:0", "host:65536", "host:http"):
        with pytest.raises(ConfigError, match=r"^http\.listen: "):
            parse_http_listen(bad)


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('node_id = "n"\ncolour = "blue"\n', "colour: unknown key"),
        ('node_id = "n"\n[replication]\nhello_ms = 1\n', "replication.hello_ms: unknown key"),
        ('node_id = "n"\n[http]\nport = 1\n', "http.port: unknown key"),
        ('node_id = "n"\n[log]\ncolor = true\n', "log.color: unknown key"),
        ('node_id = "n"\n[store]\npath = "x"\n', "store: unknown key"),
    ],
)
def test_unknown_keys_are_named(tmp_path: Path, text: str, key: str) -> None:
    assert error(tmp_path, text).startswith(key)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("node_id = 1\n", "node_id: expected str"),
        ('node_id = "n"\nlisten = 7400\n', "listen: expected str"),
        ('node_id = "n"\npeers = "tcp://127.0.0.1:7401"\n', "peers: expected list"),
        ('node_id = "n"\npeers = ["tcp://127.0.0.1:7401", 7402]\n', "peers[1]: expected str"),
        ('node_id = "n"\npublish = 7500\n', "publish: expected str"),
        ('node_id = "n"\ndata_dir = false\n', "data_dir: expected str"),
        ('node_id = "n"\ndc = ["a"]\n', "dc: expected str"),
        ('node_id = "n"\ndurability = "always"\n', "durability must be fsync, process or none"),
        ('node_id = "n"\nreplication = 5\n', "replication: expected a table"),
        (
            'node_id = "n"\n[replication]\ntick_interval_ms = "fast"\n',
            "replication.tick_interval_ms: expected",
        ),
        (
            'node_id = "n"\n[replication]\nhello_interval_ms = true\n',
            "replication.hello_interval_ms: expected a number",
        ),
        (
            'node_id = "n"\n[replication]\nbatch_deltas_max = 1.5\n',
            "replication.batch_deltas_max: expected int",
        ),
        (
            'node_id = "n"\n[replication]\nretransmit_enabled = 1\n',
            "replication.retransmit_enabled: expected bool",
        ),
        (
            'node_id = "n"\n[replication]\nae_interval_ms = -1\n',
            "replication.ae_interval_ms: must not be negative",
        ),
        ('node_id = "n"\nhttp = "127.0.0.1:80"\n', "http: expected a table"),
        ('node_id = "n"\n[http]\nbody_bytes_max = "1MB"\n', "http.body_bytes_max: expected int"),
        ('node_id = "n"\n[http]\nwatchers_max = -3\n', "http.watchers_max: must not be negative"),
        ('node_id = "n"\n[http]\nlisten = "localhost"\n', "http.listen: "),
        ('node_id = "n"\n[http]\nlisten = "localhost:99999"\n', "http.listen: "),
        ('node_id = "n"\nlisten = "127.0.0.1:7400"\n', "listen: '127.0.0.1:7400' is not tcp://HOST:PORT"),
        (
            'node_id = "n"\npeers = ["tcp://h:1", "tcp://h:0"]\n',
            "peers[1]: 'tcp://h:0' is not tcp://HOST:PORT",
        ),
        ('node_id = "n"\npublish = "tcp://h:port"\n', "publish: 'tcp://h:port' is not tcp://HOST:PORT"),
        ('node_id = "n"\n[log]\nlevel = "verbose"\n', "log.level: must be one of"),
        ('node_id = "n"\n[log]\nformat = "xml"\n', "log.format: must be json or kv"),
        ('node_id = "n"\n[log]\nlevel = 10\n', "log.level: expected str"),
    ],
)
def test_wrong_types_and_values_are_named(tmp_path: Path, text: str, key: str) -> None:
    assert error(tmp_path, text).startswith(key)


def test_a_table_flag_over_a_non_table_is_named(tmp_path: Path) -> None:
    assert error(tmp_path, 'node_id = "n"\nlog = "debug"\n', log_level="info").startswith(
        "log: expected a table"
    )


def test_missing_node_id_is_named(tmp_path: Path) -> None:
    assert error(tmp_path, 'listen = "tcp://127.0.0.1:7400"\n').startswith("node_id: required")
    with pytest.raises(ConfigError, match=r"^node_id: required"):
        load_config(None, dict(NO_OVERRIDES))


@pytest.mark.parametrize("node_id", ["", "x" * 65])
def test_a_node_id_of_bad_length_is_named(tmp_path: Path, node_id: str) -> None:
    assert "node_id" in error(tmp_path, f'node_id = "{node_id}"\n')


@pytest.mark.parametrize(
    ("text", "overrides", "key"),
    [
        ('node_id = "n"\nlisten = "127.0.0.1:7400"\n', {}, "listen: "),
        ('node_id = "n"\nlisten = "tcp://127.0.0.1"\n', {}, "listen: "),
        ('node_id = "n"\nlisten = "udp://127.0.0.1:7400"\n', {}, "listen: "),
        ('node_id = "n"\nlisten = "tcp://127.0.0.1:port"\n', {}, "listen: "),
        ('node_id = "n"\npeers = ["tcp://127.0.0.1:7401", "tcp://:7402"]\n', {}, "peers[1]: "),
        ('node_id = "n"\n', {"listen": "tcp://127.0.0.1:99999"}, "listen: "),
        ('node_id = "n"\n', {"peers": ["http://127.0.0.1:7401"]}, "peers[0]: "),
    ],
)
def test_bad_endpoints_are_named(tmp_path: Path, text: str, overrides: dict[str, Any], key: str) -> None:
    assert error(tmp_path, text, **overrides).startswith(key)


def test_a_bad_publish_endpoint_is_named(tmp_path: Path) -> None:
    # Regression: a bad `publish` endpoint used to be reported without naming the key.
    assert error(tmp_path, 'node_id = "n"\npublish = "127.0.0.1:7500"\n').startswith("publish: ")


def test_file_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", dict(NO_OVERRIDES))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path, dict(NO_OVERRIDES))
    assert "is not valid TOML" in error(tmp_path, 'node_id = "n\n')


def test_the_example_config_loads_and_lists_every_key_with_its_default() -> None:
    """config.example.toml is documentation: it must load, and its [replication] and [membership]
    sections must name every field of the dataclasses with the default value."""
    path = Path(__file__).resolve().parents[2] / "config.example.toml"
    config = load_config(path, NO_OVERRIDES, [])
    assert config.node.replication == ReplicaConfig()
    assert config.node.membership == MembershipConfig()
    assert config.websocket == WebSocketConfig()
    raw = tomllib.loads(path.read_text())
    for section, cls in (
        ("replication", ReplicaConfig),
        ("membership", MembershipConfig),
        ("websocket", WebSocketConfig),
    ):
        assert list(raw[section]) == [field.name for field in dataclasses.fields(cls)], section


# ------------------------------------------------------------------------------------------ placement

PLACEMENT = """
node_id = "n"
[cluster]
partitions = 1024

[[placement]]
prefix = "checkpoints/"
rf = { dc1 = 2, dc2 = 1 }

[[placement]]
prefix = "models/"
rf = "all"

[[placement]]
rf = 2
"""


def test_placement_rules_and_partitions_load_in_order(tmp_path: Path) -> None:
    policy = load(tmp_path, PLACEMENT).node.placement
    assert policy.partitions == 1024
    assert [(rule.prefix, rule.rf) for rule in policy.rules] == [
        ("checkpoints/", {"dc1": 2, "dc2": 1}),
        ("models/", "all"),
        (None, 2),
    ]
    assert policy.rule_for("models/llama").rf == "all" and policy.rule_for("flags/x").rf == 2


def test_without_placement_docs_have_three_replicas_in_every_datacenter(tmp_path: Path) -> None:
    policy = load(tmp_path, 'node_id = "n"\n').node.placement
    assert (policy.partitions, policy.rules, policy.default.rf) == (4096, (), 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('node_id = "n"\n[cluster]\nshards = 3\n', "cluster.shards: unknown key"),
        ('node_id = "n"\n[cluster]\npartitions = "many"\n', "cluster.partitions: expected int"),
        ('node_id = "n"\n[cluster]\npartitions = 0\n', "placement: partitions must be in 1..65536"),
        ('node_id = "n"\n[[placement]]\nprefix = "a/"\n', "placement[0].rf: required"),
        ('node_id = "n"\n[[placement]]\nrf = "most"\n', "placement[0].rf: must be a number"),
        ('node_id = "n"\n[[placement]]\nrf = 2\nzone = "a"\n', "placement[0].zone: unknown key"),
        (
            'node_id = "n"\n[[placement]]\nrf = 1\n[[placement]]\nrf = 2\n',
            "placement: only one placement rule",
        ),
        ('node_id = "n"\n[[placement]]\nrf = 1.5\n', "placement: placement rule 1: rf must be"),
        ('node_id = "n"\n[[placement]]\nrf = { dc1 = -1 }\n', "placement: placement rule 1: a replica count"),
        ('node_id = "n"\nplacement = 3\n', "placement: expected list"),
    ],
)
def test_bad_placement_is_named(tmp_path: Path, text: str, message: str) -> None:
    assert error(tmp_path, text).startswith(message)


# ------------------------------------------------------------------------------------------ advertise


def test_a_wildcard_listen_needs_an_advertised_address(tmp_path: Path) -> None:
    text = 'node_id = "n"\nlisten = "tcp://0.0.0.0:7400"\n'
    assert error(tmp_path, text).startswith("listen: 'tcp://0.0.0.0:7400' binds every interface")
    node = load(
        tmp_path, text + 'advertise = "tcp://10.0.0.5:7400"\npublish_advertise = "tcp://10.0.0.5:7500"\n'
    ).node
    assert (node.listen, node.advertised, node.publish_advertise) == (
        "tcp://0.0.0.0:7400",
        "tcp://10.0.0.5:7400",
        "tcp://10.0.0.5:7500",
    )
    flagged = load(tmp_path, text, advertise="tcp://10.0.0.6:7400").node
    assert flagged.advertised == "tcp://10.0.0.6:7400"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'node_id = "n"\nadvertise = "tcp://0.0.0.0:7400"\n',
            "advertise: 'tcp://0.0.0.0:7400' binds every interface",
        ),
        ('node_id = "n"\nadvertise = "10.0.0.5:7400"\n', "advertise: '10.0.0.5:7400' is not tcp://HOST:PORT"),
        (
            'node_id = "n"\npublish_advertise = "tcp://*:7500"\n',
            "publish_advertise: 'tcp://*:7500' binds every",
        ),
        ('node_id = "n"\nadvertise = 7400\n', "advertise: expected str"),
    ],
)
def test_bad_advertised_addresses_are_named(tmp_path: Path, text: str, message: str) -> None:
    assert error(tmp_path, text).startswith(message)


# ------------------------------------------------------------------------------------------ websocket


def test_the_websocket_limits_load(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        'node_id = "n"\n[websocket]\nframe_bytes_max = 65536\nsend_queue_max = 8\n'
        "send_queue_bytes_max = 65536\nconnections_max = 0\nlinger_s = 0\nclose_timeout_s = 0.5\n"
        "compress = true\nreceive_bytes_max = 131072\n",
    )
    assert config.websocket == WebSocketConfig(
        frame_bytes_max=65536,
        receive_bytes_max=131072,
        send_queue_max=8,
        send_queue_bytes_max=65536,
        connections_max=0,
        linger_s=0.0,
        close_timeout_s=0.5,
        compress=True,
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("frame_bytes_max = 0", "websocket.frame_bytes_max: must be 4096..1073741824 bytes, not 0"),
        ("frame_bytes_max = 2147483648", "websocket.frame_bytes_max: must be 4096..1073741824 bytes"),
        ('frame_bytes_max = "1MiB"', "websocket.frame_bytes_max: expected int"),
        (
            "frame_bytes_max = 65536\nreceive_bytes_max = 4096",
            "websocket.receive_bytes_max: must be websocket.frame_bytes_max (65536)..1073741824 bytes, not 4096",
        ),
        ("receive_bytes_max = 2147483648", "websocket.receive_bytes_max: must be websocket.frame_bytes_max"),
        ("send_queue_max = 0", "websocket.send_queue_max: must be at least 1"),
        (
            "frame_bytes_max = 65536\nsend_queue_bytes_max = 4096",
            "websocket.send_queue_bytes_max: must be at least websocket.frame_bytes_max (65536)",
        ),
        ("connections_max = -1", "websocket.connections_max: must not be negative"),
        ("linger_s = -1", "websocket.linger_s: must not be negative"),
        ("linger_s = true", "websocket.linger_s: expected a number, got a boolean"),
        ("close_timeout_s = 0", "websocket.close_timeout_s: must be more than 0 s"),
        ("compress = 1", "websocket.compress: expected bool"),
        ("queue = 1", "websocket.queue: unknown key (known: close_timeout_s, compress, connections_max,"),
    ],
)
def test_bad_websocket_limits_are_named(tmp_path: Path, table: str, message: str) -> None:
    assert error(tmp_path, f'node_id = "n"\n[websocket]\n{table}\n').startswith(message)
