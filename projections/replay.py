"""Replay: rebuild the read models from the log alone and compare them with `rm`.

A scratch schema `rm_replay_<random>` gets empty copies of the read-model
tables and the same handlers fold every event into it. The comparison runs
while holding the live projector's checkpoint lock, so both sides stand at
the same position. Runs as the owner role (it creates a schema).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from animus.db import open_pool, owner_dsn, translate_db_errors
from animus.eventstore import EventStore
from projections.projector import (
    DEFAULT_CHECKPOINT,
    DEFAULT_SCHEMA,
    READ_MODEL_TABLES,
    Projector,
    SkippedEvent,
    lock_checkpoint,
    read_checkpoint,
)

log = structlog.get_logger(__name__)

Progress = Callable[[int, int], None]
"""Called after each batch with (position reached, target position)."""


@dataclass(frozen=True, kw_only=True)
class TableComparison:
    """One read-model table, live against replayed."""

    table: str
    rows_live: int
    rows_replayed: int
    only_live: int
    only_replayed: int

    @property
    def differing(self) -> int:
        """Rows present on one side only (EXCEPT ALL both ways)."""
        return self.only_live + self.only_replayed

    @property
    def equal(self) -> bool:
        return self.differing == 0


@dataclass(frozen=True, kw_only=True)
class ReplayReport:
    """The outcome of one replay."""

    schema: str
    position: int
    events: int
    tables: tuple[TableComparison, ...]
    skipped: tuple[SkippedEvent, ...]
    kept: bool

    @property
    def equal(self) -> bool:
        """Every replayed table matches its live table row for row."""
        return all(table.equal for table in self.tables)


@dataclass(kw_only=True)
class _Fold:
    """Where a replay stands while folding."""

    position: int = 0
    events: int = 0
    skipped: list[SkippedEvent] = field(default_factory=list)


async def replay(
    owner_dsn: str,
    *,
    progress: Progress | None = None,
    keep: bool = False,
    batch_size: int = 5000,
    live_schema: str = DEFAULT_SCHEMA,
    checkpoint: str = DEFAULT_CHECKPOINT,
) -> ReplayReport:
    """Fold the whole log into a fresh schema and compare it with the live one.

    Args:
        owner_dsn: DSN of the owner role (replay creates and drops a schema).
        progress: called after each batch with (position, target position).
        keep: leave the replay schema in place for inspection.
        batch_size: events read and folded per transaction.
        live_schema: the read-model schema to compare against.
        checkpoint: the live projector's checkpoint name.

    Raises:
        StoreError: the database failed.
    """
    pool = await open_pool(owner_dsn, min_size=1, max_size=2, name="replay")
    try:
        return await _replay(
            pool,
            progress=progress,
            keep=keep,
            batch_size=batch_size,
            live_schema=live_schema,
            checkpoint=checkpoint,
        )
    finally:
        await pool.close()


async def _replay(
    pool: AsyncConnectionPool,
    *,
    progress: Progress | None,
    keep: bool,
    batch_size: int,
    live_schema: str,
    checkpoint: str,
) -> ReplayReport:
    target = await read_checkpoint(pool, checkpoint)
    schema = f"{DEFAULT_SCHEMA}_replay_{secrets.token_hex(4)}"
    log.info("replay_started", schema=schema, position=target)
    store = EventStore(pool)
    fold = _Fold()
    try:
        with translate_db_errors():
            await _create_schema(pool, schema, live_schema)
            async with pool.connection() as conn:
                await _fold(
                    conn, store, Projector(schema), fold, target, batch_size, progress
                )
                tables = await _compare_paused(
                    conn,
                    store,
                    fold,
                    schema=schema,
                    live_schema=live_schema,
                    checkpoint=checkpoint,
                    batch_size=batch_size,
                    progress=progress,
                )
    finally:
        if not keep:
            await _drop_schema(pool, schema)
    report = ReplayReport(
        schema=schema,
        position=fold.position,
        events=fold.events,
        tables=tables,
        skipped=tuple(fold.skipped),
        kept=keep,
    )
    log.info(
        "replay_finished",
        schema=schema,
        position=report.position,
        events=report.events,
        skipped=len(report.skipped),
        equal=report.equal,
    )
    return report


async def _create_schema(pool: AsyncConnectionPool, schema: str, live: str) -> None:
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        for table in READ_MODEL_TABLES:
            await conn.execute(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                    sql.Identifier(schema, table), sql.Identifier(live, table)
                )
            )


async def _drop_schema(pool: AsyncConnectionPool, schema: str) -> None:
    with translate_db_errors():
        async with pool.connection() as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)
                )
            )


async def _fold(
    conn: AsyncConnection[Any],
    store: EventStore,
    projector: Projector,
    fold: _Fold,
    until: int,
    batch_size: int,
    progress: Progress | None,
) -> None:
    """Fold events after `fold.position` up to `until`, one transaction a batch."""
    while fold.position < until:
        events = await store.read_all(after=fold.position, limit=batch_size)
        events = [event for event in events if event.position <= until]
        if not events:
            return
        async with conn.transaction():
            outcome = await projector.apply(conn, events)
        fold.position = events[-1].position
        fold.events += len(events)
        fold.skipped.extend(outcome.skipped)
        if progress is not None:
            progress(fold.position, until)


async def _compare_paused(
    conn: AsyncConnection[Any],
    store: EventStore,
    fold: _Fold,
    *,
    schema: str,
    live_schema: str,
    checkpoint: str,
    batch_size: int,
    progress: Progress | None,
) -> tuple[TableComparison, ...]:
    """Pause the live projector, catch up to its checkpoint, compare every table."""
    async with conn.transaction():
        position = await lock_checkpoint(conn, checkpoint)
        await _fold(
            conn, store, Projector(schema), fold, position, batch_size, progress
        )
        return tuple(
            [
                await _compare_table(conn, table, live_schema, schema)
                for table in READ_MODEL_TABLES
            ]
        )


async def _compare_table(
    conn: AsyncConnection[Any], table: str, live_schema: str, schema: str
) -> TableComparison:
    live = sql.Identifier(live_schema, table)
    replayed = sql.Identifier(schema, table)
    cur = await conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM {live}), (SELECT count(*) FROM {replayed}), "
            "(SELECT count(*) FROM "
            "(SELECT * FROM {live} EXCEPT ALL SELECT * FROM {replayed}) AS a), "
            "(SELECT count(*) FROM "
            "(SELECT * FROM {replayed} EXCEPT ALL SELECT * FROM {live}) AS b)"
        ).format(live=live, replayed=replayed)
    )
    row = await cur.fetchone()
    assert row is not None
    return TableComparison(
        table=table,
        rows_live=int(row[0]),
        rows_replayed=int(row[1]),
        only_live=int(row[2]),
        only_replayed=int(row[3]),
    )


async def replay_command(settings: Any) -> dict[str, Any]:
    """`animus replay`: replay with a progress bar; a JSON-ready report.

    The bar goes to stderr, and only to a terminal: stdout keeps the answer.

    Raises:
        StoreError: no database is set and no `animus up` runs here, or the
            database failed.
    """
    from animus.progress import counting_bar

    dsn = owner_dsn(settings)
    with counting_bar("replaying") as bar:
        task = bar.add_task("replay", total=None)

        def advance(position: int, target: int) -> None:
            bar.update(task, completed=position, total=target)

        report = await replay(dsn, progress=advance)
    return {
        "equal": report.equal,
        "position": report.position,
        "events": report.events,
        "skipped": len(report.skipped),
        "tables": {
            t.table: {
                "live": t.rows_live,
                "replayed": t.rows_replayed,
                "equal": t.equal,
            }
            for t in report.tables
        },
    }
