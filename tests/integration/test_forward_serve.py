"""The serving side of forwarding (docs/placement.md#forwarding), in process: a doc request another
node forwarded runs through the doc route's handlers of this node's HTTP API, without a token check
and without an HTTP request to itself, and answers what the route answers (status, content type, body,
`X-Served-As`), errors included. Only doc requests are served so; anything else is declined, and so
is everything once the API stopped."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from pycrdt import Map
from zmq_support import free_endpoint

from crdtsync import Node, NodeConfig
from crdtsync.core.forward import STATUS_NOT_SERVED, ForwardRequest
from crdtsync.daemon.config import DaemonConfig, Token
from crdtsync.daemon.http import Api
from crdtsync.daemon.http_input import b64url

pytestmark = pytest.mark.integration

JSON_TYPE = "application/json"


def test_a_forwarded_doc_request_is_served_in_process_by_the_doc_route() -> None:
    asyncio.run(_scenario())


async def _scenario() -> None:
    # A token is configured: a forwarded request carries none, its token was checked where it arrived.
    token = Token("ops", "write", hashlib.sha256(b"secret").digest())
    async with Node(NodeConfig(node_id="holder", listen=free_endpoint())) as node:
        api = Api(node, DaemonConfig(node=node.config, tokens=(token,)))
        api.app()
        serve = api.forwarding.serve

        def ask(method: str, target: str, body: bytes = b"") -> ForwardRequest:
            return ForwardRequest("asker", 1, method, target, JSON_TYPE if body else "", body)

        put = await serve(ask("PUT", "/v1/docs/fwd/doc/keys/a%20b?write_acks=1", b'{"v": 3}'))
        assert (put.status, put.content_type.split(";")[0]) == (200, JSON_TYPE), put
        assert json.loads(put.body)["write_acks"]["confirmed"] == ["holder"]
        doc = await node.open("fwd/doc", read=False)
        assert doc.get("data", type=Map).to_py() == {"a b": {"v": 3}}, (
            "the path is decoded as for a client's request"
        )
        node.release("fwd/doc")

        large = {"text": "x" * 300_000}  # over the body reader's buffer: fed and read whole
        big = await serve(ask("PUT", "/v1/docs/fwd/doc/keys/big", json.dumps(large).encode()))
        assert big.status == 200, big.body
        read = await serve(ask("GET", "/v1/docs/fwd/doc/keys/big"))
        assert json.loads(read.body)["value"] == large
        read = await serve(ask("GET", "/v1/docs/fwd/doc/keys/a%20b"))
        assert (read.status, read.served_as, json.loads(read.body)["value"]) == (200, "holder", {"v": 3})
        update = await serve(ask("GET", "/v1/docs/fwd/doc/update"))
        doc = await node.open("fwd/doc")
        state = b64url(doc.get_state())
        node.release("fwd/doc")
        own = dict(update.headers)
        assert (update.status, own["X-State-Vector"]) == (200, state), "the answer's own headers go back"
        assert own.keys() == {"X-State-Vector", "X-Causal-Token"}, "only the route's `X-` headers"
        missing = await serve(ask("GET", "/v1/docs/fwd/doc/keys/none"))
        assert (missing.status, json.loads(missing.body)["error"]["code"]) == (404, "no_such_key")
        bad = await serve(ask("PUT", "/v1/docs/fwd/doc/keys/k", b"{not json"))
        assert bad.status == 400, "the route's error answers, as the error middleware gives them"

        watch = await serve(ask("GET", "/v1/docs/fwd/doc/watch"))
        assert watch.status == 405, "a stream is served where it is asked for, never forwarded"
        for target in ("/v1/status", "/health", "/v1/placement/fwd/doc"):
            assert (await serve(ask("GET", target))).status == STATUS_NOT_SERVED, target

        api.forwarding.close()
        after = await serve(ask("GET", "/v1/docs/fwd/doc/keys/a%20b"))
        assert after.status == STATUS_NOT_SERVED, "once the API stopped, the asker serves it"
