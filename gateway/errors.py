"""Errors to HTTP: the one table that turns exceptions into problem details.

Every error response is RFC 9457 problem details (`application/problem+json`)
with `type`, `title`, `status`, `detail`, `instance` and `request_id`.
Litestar's problem-details plugin carries the conversion; `PROBLEMS` decides
status and detail, and each type has one title (`TITLES`), the same whether
our code or Litestar refused. Our own 4xx errors keep their detail; any 5xx
answers a stable detail (never driver text), and an unexpected error is
logged once, with its traceback, here and nowhere else.

Validation errors name fields in the caller's terms: `field_errors` drops
the segments pydantic adds to a location for the members of a union, so
`parameters.a` is refused once, with the types it takes.

    AnimusError (animus.errors)
    ├── BadRequest                the body is not acceptable JSON (400)
    │   ├── UploadInterrupted     the client stopped sending the body (400)
    │   └── InvalidParameter      a query or header parameter missing,
    │                             malformed, out of range or repeated (400)
    ├── Unauthenticated           no or unknown bearer token (401)
    ├── PermissionDenied          the route or the role refuses (403)
    ├── NotReady                  a dependency is down (503)
    ├── IdempotencyKeyMismatch    a key reused for another request (422)
    ├── InvalidBody               JSON whose values no route takes (422)
    └── IdempotencyKeyInProgress  the key's first request still runs (409)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import structlog
from litestar import Request
from litestar.exceptions import (
    HTTPException,
    NotFoundException,
    ValidationException,
)
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)
from litestar.response import Response

from animus.errors import (
    AlreadyExistsError,
    AnimusError,
    BusError,
    ConflictError,
    NotFoundError,
    StorageError,
    StoreError,
    StreamVersionConflict,
    TransientStoreError,
    ValidationError,
)
from animus.storage import DigestMismatch, EmptyUpload, TooLarge
from contracts.api import PROBLEM_MEDIA_TYPE
from gateway.context import request_id_of

log = structlog.get_logger(__name__)

PROBLEM_TYPE_BASE = "urn:animus:problem:"


class BadRequest(AnimusError):
    title = "Bad request"


class UploadInterrupted(BadRequest):
    title = "Upload interrupted"


class InvalidParameter(BadRequest):
    """A query or header parameter refused; `errors` name each parameter."""

    title = "Invalid parameter"

    def __init__(
        self, detail: str, *, errors: Sequence[Mapping[str, str]] = ()
    ) -> None:
        super().__init__(detail)
        self.errors = [dict(error) for error in errors]


class Unauthenticated(AnimusError):
    title = "Authentication required"

    def __init__(self, detail: str, *, invalid_token: bool = False) -> None:
        super().__init__(detail)
        self.invalid_token = invalid_token


class PermissionDenied(AnimusError):
    title = "Permission denied"


class NotReady(AnimusError):
    title = "Not ready"

    def __init__(self, detail: str, *, checks: Mapping[str, str]) -> None:
        super().__init__(detail)
        self.checks = dict(checks)


class IdempotencyKeyMismatch(ValidationError):
    title = "Idempotency key mismatch"


class InvalidBody(ValidationError):
    """A JSON body with values no route takes; `errors` name each field."""

    title = "Invalid body"

    def __init__(
        self, detail: str, *, errors: Sequence[Mapping[str, str]] = ()
    ) -> None:
        super().__init__(detail)
        self.errors = [dict(error) for error in errors]


class IdempotencyKeyInProgress(ConflictError):
    title = "Idempotency key in progress"


@dataclass(frozen=True)
class ProblemKind:
    """How one exception type answers: status, a slug for `type`, a detail.

    `detail` set means the exception's own text is never shown.
    """

    status: int
    slug: str
    detail: str | None = None


PROBLEMS: dict[type[Exception], ProblemKind] = {
    BadRequest: ProblemKind(400, "bad-request"),
    UploadInterrupted: ProblemKind(400, "upload-interrupted"),
    InvalidParameter: ProblemKind(400, "invalid-parameter"),
    Unauthenticated: ProblemKind(401, "unauthenticated"),
    PermissionDenied: ProblemKind(403, "permission-denied"),
    NotFoundError: ProblemKind(404, "not-found"),
    ConflictError: ProblemKind(409, "conflict"),
    AlreadyExistsError: ProblemKind(409, "already-exists"),
    StreamVersionConflict: ProblemKind(
        409,
        "stream-version-conflict",
        "a concurrent change won the race; reload and retry",
    ),
    TooLarge: ProblemKind(413, "too-large"),
    ValidationError: ProblemKind(422, "validation-failed"),
    IdempotencyKeyMismatch: ProblemKind(422, "idempotency-key-mismatch"),
    InvalidBody: ProblemKind(422, "invalid-body"),
    IdempotencyKeyInProgress: ProblemKind(409, "idempotency-key-in-progress"),
    DigestMismatch: ProblemKind(422, "digest-mismatch"),
    EmptyUpload: ProblemKind(422, "empty-upload"),
    NotReady: ProblemKind(503, "not-ready"),
    TransientStoreError: ProblemKind(
        503,
        "store-unavailable",
        "the event store is temporarily unavailable; retry later",
    ),
    BusError: ProblemKind(
        503, "bus-unavailable", "the message bus is temporarily unavailable"
    ),
    StorageError: ProblemKind(
        503,
        "storage-unavailable",
        "object storage is temporarily unavailable; retry later",
    ),
    StoreError: ProblemKind(500, "internal", "internal error"),
    AnimusError: ProblemKind(500, "internal", "internal error"),
}
"""The one table: our exception types, most specific first by MRO lookup."""

INTERNAL = ProblemKind(500, "internal", "internal error")

TITLES: dict[str, str] = {
    **{kind.slug: cls.title for cls, kind in PROBLEMS.items() if kind.status < 500},
    "method-not-allowed": "Method not allowed",
    "unsupported-media-type": "Unsupported media type",
    "too-many-requests": "Too many requests",
}
"""One title per problem type, whoever raised it (our code or Litestar's);
a 5xx type not named here is titled by its status, as its detail is fixed."""


def problem_kind(exc: Exception) -> ProblemKind:
    for cls in type(exc).__mro__:
        if cls in PROBLEMS:
            return PROBLEMS[cls]
    return INTERNAL


def to_problem(exc: Exception) -> ProblemDetailsException:
    """Convert any exception raised while serving a request."""
    if isinstance(exc, ProblemDetailsException):
        return exc
    if isinstance(exc, HTTPException):
        return _from_http_exception(exc)
    kind = problem_kind(exc)
    if kind.status >= 500:
        _log_server_error(exc, kind)
    detail = kind.detail or (exc.detail if isinstance(exc, AnimusError) else "")
    return _problem(kind, detail, **_extras(exc))


def _extras(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, Unauthenticated):
        challenge = 'Bearer realm="animus"'
        if exc.invalid_token:
            challenge += ', error="invalid_token"'
        return {"headers": {"WWW-Authenticate": challenge}}
    if isinstance(exc, NotReady):
        return {"extra": {"checks": exc.checks}}
    if isinstance(exc, InvalidBody | InvalidParameter):
        return {"extra": {"errors": exc.errors}}
    if isinstance(exc, ValidationError) and exc.field is not None:
        return {"extra": {"errors": [{"field": exc.field, "message": exc.detail}]}}
    return {}


class AnimusProblem(ProblemDetailsException):
    """A problem that renders with the request's path and id."""

    def to_response(self, request: Request[Any, Any, Any]) -> Response[Any]:
        return render_problem(request, self)


def _problem(
    kind: ProblemKind,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> ProblemDetailsException:
    return AnimusProblem(
        status_code=kind.status,
        type_=PROBLEM_TYPE_BASE + kind.slug,
        title=TITLES.get(kind.slug) or _default_title(kind.status),
        detail=detail,
        headers=headers,
        extra=extra,
    )


def _from_http_exception(exc: HTTPException) -> ProblemDetailsException:
    """Litestar's own errors: routing, limits, parameter and body validation."""
    if isinstance(exc, ValidationException):
        return _from_validation(exc)
    status = exc.status_code
    if status >= 500:
        _log_server_error(exc, INTERNAL)
        return _problem(INTERNAL, INTERNAL.detail or "")
    slug = _HTTP_SLUGS.get(status, "http-error")
    if isinstance(exc, NotFoundException):
        return _problem(ProblemKind(404, slug), "no resource at this path")
    if status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:  # read elsewhere than limits
        detail = "the body is larger than the limit (ANIMUS_MAX_BODY_BYTES)"
        return _problem(ProblemKind(413, slug), detail)
    return _problem(ProblemKind(status, slug), str(exc.detail), headers=exc.headers)


_HTTP_SLUGS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "permission-denied",
    404: "not-found",
    405: "method-not-allowed",
    413: "too-large",
    415: "unsupported-media-type",
    429: "too-many-requests",
}


def _from_validation(exc: ValidationException) -> ProblemDetailsException:
    """Path errors mean no such resource; query errors 400; body errors 422.

    A missing required parameter is a 400 too. Litestar says so only in its
    message (`Missing required query parameter 'position' for path ...`,
    with no `extra`), raised from the KeyError of the parameter's name; that
    message is read here, never echoed (it repeats the query string).
    """
    missing = _missing_parameter(exc)
    if missing is not None:
        source, name = missing
        if source == "path":
            return _problem(ProblemKind(404, "not-found"), "no resource at this path")
        return to_problem(
            InvalidParameter(
                f"missing parameter: {name}",
                errors=[
                    {"field": name, "message": f"the {source} parameter is required"}
                ],
            )
        )
    items = [item for item in exc.extra or [] if isinstance(item, Mapping)]
    sources = {_source_of(item) for item in items}
    if sources == {"path"}:
        return _problem(ProblemKind(404, "not-found"), "no resource at this path")
    if sources & {"query", "header", "cookie"}:
        errors = _litestar_errors(items)
        names = ", ".join(sorted({error["field"] for error in errors} - {""}))
        return to_problem(
            InvalidParameter(
                f"invalid parameter: {names}" if names else "a parameter is invalid",
                errors=errors,
            )
        )
    raw = getattr(exc.__cause__, "errors", None)
    if _is_pydantic_errors(raw):
        errors = field_errors(raw)
    else:
        errors = _litestar_errors(items)
    return _problem(
        ProblemKind(422, "invalid-body"),
        "the request body does not validate",
        extra={"errors": errors},
    )


_MISSING = re.compile(
    r"^Missing required (?P<source>[a-z]+) parameter (?P<quote>['\"])(?P<name>.*?)"
    r"(?P=quote) for "
)
"""Litestar's message for a required parameter the request lacks."""


def _missing_parameter(exc: ValidationException) -> tuple[str, str] | None:
    """(source, name) of the required parameter the request lacks, if that
    is what `exc` says."""
    match = _MISSING.match(str(exc.detail))
    if match is None:
        return None
    cause = exc.__cause__
    name = str(cause.args[0]) if isinstance(cause, KeyError) and cause.args else ""
    return match["source"], _printable(name or match["name"])


def _litestar_errors(items: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    return [
        {"field": str(item.get("key", "")), "message": str(item.get("message", ""))}
        for item in items
    ]


def _is_pydantic_errors(raw: object) -> bool:
    """Whether `raw` is pydantic's error list (a body model refused the body)."""
    return (
        isinstance(raw, list)
        and bool(raw)
        and all(isinstance(error, Mapping) and "loc" in error for error in raw)
    )


_SCHEMA_TAG = re.compile(r"^[a-z][a-z0-9_-]*\[.*\]$")
"""A union member named by its schema: `function-after[check_storable(), str]`."""

_SCALAR_TAGS = {"str": "string_", "int": "int_", "float": "float_", "bool": "bool_"}
"""A scalar union member's name, and how the types of its own errors begin."""

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "a list",
    "none_required": "null",
}
"""Errors that only say the value has another type, and the type expected."""


def field_errors(raw: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Pydantic's errors as `{"field", "message"}`, one per field.

    A union adds a segment naming the member to the location of each
    member's error (`parameters.a.function-after[check_storable(), str]`,
    `parameters.a.int`, ...). Those segments are dropped, and the errors of
    one union become one message: what the member that took the value's type
    refused, else the types the field takes.
    """
    by_field: dict[str, list[Mapping[str, Any]]] = {}
    for error in raw:
        by_field.setdefault(_field_of(error), []).append(error)
    return [
        {"field": name, "message": _union_message(errors)}
        for name, errors in by_field.items()
    ]


def _field_of(error: Mapping[str, Any]) -> str:
    loc = list(error.get("loc", ()))
    kind = str(error.get("type", ""))
    if loc and loc[-1] in _SCALAR_TAGS and kind.startswith(_SCALAR_TAGS[loc[-1]]):
        loc.pop()
    return ".".join(
        _printable(str(part))
        for part in loc
        if not (isinstance(part, str) and _SCHEMA_TAG.match(part))
    )


def _union_message(errors: Sequence[Mapping[str, Any]]) -> str:
    refused = [error for error in errors if error.get("type") not in _EXPECTED]
    if len(errors) == 1 or refused:
        return "; ".join(
            dict.fromkeys(_message_of(error) for error in refused or errors)
        )
    expected = list(dict.fromkeys(_EXPECTED[str(error["type"])] for error in errors))
    choices = ", ".join(expected[:-1]) + " or " + expected[-1]
    return f"Input should be {choices}{_got(errors[0])}"


def _message_of(error: Mapping[str, Any]) -> str:
    return _printable(str(error.get("msg", ""))).removeprefix("Value error, ")


def _got(error: Mapping[str, Any]) -> str:
    """What the refused value is, in JSON's words."""
    if "input" not in error:
        return ""
    value = error["input"]
    for kind, noun in _JSON_KINDS:
        if isinstance(value, kind):
            return f", not {noun}"
    return ""


_JSON_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (Mapping, "an object"),
    (list, "a list"),
    (type(None), "null"),
)


