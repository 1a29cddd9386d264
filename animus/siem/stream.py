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

It publishes a batch without waiting for each acknowledgement
(`Bus.publish_batch`), and keeps the stream in position order by chaining
the messages: each carries `Nats-Expected-Last-Sequence`, the stream
sequence its predecessor must have, so the server stores a record only
right after the one before it. A message lost in an outage therefore makes
every later one of its batch be refused, not stored out of order. After any
failure the publisher reads the stream's last message (`Animus-Position`,
`Nats-Msg-Id`) and resumes after it; when that message is not one of this
log's (an empty or purged stream, a deleted last message, another log's
record) it publishes one record at a time, deduplicated by event id, until
one is stored and the chain has a start again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import structlog
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from animus.bus import Bus, Outgoing, PublishAck
from animus.db import translate_db_errors
from animus.errors import BusError
from animus.follower import IDLE_INTERVAL, LogFollower
from animus.siem.record import build_record, record_line
from contracts.bus import AUDIT_STREAM, PLATFORM_TOKEN, audit_subject

__all__ = [
    "AUDIT_CHECKPOINT",
    "POSITION_HEADER",
    "AuditPublisher",
    "AuditRecord",
    "StreamEnd",
    "head_position",
    "read_records",
]

log = structlog.get_logger(__name__)

AUDIT_CHECKPOINT = "audit"
POSITION_HEADER = "Animus-Position"
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
AUDIT_BATCH_SIZE = 2000
"""Records per batch: one database read, one round of acks, one checkpoint."""

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


_Ahead = tuple[int, int, "asyncio.Task[list[AuditRecord]]"]
"""The next batch being read: after, limit, and the read."""


async def _discard(ahead: _Ahead | None) -> None:
    if ahead is None:
        return
    ahead[2].cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await ahead[2]


@dataclass(frozen=True)
class StreamEnd:
    """The stream's last message is this log's record at `position`, stored
    at stream sequence `seq`: the next record chains on it."""

    position: int
    seq: int


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
        batch_size: int = AUDIT_BATCH_SIZE,
        idle_interval: float = IDLE_INTERVAL,
        ack_timeout: float = 10,
    ) -> None:
        super().__init__(
            pool, name=name, batch_size=batch_size, idle_interval=idle_interval
        )
        self._bus = bus
        self._ack_timeout = ack_timeout
        self.end: StreamEnd | None = None  # None: read it from the stream
        self._ahead: _Ahead | None = None

    async def _read(self, after: int, limit: int) -> list[AuditRecord]:
        # a full batch: read the next one while this one's acks come back
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == after and ahead[1] == limit:
            items = await ahead[2]
        else:
            await _discard(ahead)
            items = await self._fetch(after, limit)
        if len(items) == limit:
            task = asyncio.create_task(self._fetch(items[-1].position, limit))
            self._ahead = (items[-1].position, limit, task)
        return items

    async def _fetch(self, after: int, limit: int) -> list[AuditRecord]:
        async with self._pool.connection() as conn:
            items = await read_records(conn, after=after, limit=limit)
        for item in items:
            _ = item.line  # encoded here, while the loop would wait anyway
        return items

    async def stop(self) -> None:
        await super().stop()
        ahead, self._ahead = self._ahead, None
        await _discard(ahead)

    async def _deliver(self, items: Sequence[AuditRecord]) -> None:
        if self.end is None:
            self.end = await self._find_end()
        todo = list(items)
        if self.end is not None:
            # already in the stream: stored before a crash or a lost ack
            todo = [item for item in todo if item.position > self.end.position]
        while todo and self.end is None:
            # no chain to follow: one at a time, deduplicated by event id
            item = todo.pop(0)
            ack = await self._publish_alone(item)
            if not ack.duplicate and ack.stream == AUDIT_STREAM:
                self.end = StreamEnd(item.position, ack.seq)
        if todo:
            await self._publish_chained(todo)

    async def _publish_alone(self, item: AuditRecord) -> PublishAck:
        return await self._bus.publish(
            item.subject,
            item.line.encode(),
            msg_id=item.event_id,
            headers={POSITION_HEADER: str(item.position)},
        )

    async def _publish_chained(self, todo: list[AuditRecord]) -> None:
        """Publish `todo`, each message stored only right after the one
        before; raise BusError at the first that was not (the stream then
        holds a prefix of `todo`, in order, and the end is read again)."""
        end = self.end
        assert end is not None
        messages = [
            Outgoing(
                subject=item.subject,
                payload=item.line.encode(),
                msg_id=item.event_id,
                headers={
                    POSITION_HEADER: str(item.position),
                    EXPECTED_LAST_SEQUENCE: str(end.seq + n),
                },
            )
            for n, item in enumerate(todo)
        ]
        outcomes = await self._bus.publish_batch(messages, timeout=self._ack_timeout)
        for n, (item, outcome) in enumerate(zip(todo, outcomes, strict=True)):
            wanted = end.seq + n + 1
            if isinstance(outcome, PublishAck) and (
                outcome.stream == AUDIT_STREAM and outcome.seq == wanted
            ):
                continue  # stored (or, a duplicate, already) right in place
            self.end = None
            reason = (
                outcome.detail
                if isinstance(outcome, BusError)
                else f"stored at sequence {outcome.seq} of {outcome.stream}, "
                f"not {wanted} of {AUDIT_STREAM}"
            )
            log.warning(
                "audit_batch_interrupted",
                relay=self.name,
                stored=n,
                sent=len(todo),
                position=item.position,
                error=reason,
            )
            raise BusError(f"audit record at position {item.position}: {reason}")
        self.end = StreamEnd(todo[-1].position, end.seq + len(todo))

    async def _find_end(self) -> StreamEnd | None:
        """Where the stream stands, if its last message is one of this log's
        records at or after the checkpoint; None otherwise."""
        msg = await self._bus.last_stored(AUDIT_STREAM)
        if msg is None or not msg.headers:
            return None
        try:
            position = int(msg.headers.get(POSITION_HEADER, ""))
        except ValueError:
            return None
        msg_id = msg.headers.get("Nats-Msg-Id")
        if position < self.position or msg_id != await self._event_id_at(position):
            log.info(
                "audit_stream_end_foreign",
                relay=self.name,
                position=position,
                checkpoint=self.position,
            )
            return None
        return StreamEnd(position, msg.seq or 0)

    async def _event_id_at(self, position: int) -> str | None:
        with translate_db_errors():
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT event_id FROM events WHERE position = %s", (position,)
                )
                row = await cur.fetchone()
        return str(row[0]) if row else None
