"""What every route module shares: path and header parameters, the command
context, read-your-writes, idempotent answers and documented problems."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Annotated, Any

import structlog
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, PathParameter, QueryParameter
from litestar.response import Response
from pydantic import BaseModel

from animus.settings import Settings
from commands.handlers import CommandContext
from contracts.api import IDENTIFIER_PATTERN, PROBLEM_MEDIA_TYPE, Problem
from gateway.auth import Principal
from gateway.context import request_id_of, trace_id_of_current_span
from gateway.idempotency import (
    RequestIdentity,
    check_key,
    fingerprint,
    respond_once,
)
from gateway.services import GatewayServices
from projections.projector import wait_for_position

if TYPE_CHECKING:
    from litestar import Request

log = structlog.get_logger(__name__)

READ_YOUR_WRITES_TIMEOUT = 5.0
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
MAX_PAGE_SIZE = 500
MAX_OFFSET = 2**31 - 1
"""The largest `offset` a paged list takes; beyond it the query answers 400
naming the parameter (the database's OFFSET is a 64-bit integer, and no list
is that long)."""

ProjectId = Annotated[
    str, PathParameter(pattern=IDENTIFIER_PATTERN, description="Project id")
]
DatasetId = Annotated[
    str, PathParameter(pattern=IDENTIFIER_PATTERN, description="Dataset id")
]
RunId = Annotated[str, PathParameter(pattern=RUN_ID_PATTERN, description="Run id")]
Limit = Annotated[
    int,
    QueryParameter(
        ge=1, le=MAX_PAGE_SIZE, description=f"Page size, 1 to {MAX_PAGE_SIZE}"
    ),
]
Offset = Annotated[
    int,
    QueryParameter(
        ge=0, le=MAX_OFFSET, description=f"Items to skip, 0 to {MAX_OFFSET}"
    ),
]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        description="Run this POST at most once per key (per caller)",
    ),
]
Services = NamedDependency[GatewayServices]
"""The gateway's open services, injected by name (`provide_services`)."""
AppSettings = NamedDependency[Settings]
"""The gateway's settings, injected by name (`provide_settings`)."""


def provide_services(state: State) -> GatewayServices:
    services: GatewayServices = state.services
    return services


def provide_settings(state: State) -> Settings:
    settings: Settings = state.settings
    return settings


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    principal: Principal = request.scope["user"]  # set by PermissionGuard
    return principal


def command_context(request: Request[Any, Any, Any]) -> CommandContext:
    """Who asks, from where, under which request and trace.

    The actor and the client address are the ones the guard sealed with
    the caller's subject key: no personal data reaches an event in plain
    text.
    """
    principal = principal_of(request)
    return CommandContext(
        actor=principal.actor,
        request_id=request_id_of(request.scope),
        client_address=principal.client_address,
        trace_id=trace_id_of_current_span(),
    )


def encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


async def read_your_writes(services: GatewayServices, position: int) -> None:
    """Wait until the read models hold `position`, briefly; the write stands."""
    caught_up = await wait_for_position(
        services.pool, position, timeout=READ_YOUR_WRITES_TIMEOUT
    )
    if not caught_up:
        log.warning("read_model_lagging", position=position)


def request_identity(
    request: Request[Any, Any, Any], key: str | None, fingerprint: str
) -> RequestIdentity | None:
    """The identity an idempotency key is bound to, or None without a key."""
    key = check_key(key)
    if key is None:
        return None
    return RequestIdentity(
        principal=principal_of(request).key,
        key=key,
        method=request.method,
        path=request.url.path,
        fingerprint=fingerprint,
    )


async def json_identity(
    request: Request[Any, Any, Any], key: str | None
) -> RequestIdentity | None:
    """The identity of a JSON command: its body in canonical form."""
    if check_key(key) is None:
        return None
    body = await request.json()
    return request_identity(
        request, key, fingerprint(request.method, request.url.path, body)
    )


async def answer_command(
    services: GatewayServices,
    identity: RequestIdentity | None,
    *,
    status_code: int,
    run: Callable[[], Awaitable[BaseModel]],
) -> Response[Any]:
    """Run a command once per idempotency key and answer its receipt."""

    async def operation() -> bytes:
        return encode(await run())

    return await respond_once(
        services.idempotency, identity, status_code=status_code, operation=operation
    )


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the problem details a route may answer."""
    return {status: problem_spec(status) for status in _with_auth(statuses)}


def _with_auth(statuses: Iterable[int]) -> list[int]:
    return sorted({401, 403, 503, *statuses})


def problem_spec(status: int) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem,
        description=_PROBLEM_DESCRIPTIONS.get(status, "Problem details"),
        media_type=PROBLEM_MEDIA_TYPE,
        generate_examples=False,
    )


_PROBLEM_DESCRIPTIONS = {
    400: "Malformed request: invalid JSON, UTF-8 or parameters",
    401: "Missing or unknown bearer token",
    403: "Permission denied",
    404: "No such resource",
    409: "Conflict with current state, or idempotency key in progress",
    413: "Body too large",
    422: "Refused content, or idempotency key mismatch",
    503: "A dependency is temporarily unavailable",
}
