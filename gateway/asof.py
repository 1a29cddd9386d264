"""Reads `as_of` a past point, for auditors.

Every read route of projects, datasets and runs takes `?as_of=POSITION` or
`?as_of=<RFC 3339 instant>` and then answers what it would have answered
when the log ended at that point (see projections/pointintime.py for how an
instant resolves to a position). Such a read needs the AUDIT_READ
permission besides the route's own; the response carries the position it
answers as of in the `Animus-As-Of-Position` header.

Read-model routes answer from a snapshot schema `rm_asof_<P>`, built on
first use and reused (projections/asof.py explains the build, its cost, the
bound `ANIMUS_AS_OF_SNAPSHOTS` and the app role's narrow path to create
it); the timeline reads the log itself, up to P.

A malformed `as_of` answers 400 (so does a repeated one: gateway/params.py);
a negative one, or one before the first event, beyond the head, or in the
future answers 422; both name the parameter. Nothing is built for a refused
`as_of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from litestar.datastructures import ResponseHeader
from litestar.params import QueryParameter
from litestar.response import Response

from animus.db import translate_db_errors
from gateway.auth import Permission, Principal
from gateway.errors import BadRequest, PermissionDenied
from gateway.services import GatewayServices
from projections.asof import ensure_snapshot
from projections.pointintime import Point, PointError, resolve_point
from projections.projector import DEFAULT_SCHEMA

if TYPE_CHECKING:
    from litestar import Request

    from animus.settings import Settings

T = TypeVar("T")

AS_OF_HEADER = "Animus-As-Of-Position"

AsOf = Annotated[
    str | None,
    QueryParameter(
        required=False,
        description="Answer as of this log position or RFC 3339 instant "
        "(needs the audit:read permission); the answer's "
        f"{AS_OF_HEADER} header gives the position",
    ),
]

AS_OF_RESPONSE_HEADERS = [
    ResponseHeader(
        name=AS_OF_HEADER,
        documentation_only=True,
        description="With as_of: the log position the answer is as of",
    )
]


def permits(principal: Principal, permission: Permission) -> bool:
    """Whether `principal` holds `permission`.

    In `dev` auth mode every valid token holds every permission; RBAC will
    answer here from the principal's roles (a `permissions` set, when the
    principal carries one).
    """
    granted = getattr(principal, "permissions", None)
    return granted is None or permission in granted


def require_permission(principal: Principal, permission: Permission) -> None:
    """Refuse a principal who lacks `permission`.

    Raises:
        PermissionDenied: naming the permission.
    """
    if not permits(principal, permission):
        raise PermissionDenied(f"this read needs the {permission.value} permission")


@dataclass(frozen=True)
class ReadView:
    """Where a read looks: the live read models, or a snapshot as of a point."""

    schema: str = DEFAULT_SCHEMA
    position: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.position is None else {AS_OF_HEADER: str(self.position)}

    def answer(self, content: T) -> Response[T]:
        """The route's answer, with the as-of header when there is one."""
        return Response(content=content, headers=self.headers)


LIVE = ReadView()


async def as_of_point(
    request: Request[Any, Any, Any], services: GatewayServices, as_of: str | None
) -> Point | None:
    """The point `as_of` names, after checking AUDIT_READ; None without it.

    Raises:
        PermissionDenied: the caller lacks AUDIT_READ.
        BadRequest: `as_of` is malformed.
        PointError: `as_of` names no prefix of the log (422).
    """
    if as_of is None:
        return None
    principal: Principal = request.scope["user"]  # set by PermissionGuard
    require_permission(principal, Permission.AUDIT_READ)
    try:
        with translate_db_errors():
            async with services.pool.connection() as conn:
                return await resolve_point(conn, as_of, what="as_of")
    except PointError as exc:
        if exc.malformed:
            raise BadRequest(exc.detail) from exc
        raise


async def read_view(
    request: Request[Any, Any, Any],
    services: GatewayServices,
    settings: Settings,
    as_of: str | None,
) -> ReadView:
    """The live read models, or the snapshot as of `as_of` (built if needed).

    Raises:
        PermissionDenied, BadRequest, PointError: see `as_of_point`.
        StoreError: the snapshot could not be built.
    """
    point = await as_of_point(request, services, as_of)
    if point is None:
        return LIVE
    schema = await ensure_snapshot(
        services.pool, point.position, keep=settings.as_of_snapshots
    )
    return ReadView(schema=schema, position=point.position)
