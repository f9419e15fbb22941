"""The one parser of network addresses: replication endpoints (`tcp://HOST:PORT`) and the HTTP
API's `HOST:PORT`, used by `NodeConfig`, the daemon's configuration, the HTTP server and the
ZeroMQ transport alike, with one error message that names the setting."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def parse_endpoint(value: str, key: str = "endpoint", *, scheme: str | None = "tcp") -> tuple[str, int]:
    """`tcp://HOST:PORT` -> (HOST, PORT); with `scheme=None`, `HOST:PORT` -> (HOST, PORT). HOST may
    be a bracketed IPv6 address (returned without its brackets).

    Raises ValueError `KEY: 'VALUE' is not tcp://HOST:PORT with a port in 1..65535` for anything else.
    """
    form = "HOST:PORT" if scheme is None else f"{scheme}://HOST:PORT"
    parts = urlsplit(value if scheme is not None else "//" + value)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of 0..65535
        port = None
    if (
        parts.scheme != (scheme or "")
        or not parts.hostname
        or port is None
        or not 0 < port < 65536
        or parts.path not in ("", "/" if scheme is not None else "")
        or "@" in parts.netloc
        or parts.query
        or parts.fragment
    ):
        raise ValueError(f"{key}: {value!r} is not {form} with a port in 1..65535")
    return parts.hostname, port


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "*"})
"""Hosts that bind every interface: fine to bind, meaningless to advertise."""


def is_wildcard(endpoint: str) -> bool:
    """Whether `tcp://HOST:PORT` binds every interface (HOST 0.0.0.0, :: or *)."""
    return parse_endpoint(endpoint)[0] in WILDCARD_HOSTS


def with_host(endpoint: str, host: str) -> str:
    """`endpoint` (`tcp://HOST:PORT`) with its host replaced (IPv6 hosts bracketed)."""
    _old, port = parse_endpoint(endpoint)
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def check_source_host(value: str, key: str = "source_host") -> str:
    """`value` if it is one IPv4 or IPv6 address (no brackets, not a wildcard): what outgoing
    connections may bind as their source. Raises ValueError naming `key` otherwise."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{key}: {value!r} is not an IPv4 or IPv6 address") from None
    if address.is_unspecified:
        raise ValueError(f"{key}: {value!r} binds every interface; give one local address")
    return value
