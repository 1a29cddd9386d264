"""Stored checkpoints: the signed tree heads in the `checkpoints` table.

A checkpoint is written once by the checkpointer (animus/evidence/
checkpointer.py) and never changed; the table refuses UPDATE and DELETE.
These functions read them for the API, the CLI, the verifier and the bundle
exporter. The JSON form (`StoredCheckpoint.as_json`) is the one published on
the bus and served by the API (contracts/evidence.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from animus.chain import format_timestamp

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = [
    "StoredCheckpoint",
    "checkpoint_at",
    "checkpoint_covering",
    "checkpoints_after",
    "insert_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
]

_COLUMNS = "tree_size, root_hash, chain_head, key_id, signed_at, note"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredCheckpoint:
    """One signed tree head as stored: positions 1..tree_size."""

    tree_size: int
    root_hash: bytes
    chain_head: bytes
    key_id: str
    signed_at: datetime
    note: str

    @property
    def origin(self) -> str:
        return self.note.split("\n", 1)[0]

    def as_json(self) -> dict[str, Any]:
        """The checkpoint JSON of the API and the bus."""
        return {
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "chain_head": self.chain_head.hex(),
            "key_id": self.key_id,
            "origin": self.origin,
            "signed_at": format_timestamp(self.signed_at),
            "note": self.note,
        }


def _record(row: tuple[Any, ...]) -> StoredCheckpoint:
    return StoredCheckpoint(
        tree_size=int(row[0]),
        root_hash=bytes(row[1]),
        chain_head=bytes(row[2]),
        key_id=str(row[3]),
        signed_at=row[4],
        note=str(row[5]),
    )


async def _one(
    conn: AsyncConnection[Any], query: str, params: tuple[Any, ...] = ()
) -> StoredCheckpoint | None:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else _record(row)


async def latest_checkpoint(conn: AsyncConnection[Any]) -> StoredCheckpoint | None:
    """The newest (largest) checkpoint, or None when none is signed yet."""
    return await _one(
        conn, f"SELECT {_COLUMNS} FROM checkpoints ORDER BY tree_size DESC LIMIT 1"
    )


async def checkpoint_at(
    conn: AsyncConnection[Any], tree_size: int
) -> StoredCheckpoint | None:
    """The checkpoint of exactly `tree_size` events, or None."""
    return await _one(
        conn, f"SELECT {_COLUMNS} FROM checkpoints WHERE tree_size = %s", (tree_size,)
    )


async def checkpoint_covering(
    conn: AsyncConnection[Any], position: int
) -> StoredCheckpoint | None:
    """The smallest checkpoint whose tree holds `position`, or None."""
    return await _one(
        conn,
        f"SELECT {_COLUMNS} FROM checkpoints WHERE tree_size >= %s "
        "ORDER BY tree_size LIMIT 1",
        (position,),
    )


async def list_checkpoints(
    conn: AsyncConnection[Any], *, before: int | None = None, limit: int = 100
) -> list[StoredCheckpoint]:
    """Checkpoints newest first; `before` pages on (tree sizes below it)."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM checkpoints "
        "WHERE tree_size < coalesce(%s, 9223372036854775807) "
        "ORDER BY tree_size DESC LIMIT %s",
        (before, limit),
    )
    return [_record(row) for row in await cur.fetchall()]


async def checkpoints_after(
    conn: AsyncConnection[Any], tree_size: int, *, limit: int = 100
) -> list[StoredCheckpoint]:
    """Checkpoints larger than `tree_size`, oldest first."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM checkpoints WHERE tree_size > %s "
        "ORDER BY tree_size LIMIT %s",
        (tree_size, limit),
    )
    return [_record(row) for row in await cur.fetchall()]


async def insert_checkpoint(
    conn: AsyncConnection[Any], checkpoint: StoredCheckpoint
) -> bool:
    """Record a signed checkpoint; False when that tree size is already signed."""
    cur = await conn.execute(
        f"INSERT INTO checkpoints ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (tree_size) DO NOTHING",
        (
            checkpoint.tree_size,
            checkpoint.root_hash,
            checkpoint.chain_head,
            checkpoint.key_id,
            checkpoint.signed_at,
            checkpoint.note,
        ),
    )
    return cur.rowcount == 1
