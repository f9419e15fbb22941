"""CurveZMQ replication links over real sockets: only allowlisted keys can read or write, and
altered traffic never reaches the decoder."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
import zmq
from pycrdt import Doc, Map
from zmq_support import free_endpoint, wait_until

from crdtsync import CurveConfig, CurveKeyError, Node, NodeConfig, ReplicaConfig
from crdtsync.core import wire
from crdtsync.core.placement import PLACEMENT_VERSION
from crdtsync.transport.curve import read_key_file, write_key_file
from crdtsync.transport.endpoint import parse_endpoint
from crdtsync.transport.zmq_transport import topic

pytestmark = pytest.mark.integration

FAST = ReplicaConfig(
    hello_interval_ms=100.0, tick_interval_ms=20.0, ae_interval_ms=300.0, heartbeat_interval_ms=200.0
)


def _keys(tmp_path: Path, names: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (key file, public key)."""
    return {
        name: (str(tmp_path / f"{name}.key"), write_key_file(tmp_path / f"{name}.key", name))
        for name in names
    }


def test_a_node_without_an_allowed_key_can_neither_read_nor_write(tmp_path: Path) -> None:
    keys = _keys(tmp_path, ["a", "b", "x"])
    address = {name: free_endpoint() for name in keys}

    def config(name: str, peers: list[str]) -> NodeConfig:
        return NodeConfig(
            node_id=name,
            listen=address[name],
            peers=[address[p] for p in peers],
            replication=FAST,
            curve=CurveConfig(key_file=keys[name][0], peer_keys={address[p]: keys[p][1] for p in peers}),
        )

    async def scenario() -> None:
        # x knows a's and b's public keys (they are public), but neither a nor b allows x's key.
        async with (
            Node(config("a", ["b"])) as a,
            Node(config("b", ["a"])) as b,
            Node(config("x", ["a", "b"])) as x,
        ):
            doc = await a.open("models/secret")
            doc.get("data", type=Map)["weights"] = "s3://bucket/secret"
            intruder_doc = await x.open("models/secret")
            intruder_doc.get("data", type=Map)["weights"] = "s3://evil"
            await wait_until(lambda: b.has_doc("models/secret"), 15.0, "b received a's write")
            # Several heartbeat and anti-entropy periods for anything to leak either way.
            await wait_until(
                lambda: all(p.ae_rounds >= 2 for p in a.status().peers if p.node_id == "b"),
                15.0,
                "a few rounds ran",
            )
            assert (await b.open("models/secret")).get("data", type=Map).to_py() == {
                "weights": "s3://bucket/secret"
            }
            assert x.status().counters.frames_received == 0, "x received nothing at all"
            assert intruder_doc.get("data", type=Map).to_py() == {"weights": "s3://evil"}
            assert (await a.open("models/secret")).get("data", type=Map).to_py() == {
                "weights": "s3://bucket/secret"
            }
            refused = a.status().counters.curve_refused + b.status().counters.curve_refused
            assert refused >= 1, "the refusals are counted"
            assert all(peer.state != "alive" for peer in x.status().peers)

    asyncio.run(scenario())


async def _recording_relay(listen_port: int, target_port: int, recorded: list[bytes]) -> asyncio.Server:
    """A TCP relay that records every byte its clients send to the target."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while chunk := await reader.read(65536):
                if record:
                    recorded.append(chunk)
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pipe(client_reader, server_writer, True), pipe(server_reader, client_writer, False)
        )

    return await asyncio.start_server(handle, "127.0.0.1", listen_port)


async def _send_raw(port: int, data: bytes) -> None:
    """Open a TCP connection to `port`, send `data`, and wait (bounded) until the peer closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(5.0):
            while await reader.read(65536):
                pass
    writer.close()


