"""Snapshots for reads `as_of` a past position (auditors' reads).

A read `as_of` a point answers what the same read would have answered when
the log ended at that point. The gateway answers it from a *snapshot*: a
schema `rm_asof_<P>` holding every read model folded up to position P by the
live projector's own handlers (`Projector`, via `pointintime.fold_until`),
and runs the ordinary queries against it (`queries.*(..., schema=...)`).

- Built on first use, in one transaction that holds an advisory lock on P:
  a second request for P waits and then finds it built, so concurrent
  requests build it once, and a failed build leaves nothing (the schema's
  creation rolls back with it).
- Reused after: a built snapshot is listed in `asof_snapshots`; each use
  moves its `last_used_at`.
- Bounded: after a build, the least recently used snapshots beyond
  `ANIMUS_AS_OF_SNAPSHOTS` are dropped, except those used in the last
  `EVICTION_GRACE_SECONDS` (a request may still be reading them; the bound
  can be exceeded for that long).

Roles: the gateway runs as the application role, which may not create
schemas. Migration 0008 gives it a narrow path instead: SECURITY DEFINER
functions owned by the owner that create `rm_asof_<P>` (a name built from a
bigint), seal it read-only once filled, and drop it. So the gateway never
holds the owner's credentials, and the app role can create nothing else.

Cost: the first read as of P folds P events at replay speed (measured on
the 2-core development machine: 4,860 events built in 0.86 s, about 5,000
a second; a reuse costs 0.7 ms more than a live read), and the snapshot
stores a copy of the read models as they were at P; later reads as of P
cost what live reads cost.
Folding in memory per request was the alternative: it needs no schema but
a second implementation of every handler and the whole fold on every read.
"""

from __future__ import annotations

from typing import Any

import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from animus.db import translate_db_errors
from projections.pointintime import fold_until

log = structlog.get_logger(__name__)

SNAPSHOT_PREFIX = "rm_asof_"
ASOF_LOCK_CLASS = 0x61736F66  # "asof": the advisory lock's first key
EVICTION_GRACE_SECONDS = 60.0
DEFAULT_KEEP = 8


def snapshot_schema(position: int) -> str:
    """The schema of the snapshot as of `position`."""
    return f"{SNAPSHOT_PREFIX}{int(position)}"


def _lock_key(position: int) -> int:
    return position & 0x7FFFFFFF  # an int4; a collision only serialises builds


async def ensure_snapshot(
    pool: AsyncConnectionPool,
    position: int,
    *,
    keep: int = DEFAULT_KEEP,
    grace: float = EVICTION_GRACE_SECONDS,
    batch_size: int = 5000,
) -> str:
    """The schema holding the read models as of `position`; built if missing.

    Raises:
        StoreError: the database failed; nothing of a failed build is kept.
    """
    schema = snapshot_schema(position)
    with translate_db_errors():
        async with pool.connection() as conn:
            if await _touch(conn, position):
                return schema
            built = await _build(conn, position, schema, batch_size)
        if built:
            await _evict(pool, keep, grace)
    return schema


async def _touch(conn: AsyncConnection[Any], position: int) -> bool:
    cur = await conn.execute(
        "UPDATE asof_snapshots SET last_used_at = now() WHERE position = %s "
        "RETURNING position",
        (position,),
    )
    return await cur.fetchone() is not None


async def _build(
    conn: AsyncConnection[Any], position: int, schema: str, batch_size: int
) -> bool:
    """Build the snapshot unless another request did; True if this one did."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)",
            (ASOF_LOCK_CLASS, _lock_key(position)),
        )
        if await _touch(conn, position):
            return False  # built while this request waited for the lock
        log.info("asof_snapshot_build_started", position=position)
        await conn.execute("SELECT animus_asof_create(%s)", (position,))
        result = await fold_until(
            conn, schema, after=0, until=position, batch_size=batch_size
        )
        await conn.execute("SELECT animus_asof_seal(%s)", (position,))
        await conn.execute(
            "INSERT INTO asof_snapshots (position, events) VALUES (%s, %s)",
            (position, result.events),
        )
    log.info(
        "asof_snapshot_built",
        position=position,
        events=result.events,
        skipped=len(result.skipped),
    )
    return True


async def _evict(pool: AsyncConnectionPool, keep: int, grace: float) -> None:
    """Drop the least recently used snapshots beyond `keep` (module docstring)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT position FROM asof_snapshots "
            "WHERE last_used_at < now() - make_interval(secs => %s) "
            "AND position NOT IN (SELECT position FROM asof_snapshots "
            "ORDER BY last_used_at DESC LIMIT %s) ORDER BY last_used_at",
            (grace, keep),
        )
        stale = [int(row[0]) for row in await cur.fetchall()]
        for position in stale:
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, %s)",
                    (ASOF_LOCK_CLASS, _lock_key(position)),
                )
                await conn.execute("SELECT animus_asof_drop(%s)", (position,))
            log.info("asof_snapshot_dropped", position=position)


async def snapshots(pool: AsyncConnectionPool) -> list[int]:
    """Positions of the snapshots kept, most recently used first."""
    with translate_db_errors():
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT position FROM asof_snapshots ORDER BY last_used_at DESC"
            )
            return [int(row[0]) for row in await cur.fetchall()]
