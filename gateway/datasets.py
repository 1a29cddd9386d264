"""Dataset routes: register, read, upload versions and download their content.

An upload streams the raw request body into the blob store in parts while
its sha256 is computed; the version is committed only after the object is
complete and verified. The dataset is checked writable before S3 is
touched, and any failure on the way aborts the multipart upload, so an
interrupted or refused upload leaves neither a version nor stray parts.

The order is fixed (CASES C08): S3 completes the staging object, the digest
is checked, the object is copied to `sha256/<hex>`, and only then is
`DatasetVersionCommitted` appended. So no event can name an object that S3
failed to complete (variant D cannot happen); a process that dies between
the copy and the append leaves a blob no event names, which the sweeper
removes after its bound (`animus.sweeper`). The copy and the append run
under the blob's settle lock, so the sweeper never deletes a blob in between.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, unquote

from litestar import Request, get, post
from litestar.openapi.spec import (
    OpenAPIMediaType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import FromPath, HeaderParameter, JSONBody
from litestar.response import Response, Stream
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from animus.errors import ValidationError
from animus.storage import StagedBlob, TooLarge
from animus.sweeper import settle_lock
from contracts._text import ShortText
from contracts.api import (
    Dataset,
    DatasetList,
    DatasetReceipt,
    DatasetVersion,
    DatasetVersionList,
    DatasetVersionReceipt,
)
from contracts.commands import RegisterDataset
from gateway.asof import AS_OF_RESPONSE_HEADERS, AsOf, read_view
from gateway.auth import PERMISSION_OPT, Permission
from gateway.downloads import stream_object
from gateway.idempotency import (
    RequestIdentity,
    check_key,
    replay,
    run_claimed,
    upload_fingerprint,
)
from gateway.limits import stream_body, too_large
from gateway.personal import show_actor, show_actors
from gateway.routing import (
    AppSettings,
    DatasetId,
    IdempotencyKey,
    ProjectId,
    Services,
    answer_command,
    command_context,
    encode,
    json_identity,
    problems,
    read_your_writes,
    request_identity,
)
from gateway.services import GatewayServices
from projections import queries

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_FILENAME = TypeAdapter(ShortText)
DEFAULT_CONTENT_TYPE = "application/octet-stream"

ContentSha256 = Annotated[
    str | None,
    HeaderParameter(
        name="X-Content-SHA256",
        required=False,
        description="sha256 of the whole file (64 hex); refused on mismatch",
    ),
]
Filename = Annotated[
    str | None,
    HeaderParameter(
        name="X-Filename",
        required=False,
        description="Original file name, percent-encoded UTF-8",
    ),
]


@post(
    "/projects/{project_id:str}/datasets",
    opt={PERMISSION_OPT: Permission.DATASET_WRITE},
    status_code=201,
    responses=problems(400, 404, 409, 413, 422),
)
async def register_dataset(
    request: Request[Any, Any, Any],
    services: Services,
    project_id: ProjectId,
    data: JSONBody[RegisterDataset],
    idempotency_key: IdempotencyKey = None,
) -> Response[DatasetReceipt]:
    """Register a dataset in a project; versions are uploaded afterwards."""
    identity = await json_identity(request, idempotency_key)

    async def run() -> DatasetReceipt:
        ctx = command_context(request)
        result = await services.handlers.register_dataset(ctx, project_id, data)
        await read_your_writes(services, result["position"])
        return DatasetReceipt(
            position=result["position"],
            project_id=project_id,
            dataset_id=data.dataset_id,
            name=data.name,
            description=data.description,
        )

    return await answer_command(services, identity, status_code=201, run=run)


@get(
    "/projects/{project_id:str}/datasets",
    opt={PERMISSION_OPT: Permission.DATASET_READ},
    responses=problems(400, 404, 422),
    response_headers=AS_OF_RESPONSE_HEADERS,
)
async def list_datasets(
    request: Request[Any, Any, Any],
    services: Services,
    settings: AppSettings,
    project_id: ProjectId,
    as_of: AsOf = None,
) -> Response[DatasetList]:
    """The datasets of a project, by id."""
    view = await read_view(request, services, settings, as_of)
    await queries.get_project(services.pool, project_id, schema=view.schema)
    rows = await queries.list_datasets(services.pool, project_id, schema=view.schema)
    rows = await show_actors(services.subjects, rows, "created_by")
    return view.answer(DatasetList.model_validate({"items": rows}))


@get(
    "/projects/{project_id:str}/datasets/{dataset_id:str}",
    opt={PERMISSION_OPT: Permission.DATASET_READ},
    responses=problems(400, 404, 422),
    response_headers=AS_OF_RESPONSE_HEADERS,
)
async def get_dataset(
    request: Request[Any, Any, Any],
    services: Services,
    settings: AppSettings,
    project_id: ProjectId,
    dataset_id: DatasetId,
    as_of: AsOf = None,
) -> Response[Dataset]:
    """One dataset with its newest committed version number."""
    view = await read_view(request, services, settings, as_of)
    row = await queries.get_dataset(
        services.pool, project_id, dataset_id, schema=view.schema
    )
    return view.answer(
        Dataset.model_validate(await show_actor(services.subjects, row, "created_by"))
    )


class _RawBodyOperation(Operation):
    """Documents the upload's request body: the raw bytes of the file."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description="The file, as the raw request body (streamed)",
            content={
                "application/octet-stream": OpenAPIMediaType(
                    schema=Schema(type="string", format="binary")  # type: ignore[arg-type]
                )
            },
        )


