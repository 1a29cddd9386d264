"""Request limits for JSON bodies, checked before the body is parsed.

Order, each step refusing before the next costs anything:

1. size: Litestar's `request_max_body_size` (ANIMUS_MAX_BODY_BYTES) refuses
   from the `Content-Length` header, or while streaming a body without one,
   so at most the limit is ever buffered; the 413 names the limit;
2. presence: a route whose body is required refuses an empty one (422);
3. encoding: the bytes must be UTF-8 (400);
4. nesting: a scan of brackets outside strings refuses depth > 64 (400)
   before any parser recurses;
5. syntax: the JSON must parse (400). Valid JSON that escapes a lone UTF-16
   surrogate (`"\\ud800"`) is refused by the parser too; it answers 422
   naming the fields, as such text cannot be stored.

Field rules (NUL, lone surrogates, lengths) belong to the contracts and
answer 422. Upload routes take raw bytes and are limited in `datasets`.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from litestar.exceptions import InternalServerException, SerializationException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from animus.storage import TooLarge
from gateway.errors import BadRequest, InvalidBody, UploadInterrupted

if TYPE_CHECKING:
    from litestar import Request

MAX_JSON_DEPTH = 64
MAX_FIELD_ERRORS = 20
BODY_REQUIRED = "a JSON body is required"

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


def size_text(size: int) -> str:
    """`size` in the largest binary unit that divides it: 1 MiB, 50 GiB."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def too_large(what: str, limit: int, setting: str) -> TooLarge:
    """The 413 for `what` beyond `limit`, naming the setting that sets it."""
    return TooLarge(f"{what} is larger than the {size_text(limit)} limit ({setting})")


async def read_body(request: Request[Any, Any, Any]) -> bytes:
    """The whole body, within the route's size limit (413 beyond it).

    Raises:
        TooLarge: the body is larger than the limit.
        UploadInterrupted: the client went away before the body ended.
    """
    try:
        return await request.body()
    except RequestEntityTooLarge as exc:
        limit = request.route_handler.resolve_request_max_body_size()
        if limit is None:
            raise
        raise too_large("the body", limit, "ANIMUS_MAX_BODY_BYTES") from exc
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


def requires_json_body(request: Request[Any, Any, Any]) -> bool:
    data = request.route_handler.parsed_fn_signature.parameters["data"]
    return not (data.is_optional or data.has_default)


def check_storable_json(body: bytes) -> None:
    """Refuse JSON that escapes lone surrogates, naming where they are.

    Called once the strict parser refused `body`; a body the lenient
    standard parser cannot read either is left to answer 400.

    Raises:
        InvalidBody: a string or a key holds a lone UTF-16 surrogate.
    """
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return
    fields = list(_surrogate_fields(value, ()))
    if not fields:
        return
    message = "contains a lone UTF-16 surrogate, which cannot be stored as text"
    raise InvalidBody(
        "the body holds text that cannot be stored (a lone UTF-16 surrogate)",
        errors=[
            {"field": field, "message": message} for field in fields[:MAX_FIELD_ERRORS]
        ],
    )


def _surrogate_fields(value: Any, path: tuple[str, ...]) -> Iterator[str]:
    """The dotted paths of strings and keys in `value` that hold a surrogate."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            yield ".".join(path)
    elif isinstance(value, dict):
        for key, item in value.items():
            name = key.encode("utf-8", "backslashreplace").decode("utf-8")
            if _SURROGATE.search(key):
                yield ".".join((*path, name))
            yield from _surrogate_fields(item, (*path, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _surrogate_fields(item, (*path, str(index)))


_SURROGATE = re.compile("[\ud800-\udfff]")


async def check_json_body(request: Request[Any, Any, Any]) -> None:
    """`before_request` hook: size, encoding, nesting and syntax of the body.

    Runs after the guard (an unauthenticated caller's body is never read)
    and leaves the parsed value cached for the handler's `data`.
    """
    if not takes_json_body(request):
        return None
    body = await read_body(request)
    if not body.strip():
        if requires_json_body(request):
            field = {"field": "", "message": BODY_REQUIRED}
            raise InvalidBody(BODY_REQUIRED, errors=[field])
        return None
    check_utf8(body)
    check_nesting(body)
    try:
        await request.json()
    except SerializationException as exc:
        check_storable_json(body)
        raise BadRequest("the body is not valid JSON") from exc
    return None
