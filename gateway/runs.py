"""Run routes: submit, list, read, cancel, timeline, lineage and artifacts."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Response, Stream

from animus.errors import ValidationError
from contracts.api import (
    ArtifactList,
    CancelReceipt,
    Run,
    RunLineage,
    RunList,
    RunReceipt,
    RunTimeline,
)
from contracts.commands import CancelRun
from contracts.runs import RunSpec
from gateway.asof import (
    AS_OF_RESPONSE_HEADERS,
    AsOf,
    ReadView,
    as_of_point,
    read_view,
)
from gateway.auth import PERMISSION_OPT, Permission
from gateway.downloads import stream_object
from gateway.personal import open_timeline_actors, show_actor, show_actors
from gateway.routing import (
    AppSettings,
    IdempotencyKey,
    Limit,
    Offset,
    ProjectId,
    RunId,
    Services,
    answer_command,
    command_context,
    json_identity,
    problems,
    read_your_writes,
)
from projections import queries

StatusFilter = Annotated[
    str | None,
    QueryParameter(required=False, description="Only runs in this status"),
]


@post(
    "/projects/{project_id:str}/runs",
    opt={PERMISSION_OPT: Permission.RUN_WRITE},
    status_code=201,
    responses=problems(400, 404, 409, 413, 422),
)
async def submit_run(
    request: Request[Any, Any, Any],
    services: Services,
    project_id: ProjectId,
    data: JSONBody[RunSpec],
    idempotency_key: IdempotencyKey = None,
) -> Response[RunReceipt]:
    """Submit a run; every input must name a committed dataset version."""
    identity = await json_identity(request, idempotency_key)

    async def run() -> RunReceipt:
        ctx = command_context(request)
        result = await services.handlers.submit_run(ctx, project_id, data)
        await read_your_writes(services, result["position"])
        return RunReceipt.model_validate({**result, "project_id": project_id})

    return await answer_command(services, identity, status_code=201, run=run)


@get(
    "/projects/{project_id:str}/runs",
    opt={PERMISSION_OPT: Permission.RUN_READ},
    responses=problems(400, 404, 422),
    response_headers=AS_OF_RESPONSE_HEADERS,
)
async def list_runs(
    request: Request[Any, Any, Any],
    services: Services,
    settings: AppSettings,
    project_id: ProjectId,
    status: StatusFilter = None,
    limit: Limit = 50,
    offset: Offset = 0,
    as_of: AsOf = None,
) -> Response[RunList]:
    """Runs of a project, newest first."""
    view = await read_view(request, services, settings, as_of)
    await queries.get_project(services.pool, project_id, schema=view.schema)
    rows = await queries.list_runs(
        services.pool,
        project_id,
        status=status,
        limit=limit,
        offset=offset,
        schema=view.schema,
    )
    rows = await show_actors(services.subjects, rows, "submitted_by")
    return view.answer(
        RunList.model_validate({"items": rows, "limit": limit, "offset": offset})
    )


@get(
    "/projects/{project_id:str}/runs/{run_id:str}",
    opt={PERMISSION_OPT: Permission.RUN_READ},
    responses=problems(400, 404, 422),
    response_headers=AS_OF_RESPONSE_HEADERS,
)
async def get_run(
    request: Request[Any, Any, Any],
    services: Services,
    settings: AppSettings,
    project_id: ProjectId,
    run_id: RunId,
    as_of: AsOf = None,
) -> Response[Run]:
    """One run with its spec, plan, metrics and artifacts."""
    view = await read_view(request, services, settings, as_of)
    row = await queries.get_run(services.pool, project_id, run_id, schema=view.schema)
    return view.answer(
        Run.model_validate(await show_actor(services.subjects, row, "submitted_by"))
    )


@post(
    "/projects/{project_id:str}/runs/{run_id:str}/cancel",
    opt={PERMISSION_OPT: Permission.RUN_WRITE},
    status_code=202,
    responses=problems(400, 404, 409, 413, 422),
)
async def cancel_run(
    request: Request[Any, Any, Any],
    services: Services,
    project_id: ProjectId,
    run_id: RunId,
    data: JSONBody[CancelRun | None] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response[CancelReceipt]:
    """Ask for a run to stop; the executor confirms with RunCanceled."""
    identity = await json_identity(request, idempotency_key)
    command = data or CancelRun()

    async def run() -> CancelReceipt:
        ctx = command_context(request)
        result = await services.handlers.cancel_run(ctx, project_id, run_id, command)
        await read_your_writes(services, result["position"])
        return CancelReceipt.model_validate(
            {**result, "project_id": project_id, "run_id": run_id}
        )

    return await answer_command(services, identity, status_code=202, run=run)


@get(
    "/projects/{project_id:str}/runs/{run_id:str}/timeline",
    opt={PERMISSION_OPT: Permission.RUN_READ},
    responses=problems(400, 404, 422),
    response_headers=AS_OF_RESPONSE_HEADERS,
)
async def run_timeline(
    request: Request[Any, Any, Any],
    services: Services,
    project_id: ProjectId,
    run_id: RunId,
    as_of: AsOf = None,
) -> Response[RunTimeline]:
    """Every event of the run, in order, straight from the log."""
    point = await as_of_point(request, services, as_of)
    view = ReadView(position=point.position if point else None)
    events = await queries.run_timeline(
        services.pool, project_id, run_id, as_of=view.position
    )
    events = await open_timeline_actors(services.subjects, events)
    return view.answer(
        RunTimeline.model_validate(
            {"project_id": project_id, "run_id": run_id, "events": events}
        )
    )


@get(
    "/projects/{project_id:str}/runs/{run_id:str}/lineage",
    opt={PERMISSION_OPT: Permission.RUN_READ},
    responses=problems(400, 404, 422),
    response_headers=AS_OF_RESPONSE_HEADERS,
)
async def run_lineage(
    request: Request[Any, Any, Any],
    services: Services,
    settings: AppSettings,
    project_id: ProjectId,
    run_id: RunId,
    as_of: AsOf = None,
) -> Response[RunLineage]:
    """What the run consumed and produced, with digests."""
    view = await read_view(request, services, settings, as_of)
    lineage = await queries.run_lineage(
        services.pool, project_id, run_id, schema=view.schema
    )
    return view.answer(RunLineage.model_validate(lineage))


@get(
    "/projects/{project_id:str}/runs/{run_id:str}/artifacts",
    opt={PERMISSION_OPT: Permission.RUN_READ},
    responses=problems(400, 404, 422),
    response_headers=AS_OF_RESPONSE_HEADERS,
)
async def list_artifacts(
    request: Request[Any, Any, Any],
    services: Services,
    settings: AppSettings,
    project_id: ProjectId,
    run_id: RunId,
    as_of: AsOf = None,
) -> Response[ArtifactList]:
    """The run's artifacts with their digests and sizes."""
    view = await read_view(request, services, settings, as_of)
    run = await queries.get_run(services.pool, project_id, run_id, schema=view.schema)
    return view.answer(ArtifactList.model_validate({"items": run.get("artifacts", [])}))