@dataclass(frozen=True, kw_only=True)
class _UploadHeaders:
    filename: str
    content_type: str
    declared_sha256: str | None


@post(
    "/projects/{project_id:str}/datasets/{dataset_id:str}/versions",
    opt={PERMISSION_OPT: Permission.DATASET_WRITE},
    status_code=201,
    request_max_body_size=None,
    operation_class=_RawBodyOperation,
    responses=problems(400, 404, 409, 413, 422),
)
async def upload_dataset_version(
    request: Request[Any, Any, Any],
    services: Services,
    settings: AppSettings,
    project_id: ProjectId,
    dataset_id: DatasetId,
    content_sha256: ContentSha256 = None,
    filename: Filename = None,
    idempotency_key: IdempotencyKey = None,
) -> Response[DatasetVersionReceipt]:
    """Upload the next version of a dataset; the body is the file itself.

    The size limit is `ANIMUS_MAX_UPLOAD_BYTES`, checked from Content-Length
    before anything is stored and again on the bytes that arrive.
    """
    check_key(idempotency_key)
    headers = _upload_headers(request, content_sha256, filename)
    _check_announced_size(request, settings.max_upload_bytes)
    await services.handlers.check_dataset_writable(project_id, dataset_id)
    early = await _replay_before_upload(
        services, request, idempotency_key, headers.declared_sha256
    )
    if early is not None:
        return early

    try:
        async with services.blobs.staged(
            stream_body(request),
            part_size=settings.upload_part_bytes,
            max_bytes=settings.max_upload_bytes,
            expected_sha256=headers.declared_sha256,
        ) as staged:
            return await _commit_upload(
                request,
                services,
                project_id,
                dataset_id,
                headers,
                staged,
                idempotency_key,
            )
    except TooLarge as exc:  # more arrived than Content-Length announced
        raise _upload_too_large(settings.max_upload_bytes) from exc


async def _commit_upload(
    request: Request[Any, Any, Any],
    services: GatewayServices,
    project_id: str,
    dataset_id: str,
    headers: _UploadHeaders,
    staged: StagedBlob,
    idempotency_key: str | None,
) -> Response[DatasetVersionReceipt]:
    """Settle a complete, verified staging object and append its version."""
    identity = request_identity(
        request,
        idempotency_key,
        upload_fingerprint(request.method, request.url.path, staged.sha256),
    )
    if identity is not None:
        stored = await services.idempotency.claim(identity)
        if stored is not None:
            return replay(stored)

    async def commit() -> bytes:
        async with settle_lock(services.pool.conninfo, staged.sha256):
            blob = await services.blobs.settle(staged)
            result = await services.handlers.commit_dataset_version(
                command_context(request),
                project_id,
                dataset_id,
                sha256=blob.sha256,
                size=blob.size,
                object_key=blob.key,
                filename=headers.filename,
                content_type=headers.content_type,
            )
        await read_your_writes(services, result["position"])
        return encode(
            DatasetVersionReceipt(
                position=result["position"],
                project_id=project_id,
                dataset_id=dataset_id,
                version=result["version"],
                sha256=blob.sha256,
                size=blob.size,
                filename=headers.filename,
                content_type=headers.content_type,
            )
        )

    body = await run_claimed(services.idempotency, identity, commit)
    if identity is not None:
        await services.idempotency.complete(identity, status_code=201, body=body)
    return Response(content=body, status_code=201, media_type="application/json")