def test_replayed_and_altered_traffic_is_rejected_before_the_decoder(tmp_path: Path) -> None:
    keys = _keys(tmp_path, ["a", "b"])
    a_listen, b_listen = free_endpoint(), free_endpoint()
    a_port = parse_endpoint(a_listen)[1]
    relay_port = parse_endpoint(free_endpoint())[1]
    relayed = f"tcp://127.0.0.1:{relay_port}"
    recorded: list[bytes] = []

    async def scenario() -> None:
        relay = await _recording_relay(relay_port, a_port, recorded)
        a_config = NodeConfig(
            node_id="a",
            listen=a_listen,
            replication=FAST,
            curve=CurveConfig(key_file=keys["a"][0], peer_keys={b_listen: keys["b"][1]}),
        )
        # b's first hello to a goes through the recording relay.
        b_config = NodeConfig(
            node_id="b",
            listen=b_listen,
            peers=[relayed],
            replication=FAST,
            curve=CurveConfig(
                key_file=keys["b"][0], peer_keys={relayed: keys["a"][1], a_listen: keys["a"][1]}
            ),
        )
        try:
            async with Node(a_config) as a:
                async with Node(b_config) as b:
                    (await b.open("flags")).get("data", type=Map)["on"] = True
                    await wait_until(lambda: a.has_doc("flags"), 15.0, "a received b's write")
                await wait_until(lambda: sum(map(len, recorded)) > 0, 5.0, "the relay recorded b's session")
                # b announced its leave when it closed: count only after that last frame arrived.
                await wait_until(lambda: a.status().counters.members_left == 1, 5.0, "a heard b leave")
                session = b"".join(recorded)
                received = a.status().counters.frames_received
                await _send_raw(a_port, session)  # a replay of b's whole session
                altered = bytearray(session)
                altered[len(altered) // 2] ^= 0x01
                await _send_raw(a_port, bytes(altered))  # the same, one bit changed
                counters = a.status().counters
                assert counters.frames_received == received, "nothing replayed reached the node"
                assert counters.wire_errors_total() == 0, counters.wire_errors
                assert (await a.open("flags")).get("data", type=Map).to_py() == {"on": True}
        finally:
            relay.close()
            await relay.wait_closed()

    asyncio.run(scenario())


def _configs_with_m_allowed(
    keys: dict[str, tuple[str, str]], a_listen: str, b_listen: str, m_listen: str
) -> tuple[NodeConfig, NodeConfig]:
    """a knows b and m (an allowed peer: say, a compromised one); b knows a."""
    a_config = NodeConfig(
        node_id="a",
        listen=a_listen,
        replication=FAST,
        curve=CurveConfig(key_file=keys["a"][0], peer_keys={b_listen: keys["b"][1], m_listen: keys["m"][1]}),
    )
    b_config = NodeConfig(
        node_id="b",
        listen=b_listen,
        peers=[a_listen],
        replication=FAST,
        curve=CurveConfig(key_file=keys["b"][0], peer_keys={a_listen: keys["a"][1]}),
    )
    return a_config, b_config


def _m_socket(context: zmq.Context[Any], kind: int, keys: dict[str, tuple[str, str]]) -> zmq.Socket[bytes]:
    """A socket with m's keys: a CURVE client of a (DEALER) or a CURVE server (PUB)."""
    sock: zmq.Socket[bytes] = context.socket(kind)
    sock.curve_publickey, sock.curve_secretkey = read_key_file(keys["m"][0])
    if kind == zmq.PUB:
        sock.curve_server = True
    else:
        sock.curve_serverkey = keys["a"][1].encode()
    sock.setsockopt(zmq.LINGER, 0)
    return sock


def test_an_allowed_key_cannot_speak_for_another_node(tmp_path: Path) -> None:
    """m's key is allowed at a; m still cannot pass requests off as b's."""
    keys = _keys(tmp_path, ["a", "b", "m"])
    a_listen, b_listen = free_endpoint(), free_endpoint()

    async def scenario() -> None:
        a_config, b_config = _configs_with_m_allowed(keys, a_listen, b_listen, free_endpoint())
        context = zmq.Context()
        dealer = _m_socket(context, zmq.DEALER, keys)
        try:
            async with Node(a_config) as a, Node(b_config) as b:
                (await b.open("flags")).get("data", type=Map)["on"] = True
                await wait_until(lambda: a.has_doc("flags"), 15.0, "a received b's write")
                forged: Doc[Any] = Doc()
                forged.get("data", type=Map)["on"] = False
                delta = wire.Delta("flags", b"\x00", forged.get_state(), forged.get_update())
                dealer.connect(a_listen)  # queued until the connection is up (no ZMQ_IMMEDIATE)
                dealer.send(wire.encode(wire.Deltas("b", b.status().epoch, 10_000, (delta,))))
                await wait_until(
                    lambda: a.status().counters.frames_dropped_identity >= 1,
                    15.0,
                    "a dropped m's frame that claimed to be b",
                )
                assert (await a.open("flags")).get("data", type=Map).to_py() == {"on": True}
        finally:
            dealer.close(linger=0)
            context.term()

    asyncio.run(scenario())


def test_an_allowed_publisher_cannot_publish_as_another_node(tmp_path: Path) -> None:
    """m is an allowed peer of a (a compromised node): a subscribes to m's stream after m's hello.
    Frames m publishes as itself arrive; frames it publishes as b are dropped, because each
    subscription carries the key its publisher proved."""
    keys = _keys(tmp_path, ["a", "b", "m"])
    a_listen, b_listen, m_listen, m_publish = (
        free_endpoint(),
        free_endpoint(),
        free_endpoint(),
        free_endpoint(),
    )

    async def scenario() -> None:
        a_config, b_config = _configs_with_m_allowed(keys, a_listen, b_listen, m_listen)
        context = zmq.Context()
        dealer = _m_socket(context, zmq.DEALER, keys)
        publisher = _m_socket(context, zmq.PUB, keys)
        publisher.bind(m_publish)
        try:
            async with Node(a_config) as a, Node(b_config) as b:
                (await b.open("flags")).get("data", type=Map)["on"] = True
                await wait_until(lambda: a.has_doc("flags"), 15.0, "a received b's write")
                dealer.connect(a_listen)
                hello = wire.Hello(
                    "m", 1, m_listen, m_publish, 0, "default", placement_version=PLACEMENT_VERSION
                )
                dealer.send(wire.encode(hello))

                def frame(node_id: str, doc_id: str, value: bool) -> list[bytes]:
                    written: Doc[Any] = Doc()
                    written.get("data", type=Map)["on"] = value
                    delta = wire.Delta(doc_id, b"\x00", written.get_state(), written.get_update())
                    common = topic(dc_only=False)
                    return [common, wire.encode(wire.Deltas(node_id, 1, 1, (delta,)))]

                def published_both() -> bool:
                    # PUB drops frames until the subscription is up: publish until both have landed.
                    publisher.send_multipart(frame("m", "m-own", True))
                    publisher.send_multipart(frame("b", "flags", False))
                    return a.has_doc("m-own") and a.status().counters.frames_dropped_identity >= 1

                await wait_until(
                    published_both,
                    15.0,
                    lambda: f"a took m's frame and dropped m's forgery: {a.status().counters}",
                )
                assert (await a.open("m-own")).get("data", type=Map).to_py() == {"on": True}
                assert (await a.open("flags")).get("data", type=Map).to_py() == {"on": True}
        finally:
            dealer.close(linger=0)
            publisher.close(linger=0)
            context.term()

    asyncio.run(scenario())


def test_key_files_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    public = write_key_file(path, "n")
    assert read_key_file(path)[0].decode() == public
    assert path.stat().st_mode & 0o077 == 0, "the key file is private to its owner"
    with pytest.raises(FileExistsError):
        write_key_file(path, "n")
    broken = tmp_path / "broken.key"
    broken.write_text('public = "short"\nsecret = "short"\n')
    with pytest.raises(CurveKeyError, match="40 Z85 characters"):
        read_key_file(broken)
    mismatched = tmp_path / "mismatched.key"
    other = tmp_path / "other.key"
    write_key_file(other, "o")
    lines = path.read_text().splitlines()
    other_public = read_key_file(other)[0].decode()
    mismatched.write_text(
        "\n".join(f'public = "{other_public}"' if line.startswith("public") else line for line in lines)
    )
    with pytest.raises(CurveKeyError, match="does not belong"):
        read_key_file(mismatched)
    with pytest.raises(CurveKeyError, match="does not exist"):
        read_key_file(tmp_path / "missing.key")
