"""Inclusion and consistency proofs against signed checkpoints, as JSON.

The API and the CLI answer with these objects (formats in
contracts/evidence.md): an inclusion proof puts one event's leaf under a
checkpoint's root, a consistency proof shows one checkpoint's tree is a
prefix of another's. Both are proved against stored checkpoints only, so
every root in a proof is one the log has signed and published.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from animus import merkle
from animus.errors import NotFoundError, ValidationError
from animus.evidence import tree
from animus.evidence.checkpoints import (
    StoredCheckpoint,
    checkpoint_at,
    latest_checkpoint,
)

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = [
    "CONSISTENCY_FORMAT",
    "INCLUSION_FORMAT",
    "consistency_proof_json",
    "find_checkpoint",
    "inclusion_proof_json",
]

INCLUSION_FORMAT = "animus-inclusion-proof/v1"
CONSISTENCY_FORMAT = "animus-consistency-proof/v1"


async def find_checkpoint(
    conn: AsyncConnection[Any], tree_size: int | None
) -> StoredCheckpoint:
    """The checkpoint of `tree_size`, or the latest when None.

    Raises:
        NotFoundError: no such checkpoint (or none signed yet).
    """
    if tree_size is None:
        found = await latest_checkpoint(conn)
        if found is None:
            raise NotFoundError("no checkpoint is signed yet")
        return found
    found = await checkpoint_at(conn, tree_size)
    if found is None:
        raise NotFoundError(f"no checkpoint at tree size {tree_size}")
    return found


async def inclusion_proof_json(
    conn: AsyncConnection[Any], position: int, tree_size: int | None = None
) -> dict[str, Any]:
    """The inclusion proof of event `position` under a checkpoint.

    Raises:
        NotFoundError: the checkpoint does not exist.
        ValidationError: the position is not in the checkpoint's tree.
    """
    checkpoint = await find_checkpoint(conn, tree_size)
    size = checkpoint.tree_size
    if not 1 <= position <= size:
        raise ValidationError(
            f"position {position} is not in the tree of checkpoint {size} "
            f"(positions 1..{size})",
            field="position",
        )
    path = await tree.inclusion_proof(conn, position - 1, size)
    cur = await conn.execute(
        "SELECT textsend(canonical) FROM events WHERE position = %s", (position,)
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFoundError(f"event {position} does not exist")
    return {
        "format": INCLUSION_FORMAT,
        "position": position,
        "leaf_index": position - 1,
        "tree_size": size,
        "leaf_hash": merkle.leaf_hash(bytes(row[0])).hex(),
        "root_hash": checkpoint.root_hash.hex(),
        "path": [node.hex() for node in path],
    }


async def consistency_proof_json(
    conn: AsyncConnection[Any], first: int, second: int
) -> dict[str, Any]:
    """The consistency proof from checkpoint `first` to checkpoint `second`.

    Raises:
        NotFoundError: either checkpoint does not exist.
        ValidationError: `first` is larger than `second`.
    """
    if first > second:
        raise ValidationError(
            f"first ({first}) must not be larger than second ({second})",
            field="first",
        )
    old = await find_checkpoint(conn, first)
    new = await find_checkpoint(conn, second)
    path = await tree.consistency_proof(conn, first, second)
    return {
        "format": CONSISTENCY_FORMAT,
        "first": first,
        "second": second,
        "first_root": old.root_hash.hex(),
        "second_root": new.root_hash.hex(),
        "path": [node.hex() for node in path],
    }