def _upload_headers(
    request: Request[Any, Any, Any], content_sha256: str | None, filename: str | None
) -> _UploadHeaders:
    """Check the upload's headers before any byte is read.

    Raises:
        ValidationError: a malformed digest or file name.
    """
    declared = None
    if content_sha256 is not None:
        if not _SHA256.match(content_sha256):
            raise ValidationError("X-Content-SHA256 must be 64 hexadecimal digits")
        declared = content_sha256.lower()
    name = ""
    if filename:
        try:
            name = _FILENAME.validate_python(unquote(filename, errors="strict"))
        except (UnicodeDecodeError, PydanticValidationError) as exc:
            raise ValidationError(
                "X-Filename must be percent-encoded UTF-8 text of at most "
                "200 characters, without NUL"
            ) from exc
    media_type = request.headers.get("content-type") or DEFAULT_CONTENT_TYPE
    return _UploadHeaders(
        filename=name, content_type=media_type[:200], declared_sha256=declared
    )


def _check_announced_size(request: Request[Any, Any, Any], limit: int) -> None:
    announced = request.content_length
    if announced is not None and announced > limit:
        raise _upload_too_large(limit)


def _upload_too_large(limit: int) -> TooLarge:
    return too_large("the upload", limit, "ANIMUS_MAX_UPLOAD_BYTES")


async def _replay_before_upload(
    services: GatewayServices,
    request: Request[Any, Any, Any],
    key: str | None,
    declared_sha256: str | None,
) -> Response[Any] | None:
    """With a declared digest, a replay or a mismatch needs no upload."""
    if declared_sha256 is None:
        return None
    identity: RequestIdentity | None = request_identity(
        request,
        key,
        upload_fingerprint(request.method, request.url.path, declared_sha256),
    )
    if identity is None:
        return None
    stored = await services.idempotency.peek(identity)
    return None if stored is None else replay(stored)


@get(
    "/projects/{project_id:str}/datasets/{dataset_id:str}/versions",
    opt={PERMISSION_OPT: Permission.DATASET_READ},
    responses=problems(400, 404, 422),
    response_headers=AS_OF_RESPONSE_HEADERS,
)
async def list_dataset_versions(
    request: Request[Any, Any, Any],
    services: Services,
    settings: AppSettings,
    project_id: ProjectId,
    dataset_id: DatasetId,
    as_of: AsOf = None,
) -> Response[DatasetVersionList]:
    """The committed versions of a dataset, oldest first."""
    view = await read_view(request, services, settings, as_of)
    await queries.get_dataset(services.pool, project_id, dataset_id, schema=view.schema)
    rows = await queries.list_dataset_versions(
        services.pool, project_id, dataset_id, schema=view.schema
    )
    rows = await show_actors(services.subjects, rows, "committed_by")
    return view.answer(DatasetVersionList.model_validate({"items": rows}))


@get(
    "/projects/{project_id:str}/datasets/{dataset_id:str}/versions/{version:int}",
    opt={PERMISSION_OPT: Permission.DATASET_READ},
    responses=problems(400, 404, 422),
    response_headers=AS_OF_RESPONSE_HEADERS,
)
async def get_dataset_version(
    request: Request[Any, Any, Any],
    services: Services,
    settings: AppSettings,
    project_id: ProjectId,
    dataset_id: DatasetId,
    version: FromPath[int],
    as_of: AsOf = None,
) -> Response[DatasetVersion]:
    """One committed version with its sha256."""
    view = await read_view(request, services, settings, as_of)
    row = await queries.get_dataset_version(
        services.pool, project_id, dataset_id, version, schema=view.schema
    )
    return view.answer(
        DatasetVersion.model_validate(
            await show_actor(services.subjects, row, "committed_by")
        )
    )


@get(
    "/projects/{project_id:str}/datasets/{dataset_id:str}/versions/{version:int}"
    "/content",
    opt={PERMISSION_OPT: Permission.DATASET_READ},
    media_type="application/octet-stream",
    responses=problems(400, 404, 422),
    response_headers=AS_OF_RESPONSE_HEADERS,
)
async def download_dataset_version(
    request: Request[Any, Any, Any],
    services: Services,
    settings: AppSettings,
    project_id: ProjectId,
    dataset_id: DatasetId,
    version: FromPath[int],
    as_of: AsOf = None,
) -> Stream:
    """The bytes of a committed version, streamed; X-Content-SHA256 to verify."""
    view = await read_view(request, services, settings, as_of)
    row = await queries.get_dataset_version(
        services.pool, project_id, dataset_id, version, schema=view.schema
    )
    headers = dict(view.headers)
    if row.get("filename"):
        headers["Content-Disposition"] = (
            f"attachment; filename*=UTF-8''{quote(row['filename'], safe='')}"
        )
    return await stream_object(
        services.blobs,
        key=row["object_key"],
        sha256=row["sha256"],
        size=row["size"],
        media_type=row["content_type"],
        headers=headers,
    )


ROUTES = [
    register_dataset,
    list_datasets,
    get_dataset,
    upload_dataset_version,
    list_dataset_versions,
    get_dataset_version,
    download_dataset_version,
]
