"""Request limits for JSON bodies, checked before the body is parsed.

Order, each step refusing before the next costs anything:

1. size: Litestar's `request_max_body_size` answers 413 from the
   `Content-Length` header, or while streaming a body without one, so at
   most the limit is ever buffered;
2. encoding: the bytes must be UTF-8 (400);
3. nesting: a scan of brackets outside strings refuses depth > 64 (400)
   before any parser recurses;
4. syntax: the JSON must parse (400).

Field rules (NUL, lone surrogates, lengths) belong to the contracts and
answer 422. Upload routes take raw bytes and are limited in `datasets`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from litestar.exceptions import InternalServerException, SerializationException

from gateway.errors import BadRequest, UploadInterrupted

if TYPE_CHECKING:
    from litestar import Request

MAX_JSON_DEPTH = 64

# A JSON string (escapes included) or one bracket; strings are skipped whole.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_OPENING = frozenset(b"[{")


def check_nesting(body: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit`, without parsing it.

    Raises:
        BadRequest: the body opens more than `limit` arrays or objects.
    """
    depth = 0
    for match in _TOKENS.finditer(body):
        token = match.group()
        if len(token) != 1:
            continue
        if token[0] in _OPENING:
            depth += 1
            if depth > limit:
                raise BadRequest(f"JSON nesting is deeper than {limit} levels")
        else:
            depth -= 1


def check_utf8(body: bytes) -> None:
    """Raises BadRequest unless `body` is valid UTF-8."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not valid UTF-8 (byte {exc.start})") from exc


async def read_body(request: Request[Any, Any, Any]) -> bytes:
    """The whole body, within the route's size limit (413 beyond it).

    Raises:
        UploadInterrupted: the client went away before the body ended.
    """
    try:
        return await request.body()
    except InternalServerException as exc:
        raise UploadInterrupted("the client stopped sending the body") from exc


async def stream_body(request: Request[Any, Any, Any]) -> AsyncIterator[bytes]:
    """The body chunk by chunk, as it arrives.

    Raises:
        UploadInterrupted: the client went away before the body ended.
    """
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except InternalServerException as exc:
        raise UploadInterrupted("the client stopped sending the body") from exc


def takes_json_body(request: Request[Any, Any, Any]) -> bool:
    return "data" in request.route_handler.parsed_fn_signature.parameters


async def check_json_body(request: Request[Any, Any, Any]) -> None:
    """`before_request` hook: size, encoding, nesting and syntax of the body.

    Runs after the guard (an unauthenticated caller's body is never read)
    and leaves the parsed value cached for the handler's `data`.
    """
    if not takes_json_body(request):
        return None
    body = await read_body(request)
    if not body.strip():
        return None
    check_utf8(body)
    check_nesting(body)
    try:
        await request.json()
    except SerializationException as exc:
        raise BadRequest("the body is not valid JSON") from exc
    return None