@get(
    "/projects/{project_id:str}/runs/{run_id:str}/artifacts/{name:path}",
    opt={PERMISSION_OPT: Permission.RUN_READ},
    media_type="application/octet-stream",
    responses=problems(400, 404, 422),
    response_headers=AS_OF_RESPONSE_HEADERS,
)
async def download_artifact(
    request: Request[Any, Any, Any],
    services: Services,
    settings: AppSettings,
    project_id: ProjectId,
    run_id: RunId,
    name: FromPath[PurePosixPath],
    as_of: AsOf = None,
) -> Stream:
    """The bytes of one artifact (the name may contain `/`), streamed."""
    view = await read_view(request, services, settings, as_of)
    artifact_name = artifact_name_of(name)
    row = await queries.get_artifact(
        services.pool, project_id, run_id, artifact_name, schema=view.schema
    )
    return await stream_object(
        services.blobs,
        key=row["object_key"],
        sha256=row["sha256"],
        size=row["size"],
        media_type="application/octet-stream",
        headers=view.headers,
    )


def artifact_name_of(path: PurePosixPath) -> str:
    """The artifact name in a URL path; no empty, `.` or `..` segments.

    Raises:
        ValidationError: the name could escape the run's outputs.
    """
    segments = [part for part in path.parts if part != "/"]
    if not segments or any(part in {".", ".."} or "\\" in part for part in segments):
        raise ValidationError("an artifact name must not contain '.' or '..' segments")
    return "/".join(segments)


ROUTES = [
    submit_run,
    list_runs,
    get_run,
    cancel_run,
    run_timeline,
    run_lineage,
    list_artifacts,
    download_artifact,
]
