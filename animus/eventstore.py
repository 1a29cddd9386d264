"""Append and read events: the single writer path into the hash chain.

Appends from many callers are gathered by one appender task into each
transaction (group commit). The transaction takes an advisory lock that
orders the chain, reads the head under it, checks every stream's expected
version, assigns gap-free positions, writes the rows with COPY and commits;
each caller is answered after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from animus.chain import GENESIS_HASH, canonical_envelope, link_hash
from animus.db import translate_db_errors
from animus.errors import AnimusError, StoreError, StreamVersionConflict
from contracts.events import DomainEvent

log = structlog.get_logger(__name__)

CHAIN_LOCK_KEY = 0x616E696D7573  # "animus"
EVENTS_CHANNEL = "animus_events"  # NOTIFY channel: payload is the new head position
ANY_VERSION = -1

_COLUMNS = (
    "position, event_id, stream_type, stream_id, stream_version, project_id, "
    "type, schema_version, recorded_at, canonical, prev_hash, hash"
)


@dataclass(frozen=True, kw_only=True)
class NewEvent:
    """An event to append, addressed to one stream."""

    stream_type: str
    stream_id: str
    project_id: str | None
    event: DomainEvent


@dataclass(frozen=True, kw_only=True)
class RecordedEvent:
    position: int
    event_id: uuid.UUID
    stream_type: str
    stream_id: str
    stream_version: int
    project_id: str | None
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime
    prev_hash: bytes
    hash: bytes


@dataclass(kw_only=True)
class _AppendRequest:
    events: Sequence[NewEvent]
    expected_versions: Mapping[str, int]
    metadata: Mapping[str, Any]
    future: asyncio.Future[list[RecordedEvent]] = field(repr=False)


def _row_to_event(row: Sequence[Any]) -> RecordedEvent:
    return RecordedEvent(
        position=row[0],
        event_id=row[1],
        stream_type=row[2],
        stream_id=row[3],
        stream_version=row[4],
        project_id=row[5],
        type=row[6],
        schema_version=row[7],
        data=row[8],
        metadata=row[9],
        recorded_at=row[10],
        prev_hash=bytes(row[11]),
        hash=bytes(row[12]),
    )


_SELECT = (
    "SELECT position, event_id, stream_type, stream_id, stream_version, "
    "project_id, type, schema_version, data, metadata, recorded_at, "
    "prev_hash, hash FROM events "
)


class EventStore:
    """The event log. Use as `async with EventStore(pool) as store:`."""

    def __init__(
        self, pool: AsyncConnectionPool, *, max_batch_events: int = 2000
    ) -> None:
        self._pool = pool
        self._max_batch_events = max_batch_events
        self._queue: asyncio.Queue[_AppendRequest] = asyncio.Queue()
        self._appender: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventStore:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        if self._appender is None:
            self._appender = asyncio.create_task(self._run(), name="event-appender")

    async def stop(self) -> None:
        if self._appender is not None:
            self._appender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._appender
            self._appender = None

    async def append(
        self,
        events: Sequence[NewEvent],
        *,
        expected_versions: Mapping[str, int] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[RecordedEvent]:
        """Append events atomically; all are written or none.

        Args:
            events: the events, in order; several streams may be touched.
            expected_versions: stream_id -> version the caller last saw (0 for
                a new stream). Streams not named are appended at their head.
            metadata: actor, request id, trace context and the like.

        Raises:
            StreamVersionConflict: a stream moved past its expected version.
            StoreError: the database failed.
        """
        if not events:
            return []
        self.start()
        future: asyncio.Future[list[RecordedEvent]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.put_nowait(
            _AppendRequest(
                events=events,
                expected_versions=expected_versions or {},
                metadata=dict(metadata or {}),
                future=future,
            )
        )
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].events)
            while size < self._max_batch_events and not self._queue.empty():
                request = self._queue.get_nowait()
                batch.append(request)
                size += len(request.events)
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_AppendRequest]) -> None:
        try:
            results = await self._commit(batch)
        except Exception as exc:  # noqa: BLE001 - every caller must be answered
            if len(batch) > 1:
                # One bad request must not fail its neighbours: retry alone.
                for request in batch:
                    await self._commit_batch([request])
                return
            error = exc if isinstance(exc, AnimusError) else StoreError(str(exc))
            if not batch[0].future.done():
                batch[0].future.set_exception(error)
            log.warning("append_failed", error=type(exc).__name__)
            return
        for request, result in zip(batch, results, strict=True):
            if request.future.done():
                continue
            if isinstance(result, Exception):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)

    async def _commit(
        self, batch: list[_AppendRequest]
    ) -> list[list[RecordedEvent] | Exception]:
        with translate_db_errors():
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK_KEY,)
                )
                position, head = await _read_head(conn)
                versions = await _stream_versions(conn, batch)
                results: list[list[RecordedEvent] | Exception] = []
                rows: list[tuple[Any, ...]] = []
                now = datetime.now(UTC)
                for request in batch:
                    planned = _plan_request(request, versions)
                    if isinstance(planned, Exception):
                        results.append(planned)
                        continue
                    recorded = []
                    for new, version in planned:
                        position += 1
                        event, row = _build(new, version, position, head, now, request)
                        head = event.hash
                        recorded.append(event)
                        rows.append(row)
                    results.append(recorded)
                if rows:
                    await _copy_rows(conn, rows)
                    # delivered at commit; wakes projectors without polling
                    await conn.execute(
                        "SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, str(position))
                    )
        return results

    async def read_all(
        self, *, after: int = 0, limit: int = 1000
    ) -> list[RecordedEvent]:
        """Events with position > after, in order, at most `limit`."""
        with translate_db_errors():
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    _SELECT + "WHERE position > %s ORDER BY position LIMIT %s",
                    (after, limit),
                )
                return [_row_to_event(row) for row in await cur.fetchall()]

    async def read_stream(self, stream_id: str) -> list[RecordedEvent]:
        """Every event of one stream, in version order."""
        with translate_db_errors():
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    _SELECT + "WHERE stream_id = %s ORDER BY stream_version",
                    (stream_id,),
                )
                return [_row_to_event(row) for row in await cur.fetchall()]

    async def head_position(self) -> int:
        with translate_db_errors():
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT coalesce(max(position), 0) FROM events"
                )
                row = await cur.fetchone()
        return int(row[0]) if row else 0


async def _read_head(conn: AsyncConnection[Any]) -> tuple[int, bytes]:
    cur = await conn.execute(
        "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
    )
    row = await cur.fetchone()
    if row is None:
        return 0, GENESIS_HASH
    return int(row[0]), bytes(row[1])


async def _stream_versions(
    conn: AsyncConnection[Any], batch: list[_AppendRequest]
) -> dict[str, int]:
    stream_ids = sorted({e.stream_id for r in batch for e in r.events})
    cur = await conn.execute(
        "SELECT stream_id, max(stream_version) FROM events "
        "WHERE stream_id = ANY(%s) GROUP BY stream_id",
        (stream_ids,),
    )
    versions = {stream_id: 0 for stream_id in stream_ids}
    versions.update({row[0]: int(row[1]) for row in await cur.fetchall()})
    return versions


def _plan_request(
    request: _AppendRequest, versions: dict[str, int]
) -> list[tuple[NewEvent, int]] | Exception:
    """Check expected versions and assign each event its stream version."""
    for stream_id, expected in request.expected_versions.items():
        current = versions.get(stream_id, 0)
        if expected != ANY_VERSION and expected != current:
            return StreamVersionConflict(
                f"stream {stream_id} is at version {current}, expected {expected}"
            )
    planned = []
    for new in request.events:
        versions[new.stream_id] = versions.get(new.stream_id, 0) + 1
        planned.append((new, versions[new.stream_id]))
    return planned


def _build(
    new: NewEvent,
    stream_version: int,
    position: int,
    prev_hash: bytes,
    now: datetime,
    request: _AppendRequest,
) -> tuple[RecordedEvent, tuple[Any, ...]]:
    event_id = uuid.uuid4()
    data = new.event.model_dump(mode="json")
    metadata = dict(request.metadata)
    canonical = canonical_envelope(
        position=position,
        event_id=str(event_id),
        stream_type=new.stream_type,
        stream_id=new.stream_id,
        stream_version=stream_version,
        project_id=new.project_id,
        event_type=new.event.event_type,
        schema_version=new.event.schema_version,
        data=data,
        metadata=metadata,
        recorded_at=now,
    )
    digest = link_hash(prev_hash, canonical)
    event = RecordedEvent(
        position=position,
        event_id=event_id,
        stream_type=new.stream_type,
        stream_id=new.stream_id,
        stream_version=stream_version,
        project_id=new.project_id,
        type=new.event.event_type,
        schema_version=new.event.schema_version,
        data=data,
        metadata=metadata,
        recorded_at=now,
        prev_hash=prev_hash,
        hash=digest,
    )
    row = (
        position,
        event_id,
        new.stream_type,
        new.stream_id,
        stream_version,
        new.project_id,
        event.type,
        event.schema_version,
        now,
        canonical.decode(),
        prev_hash,
        digest,
    )
    return event, row


async def _copy_rows(conn: AsyncConnection[Any], rows: list[tuple[Any, ...]]) -> None:
    async with conn.cursor() as cur:
        async with cur.copy(f"COPY events ({_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                await copy.write_row(row)
