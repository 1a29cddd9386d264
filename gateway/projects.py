"""Project routes: create, list, read."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.params import JSONBody
from litestar.response import Response

from contracts.api import Project, ProjectList, ProjectReceipt
from contracts.commands import CreateProject
from gateway.asof import AS_OF_RESPONSE_HEADERS, AsOf, read_view
from gateway.auth import PERMISSION_OPT, Permission
from gateway.personal import show_actor, show_actors
from gateway.routing import (
    AppSettings,
    IdempotencyKey,
    Limit,
    Offset,
    ProjectId,
    Services,
    answer_command,
    command_context,
    json_identity,
    problems,
    read_your_writes,
)
from projections import queries


@post(
    "/projects",
    opt={PERMISSION_OPT: Permission.PROJECT_WRITE},
    status_code=201,
    responses=problems(400, 409, 413, 422),
)
async def create_project(
    request: Request[Any, Any, Any],
    services: Services,
    data: JSONBody[CreateProject],
    idempotency_key: IdempotencyKey = None,
) -> Response[ProjectReceipt]:
    """Create a project; its id is chosen by the caller."""
    identity = await json_identity(request, idempotency_key)

    async def run() -> ProjectReceipt:
        result = await services.handlers.create_project(command_context(request), data)
        await read_your_writes(services, result["position"])
        return ProjectReceipt(
            position=result["position"],
            project_id=data.project_id,
            name=data.name,
            description=data.description,
        )

    return await answer_command(services, identity, status_code=201, run=run)


@get(
    "/projects",
    opt={PERMISSION_OPT: Permission.PROJECT_READ},
    responses=problems(400, 422),
    response_headers=AS_OF_RESPONSE_HEADERS,
)
async def list_projects(
    request: Request[Any, Any, Any],
    services: Services,
    settings: AppSettings,
    limit: Limit = 50,
    offset: Offset = 0,
    as_of: AsOf = None,
) -> Response[ProjectList]:
    """Projects in the order they were created."""
    view = await read_view(request, services, settings, as_of)
    rows = await queries.list_projects(
        services.pool, limit=limit, offset=offset, schema=view.schema
    )
    rows = await show_actors(services.subjects, rows, "created_by")
    return view.answer(
        ProjectList.model_validate({"items": rows, "limit": limit, "offset": offset})
    )


@get(
    "/projects/{project_id:str}",
    opt={PERMISSION_OPT: Permission.PROJECT_READ},
    responses=problems(400, 404, 422),
    response_headers=AS_OF_RESPONSE_HEADERS,
)
async def get_project(
    request: Request[Any, Any, Any],
    services: Services,
    settings: AppSettings,
    project_id: ProjectId,
    as_of: AsOf = None,
) -> Response[Project]:
    """One project."""
    view = await read_view(request, services, settings, as_of)
    row = await queries.get_project(services.pool, project_id, schema=view.schema)
    return view.answer(
        Project.model_validate(await show_actor(services.subjects, row, "created_by"))
    )


ROUTES = [create_project, list_projects, get_project]