def _printable(text: str) -> str:
    """`text` with lone surrogates escaped, so the answer encodes as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _source_of(item: Mapping[str, Any]) -> str:
    source = item.get("source", "body")
    return str(getattr(source, "value", source))


def _log_server_error(exc: Exception, kind: ProblemKind) -> None:
    if kind.status == 500:
        log.error("request_failed", error=type(exc).__name__, exc_info=exc)
    else:
        log.warning(
            "dependency_unavailable",
            error=type(exc).__name__,
            detail=exc.detail if isinstance(exc, AnimusError) else None,
        )


def _default_title(status: int) -> str:
    """The status's phrase, in the sentence case of every title of ours."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "Error"
    return phrase[:1] + phrase[1:].lower()


def render_problem(
    request: Request[Any, Any, Any], exc: ProblemDetailsException
) -> Response[Any]:
    """Write the problem as JSON, with the request path and id."""
    request_id = request_id_of(request.scope)
    body: dict[str, Any] = {
        "type": exc.type_ or "about:blank",
        "title": exc.title or _default_title(exc.status_code),
        "status": exc.status_code,
        "detail": exc.detail,
        "instance": request.url.path,
        "request_id": request_id,
    }
    if isinstance(exc.extra, Mapping):
        body.update({k: v for k, v in exc.extra.items() if k not in body})
    headers = {**(exc.headers or {}), "X-Request-ID": request_id}
    if request.scope.get("route_handler") is None:
        # No route matched, so no middleware ran: this is the request's line.
        log.info(
            "request",
            method=request.method,
            path=request.url.path,
            status=exc.status_code,
            request_id=request_id,
            actor=None,
        )
    return Response(
        body,
        status_code=exc.status_code,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def problem_details_plugin() -> ProblemDetailsPlugin:
    """The plugin wired to `to_problem` for every exception."""
    converters: dict[type[Exception], Callable[[Exception], Any]] = {
        Exception: to_problem,
    }
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(
            exception_handler=render_problem,
            enable_for_all_http_exceptions=False,
            exception_to_problem_detail_map=converters,
        )
    )
