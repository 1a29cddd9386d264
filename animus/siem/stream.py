"""Audit records from the log: reading them, and publishing the SIEM stream.

`read_records` reads SIEM records after a cursor (position), optionally of
one project and one event type, in batches: the HTTP export and the
publishers below stream from it with bounded memory.

`AuditPublisher` is a log follower (animus/follower.py) under the
checkpoint name `audit`: it runs beside the relay in the relay process and
publishes every event, in position order, on
`animus.audit.<project>.<event_type>` in the JetStream stream
`ANIMUS_AUDIT` (contracts/bus.py), with `Nats-Msg-Id` = event id and the
position in the `Animus-Position` header. Its checkpoint is its own, so a
slow SIEM stream never holds up the relay, and appends never wait for
either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import structlog
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from animus.bus import Bus
from animus.db import translate_db_errors
from animus.follower import BATCH_SIZE, IDLE_INTERVAL, LogFollower
from animus.siem.record import build_record, record_line
from contracts.bus import PLATFORM_TOKEN, audit_subject

__all__ = [
    "AUDIT_CHECKPOINT",
    "POSITION_HEADER",
    "AuditPublisher",
    "AuditRecord",
    "head_position",
    "read_records",
]

log = structlog.get_logger(__name__)

AUDIT_CHECKPOINT = "audit"
POSITION_HEADER = "Animus-Position"

_COLUMNS = sql.SQL(
    "SELECT position, event_id, stream_type, stream_id, stream_version, "
    "project_id, type, schema_version, recorded_at, prev_hash, hash, canonical "
    "FROM events WHERE position > %s"
)


@dataclass(frozen=True)
class AuditRecord:
    """One SIEM record with what routing needs without parsing it."""

    position: int
    event_id: str
    project_id: str | None
    type: str
    record: dict[str, Any]

    @property
    def subject(self) -> str:
        return audit_subject(self.project_id, self.type)

    @cached_property
    def line(self) -> str:
        return record_line(self.record)


def _to_record(row: Sequence[Any]) -> AuditRecord:
    record = build_record(
        position=row[0],
        event_id=row[1],
        stream_type=row[2],
        stream_id=row[3],
        stream_version=row[4],
        project_id=row[5],
        type=row[6],
        schema_version=row[7],
        recorded_at=row[8],
        prev_hash=bytes(row[9]),
        hash=bytes(row[10]),
        canonical=row[11],
    )
    return AuditRecord(row[0], record["event_id"], row[5], row[6], record)


async def read_records(
    conn: AsyncConnection[Any],
    *,
    after: int,
    limit: int,
    until: int | None = None,
    project_id: str | None = None,
    event_type: str | None = None,
) -> list[AuditRecord]:
    """At most `limit` records after position `after`, in position order.

    Args:
        until: no record after this position.
        project_id: only this project's events; `_platform` for the events
            of no project.
        event_type: only events of this type.

    Raises:
        StoreError: the database failed.
    """
    query = _COLUMNS
    params: list[Any] = [after]
    if until is not None:
        query += sql.SQL(" AND position <= %s")
        params.append(until)
    if project_id == PLATFORM_TOKEN:
        query += sql.SQL(" AND project_id IS NULL")
    elif project_id is not None:
        query += sql.SQL(" AND project_id = %s")
        params.append(project_id)
    if event_type is not None:
        query += sql.SQL(" AND type = %s")
        params.append(event_type)
    query += sql.SQL(" ORDER BY position LIMIT %s")
    params.append(limit)
    with translate_db_errors():
        cur = await conn.execute(query, params)
        return [_to_record(row) for row in await cur.fetchall()]


async def head_position(conn: AsyncConnection[Any]) -> int:
    """The position of the last event; 0 for an empty log."""
    with translate_db_errors():
        cur = await conn.execute("SELECT coalesce(max(position), 0) FROM events")
        row = await cur.fetchone()
    return int(row[0]) if row else 0


class AuditPublisher(LogFollower[AuditRecord]):
    """Publishes every event as a SIEM record on JetStream, in order.

    Use as `async with AuditPublisher(bus, pool):`; the stream must exist
    (`Bus.ensure_audit_stream`).
    """

    def __init__(
        self,
        bus: Bus,
        pool: AsyncConnectionPool,
        *,
        name: str = AUDIT_CHECKPOINT,
        batch_size: int = BATCH_SIZE,
        idle_interval: float = IDLE_INTERVAL,
    ) -> None:
        super().__init__(
            pool, name=name, batch_size=batch_size, idle_interval=idle_interval
        )
        self._bus = bus

    async def _read(self, after: int, limit: int) -> list[AuditRecord]:
        async with self._pool.connection() as conn:
            return await read_records(conn, after=after, limit=limit)

    async def _deliver(self, items: Sequence[AuditRecord]) -> None:
        # one at a time: a publish that fails stops the batch before any
        # later record is stored, so the stream keeps position order
        for item in items:
            await self._bus.publish(
                item.subject,
                item.line.encode(),
                msg_id=item.event_id,
                headers={POSITION_HEADER: str(item.position)},
            )
