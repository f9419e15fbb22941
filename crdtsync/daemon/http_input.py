"""What every route of the HTTP API checks its input with, and how it answers: doc ids, keys, JSON
values and base64url, each refused with a 400 naming what was wrong (`ApiError`, answered and
counted by the API's error middleware); JSON answers written as people write numbers (`jsonvalues`).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from aiohttp import web

from crdtsync.daemon import jsonvalues

DOC_ID_RE = re.compile(r"^[A-Za-z0-9._~:@-]+(/[A-Za-z0-9._~:@-]+)*$")
KEY_RE = re.compile(r"^[A-Za-z0-9._~:@ -]+$")
DOC_ID_BYTES_MAX = 512
KEY_BYTES_MAX = 256
RESERVED_SEGMENTS = frozenset({"keys", "update", "watch"})
RESERVED_RE = re.compile("(?:^|/)(?:" + "|".join(sorted(RESERVED_SEGMENTS)) + ")(?:/|$)")
JSON_INT_MAX = 2**53
"""Yjs numbers are doubles: larger integers would lose precision (and pycrdt panics on some)."""
JSON_DEPTH_MAX = 64

SERVED_BY_KEY = web.RequestKey("served_by", str)
"""The node that answered a request this node forwarded (`X-Served-By`)."""
SERVED_AS_KEY = web.RequestKey("served_as", str)
"""How a doc read was served: `holder`, `follower` or `fetched` (`X-Served-As`)."""


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def json_of(value: Any, doc_id: str) -> Any:
    """`value` from a doc's `data` map as JSON: shared types converted as `Map.to_py` converts them.
    An XML type has no JSON form (a Yjs client may put one there): 422 `not_json`, not a 500."""
    if not hasattr(value, "to_py"):
        return value
    try:
        return value.to_py()
    except ValueError as exc:
        raise ApiError(422, "not_json", f"doc {doc_id!r} holds a value with no JSON form: {exc}") from None


JSON_CONTENT_TYPE = "application/json; charset=utf-8"
"""What `web.json_response` names its answers: every JSON answer keeps that header."""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Every JSON answer: numbers as people write them (`4`, not `4.0`; see `jsonvalues`). The body
    goes out as bytes with its content type in the headers: `web.json_response` passes text and a
    content type, which aiohttp parses and encodes again for every answer."""
    all_headers = (
        {"Content-Type": JSON_CONTENT_TYPE}
        if headers is None
        else headers | {"Content-Type": JSON_CONTENT_TYPE}
    )
    return web.Response(body=jsonvalues.dumps(body).encode(), status=status, headers=all_headers)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def check_doc_id(doc_id: str) -> str:
    # The pattern takes ASCII only: a matching id has as many bytes as characters, and one longer
    # than the bound in characters is longer in bytes (a batch checks up to 1,000 ids). fullmatch:
    # `$` also matches before a final newline, which let "doc\n" through.
    if len(doc_id) > DOC_ID_BYTES_MAX or not DOC_ID_RE.fullmatch(doc_id):
        raise ApiError(
            400,
            "bad_doc_id",
            f"doc id {doc_id[:80]!r} is invalid: 1..{DOC_ID_BYTES_MAX} bytes of A-Z a-z 0-9 . _ ~ : @ - "
            "in segments separated by single slashes",
        )
    if RESERVED_RE.search(doc_id):
        raise ApiError(
            400,
            "bad_doc_id",
            f"doc id {doc_id!r} uses a reserved segment ({', '.join(sorted(RESERVED_SEGMENTS))})",
        )
    return doc_id


def check_key(key: str) -> str:
    if len(key) > KEY_BYTES_MAX or not KEY_RE.fullmatch(key):
        raise ApiError(
            400,
            "bad_key",
            f"key {key[:80]!r} is invalid: 1..{KEY_BYTES_MAX} bytes of A-Z a-z 0-9 . _ ~ : @ - and space",
        )
    return key


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def from_b64url(text: str, what: str) -> bytes:
    try:
        # validate=True: the lenient decoder would drop characters outside the alphabet silently.
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (ValueError, TypeError):
        raise ApiError(400, "bad_base64", f"{what} is not valid base64url") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
"""One decoder for every request (`json.loads` with an option builds one per call)."""


def parse_json(body: bytes) -> Any:
    """A request body's JSON value: 400 `bad_json` for anything but JSON (NaN and Infinity included)
    or nesting deeper than JSON_DEPTH_MAX, 400 `bad_value` for an integer a Yjs number cannot hold."""
    try:
        # What json.loads does with bytes: UTF-8, -16 or -32 by the first bytes, then decode.
        value = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"request body is not valid JSON: {exc}") from None
    check_numbers(value)
    return value


def check_numbers(value: Any, depth: int = 0) -> None:
    """400 for an integer a Yjs number cannot hold, or nesting deeper than JSON_DEPTH_MAX. Only
    containers are descended into, and types compared exactly (`json.loads` makes no subclasses, and
    a bool is not an int here): a batch of 10,000 writes is walked in every value."""
    if depth > JSON_DEPTH_MAX:
        raise ApiError(400, "bad_json", f"JSON nested deeper than {JSON_DEPTH_MAX} levels")
    kind = type(value)
    if kind is int:
        _check_int(value)
        return
    if kind is not dict and kind is not list:
        return
    for item in value.values() if kind is dict else value:
        item_kind = type(item)
        if item_kind is dict or item_kind is list:
            check_numbers(item, depth + 1)
        elif item_kind is int and not -JSON_INT_MAX <= item <= JSON_INT_MAX:
            _check_int(item)


def _check_int(value: int) -> None:
    if not -JSON_INT_MAX <= value <= JSON_INT_MAX:
        raise ApiError(
            400, "bad_value", f"integer {value} is beyond ±2^53, which a Yjs number cannot hold exactly"
        )
