"""Evidence routes: the log's public key, signed checkpoints, and inclusion
and consistency proofs against them (animus/evidence/proofs.py).

Everything here is a copy of what the checkpointer signed or a proof an
outsider checks with the public key alone, so the routes only read.
"""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.params import PathParameter, QueryParameter

from animus.errors import NotFoundError
from animus.evidence.checkpoints import (
    StoredCheckpoint,
    checkpoint_at,
    latest_checkpoint,
    list_checkpoints,
)
from animus.evidence.keys import verifier
from animus.evidence.proofs import consistency_proof_json, inclusion_proof_json
from contracts.evidence import (
    CheckpointPage,
    ConsistencyProof,
    EvidenceKey,
    InclusionProof,
    SignedCheckpoint,
)
from gateway.auth import PERMISSION_OPT, Permission
from gateway.routing import AppSettings, Limit, Services, problems

MAX_TREE_SIZE = 2**62
READ = {PERMISSION_OPT: Permission.EVIDENCE_READ}

TreeSize = Annotated[
    int, PathParameter(ge=1, le=MAX_TREE_SIZE, description="The checkpoint's size")
]
Position = Annotated[
    int, QueryParameter(ge=1, le=MAX_TREE_SIZE, description="The event's position")
]
ProofTreeSize = Annotated[
    int | None,
    QueryParameter(
        required=False,
        ge=1,
        le=MAX_TREE_SIZE,
        description="A checkpoint's tree size (default: the latest checkpoint)",
    ),
]
Before = Annotated[
    int | None,
    QueryParameter(
        required=False,
        ge=1,
        le=MAX_TREE_SIZE,
        description="Only checkpoints smaller than this tree size (paging)",
    ),
]
First = Annotated[
    int, QueryParameter(ge=1, le=MAX_TREE_SIZE, description="The older checkpoint")
]
Second = Annotated[
    int, QueryParameter(ge=1, le=MAX_TREE_SIZE, description="The newer checkpoint")
]


def _signed(checkpoint: StoredCheckpoint) -> SignedCheckpoint:
    return SignedCheckpoint.model_validate(checkpoint.as_json())


@get("/evidence/key", opt=READ, responses=problems(404))
async def get_key(settings: AppSettings) -> EvidenceKey:
    """The public key (signed-note vkey) that verifies every checkpoint."""
    vkey = verifier(settings)  # ANIMUS_CHECKPOINT_VERIFY_KEY: no signing key here
    if vkey is None:
        raise NotFoundError("no checkpoint signing key exists yet")
    return EvidenceKey(vkey=str(vkey), key_id=vkey.key_id, origin=vkey.name)


@get("/evidence/checkpoints", opt=READ, responses=problems(400))
async def get_checkpoints(
    services: Services, limit: Limit = 100, before: Before = None
) -> CheckpointPage:
    """Signed checkpoints, newest first, `limit` per page."""
    async with services.pool.connection() as conn:
        found = await list_checkpoints(conn, before=before, limit=limit)
    more = len(found) == limit and found[-1].tree_size > 1
    return CheckpointPage(
        items=[_signed(c) for c in found],
        next_before=found[-1].tree_size if more else None,
    )


@get("/evidence/checkpoints/latest", opt=READ, responses=problems(404))
async def get_latest_checkpoint(services: Services) -> SignedCheckpoint:
    """The newest signed checkpoint."""
    async with services.pool.connection() as conn:
        found = await latest_checkpoint(conn)
    if found is None:
        raise NotFoundError("no checkpoint is signed yet")
    return _signed(found)


@get("/evidence/checkpoints/{tree_size:int}", opt=READ, responses=problems(400, 404))
async def get_checkpoint(services: Services, tree_size: TreeSize) -> SignedCheckpoint:
    """The checkpoint of exactly `tree_size` events."""
    async with services.pool.connection() as conn:
        found = await checkpoint_at(conn, tree_size)
    if found is None:
        raise NotFoundError(f"no checkpoint at tree size {tree_size}")
    return _signed(found)


@get("/evidence/proofs/inclusion", opt=READ, responses=problems(400, 404, 422))
async def get_inclusion_proof(
    services: Services, position: Position, tree_size: ProofTreeSize = None
) -> InclusionProof:
    """The audit path of event `position` under a checkpoint's root.

    404 when the checkpoint does not exist, 422 when the position is not in
    its tree.
    """
    async with services.pool.connection() as conn:
        proof = await inclusion_proof_json(conn, position, tree_size)
    return InclusionProof.model_validate(proof)


@get("/evidence/proofs/consistency", opt=READ, responses=problems(400, 404, 422))
async def get_consistency_proof(
    services: Services, first: First, second: Second
) -> ConsistencyProof:
    """The proof that checkpoint `first`'s tree is a prefix of `second`'s.

    404 when either checkpoint does not exist, 422 when first > second.
    """
    async with services.pool.connection() as conn:
        proof = await consistency_proof_json(conn, first, second)
    return ConsistencyProof.model_validate(proof)


ROUTES = [
    get_key,
    get_checkpoints,
    get_latest_checkpoint,
    get_checkpoint,
    get_inclusion_proof,
    get_consistency_proof,
]
