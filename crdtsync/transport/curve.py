"""CurveZMQ for the replication links: node key pairs, key files and the ZAP allowlist.

Every node has a Curve25519 key pair. Its ROUTER and PUB sockets are CURVE servers that accept
only clients whose public key is on the allowlist (checked by a ZAP handler, each refusal logged
and counted); its DEALER and SUB sockets are CURVE clients that must know the public key of each
peer they connect to. Traffic is encrypted and authenticated per connection, with nonces that make
replayed or altered messages fail (libzmq drops the connection).
"""

from __future__ import annotations

import logging
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth.thread

log = logging.getLogger("crdtsync.transport")

Z85_KEY_CHARS = 40
ZAP_DOMAIN = "crdtsync"


class CurveKeyError(ValueError):
    """A key file or key that cannot be used; the message names it."""


def check_key(key: str, what: str) -> bytes:
    encoded = key.strip().encode()
    if len(encoded) != Z85_KEY_CHARS:
        raise CurveKeyError(f"{what}: a Curve key is {Z85_KEY_CHARS} Z85 characters, got {len(encoded)}")
    try:
        zmq.utils.z85.decode(encoded)
    except (ValueError, KeyError):
        raise CurveKeyError(f"{what}: not a Z85-encoded key") from None
    return encoded


def generate_key_pair() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def write_key_file(path: str | Path, node_name: str) -> str:
    """Write a new key pair to `path` (mode 0600, refusing to overwrite); return the public key."""
    target = Path(path)
    public, secret = generate_key_pair()
    text = (
        f"# crdtsync node key pair for {node_name}. Keep this file secret; give peers only the public key.\n"
        f'public = "{public}"\nsecret = "{secret}"\n'
    )
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return public


def read_key_file(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a key file written by `crdtsync keygen`."""
    source = Path(path)
    try:
        with source.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise CurveKeyError(f"key file {source} does not exist (create one with `crdtsync keygen`)") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CurveKeyError(f"key file {source} cannot be read: {exc}") from None
    public, secret = data.get("public"), data.get("secret")
    if not isinstance(public, str) or not isinstance(secret, str):
        raise CurveKeyError(f"key file {source} must hold `public` and `secret` strings")
    public_key = check_key(public, f"{source}: public")
    secret_key = check_key(secret, f"{source}: secret")
    if zmq.curve_public(secret_key) != public_key:
        raise CurveKeyError(f"key file {source}: the public key does not belong to the secret key")
    return public_key, secret_key


@dataclass(frozen=True, slots=True)
class CurveConfig:
    """CurveZMQ settings of a node (see `docs/security.md`)."""

    key_file: str
    """This node's key pair, written by `crdtsync keygen`."""
    peer_keys: dict[str, str] = field(default_factory=dict)
    """The public key of each peer, by its listen address: needed to connect to it."""
    allowed_keys: list[str] = field(default_factory=list)
    """Further public keys allowed to connect to this node (peers listed above are allowed)."""


@dataclass(slots=True)
class CurveKeys:
    public: bytes
    secret: bytes
    peers: dict[str, bytes]
    allowed: frozenset[bytes]

    @classmethod
    def load(cls, config: CurveConfig) -> CurveKeys:
        public, secret = read_key_file(config.key_file)
        peers = {
            address: check_key(key, f"peer_keys[{address!r}]") for address, key in config.peer_keys.items()
        }
        extra = [check_key(key, f"allowed_keys[{index}]") for index, key in enumerate(config.allowed_keys)]
        return cls(public, secret, peers, frozenset([*peers.values(), *extra]))


class Allowlist:
    """ZAP credentials provider: a client may connect iff its public key is allowed."""

    def __init__(self, allowed: frozenset[bytes]) -> None:
        self.allowed = allowed
        self.refused = 0
        self._last_log = 0.0

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        self.refused += 1
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            self._last_log = now
            log.warning(
                "refused a replication connection from unknown key %s (%d refused so far)",
                key.decode(errors="replace"),
                self.refused,
            )
        return False


def start_authenticator(
    context: zmq.Context[zmq.Socket[bytes]], allowlist: Allowlist
) -> zmq.auth.thread.ThreadAuthenticator:
    authenticator = zmq.auth.thread.ThreadAuthenticator(context, log=logging.getLogger("crdtsync.zap"))
    authenticator.start()
    authenticator.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=allowlist)
    return authenticator


def make_server(sock: zmq.Socket[Any], keys: CurveKeys) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    sock.zap_domain = ZAP_DOMAIN.encode()


def set_client_keys(sock: zmq.Socket[Any], keys: CurveKeys, server_key: bytes) -> None:
    """Options a CURVE client connection uses; libzmq reads them at each `connect`."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = server_key
