"""The auditor's evidence bundle route: one run's evidence as one tar archive.

The bundle is made by animus/evidence/export.py, exactly as `animus evidence
export` makes it, and checked offline by `animus evidence verify` or any
verifier written from contracts/evidence.md.
"""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.params import QueryParameter
from litestar.response import Response

from animus.evidence.export import CheckpointPending, export_bundle
from animus.evidence.keys import verifier
from gateway.auth import PERMISSION_OPT, Permission
from gateway.routing import AppSettings, ProjectId, RunId, Services, problems

BUNDLE_MEDIA_TYPE = "application/x-tar"

ArtifactContent = Annotated[
    bool,
    QueryParameter(
        description="Include the artifacts' bytes (their sha256 is proven either way)"
    ),
]


@get(
    "/projects/{project_id:str}/runs/{run_id:str}/evidence",
    opt={PERMISSION_OPT: Permission.AUDIT_READ},
    media_type=BUNDLE_MEDIA_TYPE,
    responses=problems(404, 409),
)
async def export_run_evidence(
    services: Services,
    settings: AppSettings,
    project_id: ProjectId,
    run_id: RunId,
    artifact_content: ArtifactContent = True,
) -> Response[bytes]:
    """The run's evidence bundle, a tar archive to verify offline.

    It holds every event of the run and the commits of its dataset
    versions, each with an inclusion proof against one signed checkpoint,
    that checkpoint and its public key, the artifacts' bytes, and a manifest
    (contracts/evidence.md). 409 while no signed checkpoint covers the run's
    last event yet; ask again a few seconds later.
    """
    vkey = verifier(settings)
    if vkey is None:
        raise CheckpointPending("no checkpoint has been signed yet")
    async with services.pool.connection() as conn:
        exported = await export_bundle(
            conn,
            services.blobs if artifact_content else None,
            run_id=run_id,
            project_id=project_id,
            vkey=str(vkey),
        )
    return Response(
        exported.data,
        media_type=BUNDLE_MEDIA_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="evidence-{run_id}.tar"'
        },
    )


ROUTES = [export_run_evidence]
