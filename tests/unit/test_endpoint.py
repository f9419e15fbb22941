"""`parse_endpoint`: the one parser of `tcp://HOST:PORT` and the HTTP API's `HOST:PORT`."""

from __future__ import annotations

import re

import pytest

from crdtsync import NodeConfig
from crdtsync.transport.endpoint import parse_endpoint


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tcp://127.0.0.1:7400", ("127.0.0.1", 7400)),
        ("tcp://node-a.example:1", ("node-a.example", 1)),
        ("tcp://[::1]:65535", ("::1", 65535)),
        ("tcp://10.0.0.1:7400/", ("10.0.0.1", 7400)),
    ],
)
def test_replication_endpoints(value: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "127.0.0.1:7400",
        "http://127.0.0.1:7400",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:",
        "tcp://:7400",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:65536",
        "tcp://127.0.0.1:port",
        "tcp://127.0.0.1:*",
        "tcp://127.0.0.1:7400/path",
        "tcp://127.0.0.1:7400?x=1",
        "tcp://user@127.0.0.1:7400",
        "",
    ],
)
def test_anything_else_is_refused_with_one_message_naming_the_key(value: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_endpoint(value, "peers[2]")
    assert str(caught.value) == f"peers[2]: {value!r} is not tcp://HOST:PORT with a port in 1..65535"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:7480", ("127.0.0.1", 7480)), ("[::1]:80", ("::1", 80)), ("localhost:1", ("localhost", 1))],
)
def test_http_addresses_have_no_scheme(value: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(value, "http.listen", scheme=None) == expected


@pytest.mark.parametrize(
    "value", ["7480", ":7480", "host:", "host:0", "host:65536", "tcp://h:1", "h:80/", "h:80?x"]
)
def test_bad_http_addresses_say_host_port(value: str) -> None:
    with pytest.raises(ValueError, match=r"^http\.listen: .* is not HOST:PORT with a port in 1\.\.65535$"):
        parse_endpoint(value, "http.listen", scheme=None)


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"listen": "127.0.0.1:7400"}, "listen"),
        ({"peers": ["tcp://127.0.0.1:7401", "tcp://127.0.0.1:0"]}, "peers[1]"),
        ({"publish": "tcp://127.0.0.1:x"}, "publish"),
    ],
)
def test_node_config_names_the_field_of_a_bad_endpoint(fields: dict[str, object], key: str) -> None:
    config: dict[str, object] = {"node_id": "a", "listen": "tcp://127.0.0.1:7400", **fields}
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}: .* is not tcp://HOST:PORT"):
        NodeConfig(**config)  # type: ignore[arg-type]
