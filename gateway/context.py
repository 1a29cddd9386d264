"""Request context: the request id, the trace span and the one `request` log line.

`RequestContextMiddleware` takes the caller's `X-Request-ID` (or makes one),
opens an OpenTelemetry server span, binds `request_id` and `trace_id` into
structlog's contextvars for everything logged while serving, echoes the id
on the response and logs one `request` line when the response is done.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING, Any

import structlog
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from opentelemetry import propagate, trace

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)
tracer = trace.get_tracer(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_STATE_KEY = "animus_request_id"
_ACCEPTED_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def request_id_of(scope: Scope) -> str:
    """The id of this request: set by the middleware, else taken or made now."""
    state: dict[str, Any] = scope.setdefault("state", {})  # type: ignore[typeddict-item]
    request_id = state.get(_STATE_KEY)
    if request_id is None:
        offered = _header(scope, b"x-request-id")
        valid = offered is not None and _ACCEPTED_ID.match(offered)
        request_id = offered if valid else uuid.uuid4().hex
        state[_STATE_KEY] = request_id
    return str(request_id)


def trace_id_of_current_span() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def actor_of(scope: Scope) -> str | None:
    """The authenticated principal's pseudonymous subject, once the guard has
    set it: logs never name a person."""
    user = scope.get("user")
    return getattr(user, "subject", None)


class RequestContextMiddleware(ASGIMiddleware):
    """Bind request and trace ids, echo the request id, log one line per request."""

    scopes = (ScopeType.HTTP,)

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp
    ) -> None:
        request_id = request_id_of(scope)
        method = str(scope.get("method", ""))
        carrier = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
        }
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableScopeHeaders.from_message(message)[REQUEST_ID_HEADER] = (
                    request_id
                )
            await send(message)

        with (
            tracer.start_as_current_span(
                f"{method} {_route_of(scope)}",
                context=propagate.extract(carrier),
                kind=trace.SpanKind.SERVER,
            ) as span,
            structlog.contextvars.bound_contextvars(
                request_id=request_id, trace_id=trace_id_of_current_span()
            ),
        ):
            try:
                await next_app(scope, receive, send_with_id)
            finally:
                span.set_attribute("http.response.status_code", status)
                log.info(
                    "request",
                    method=method,
                    path=scope["path"],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    actor=actor_of(scope),
                )


def _route_of(scope: Scope) -> str:
    handler = scope.get("route_handler")
    paths = sorted(getattr(handler, "paths", ()) or ())
    return paths[0] if paths else str(scope.get("path", ""))
