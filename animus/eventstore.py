"""Append and read events: the single writer path into the hash chain.

Appends from many callers are gathered by one appender task into each
transaction (group commit). The transaction takes an advisory lock that
orders the chain, reads the head under it, checks every stream's expected
version, assigns gap-free positions, writes the rows with COPY and commits;
each caller is answered after the commit.

Work that does not depend on the chain is done by each caller before it
queues: event ids, payloads and the canonical envelope around the three
fields the appender places (position, stream version, time). Under the lock
the appender only splices those in, hashes and streams rows into COPY, so
the server indexes one chunk while the next is hashed. A transaction costs
four round trips: BEGIN with the lock, the head with the streams' versions,
COPY, and NOTIFY with COMMIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import rfc8785
import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from animus.chain import (
    GENESIS_HASH,
    EnvelopeTemplate,
    canonical_text,
    format_timestamp,
    link_hash,
)
from animus.db import translate_db_errors
from animus.errors import AnimusError, StoreError, StreamVersionConflict
from contracts.events import DomainEvent

log = structlog.get_logger(__name__)

CHAIN_LOCK_KEY = 0x616E696D7573  # "animus"
EVENTS_CHANNEL = "animus_events"  # NOTIFY channel: payload is the new head position
ANY_VERSION = -1

_COPY = (
    "COPY events (position, event_id, stream_type, stream_id, stream_version, "
    "project_id, type, schema_version, recorded_at, canonical, prev_hash, hash) "
    "FROM STDIN"
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


@dataclass(frozen=True, slots=True, kw_only=True)
class _PreparedEvent:
    """An event with everything decided that does not need the chain lock."""

    new: NewEvent
    event_id: uuid.UUID
    data: dict[str, Any]
    template: EnvelopeTemplate


@dataclass(kw_only=True)
class _AppendRequest:
    events: Sequence[_PreparedEvent]
    expected_versions: Mapping[str, int]
    metadata: dict[str, Any]
    future: asyncio.Future[list[RecordedEvent]] = field(repr=False)


def _prepare(new: NewEvent, metadata_text: str) -> _PreparedEvent:
    event_id = uuid.uuid4()
    data = new.event.model_dump(mode="json")
    template = EnvelopeTemplate.build(
        event_id=str(event_id),
        stream_type=new.stream_type,
        stream_id=new.stream_id,
        project_id=new.project_id,
        event_type=new.event.event_type,
        schema_version=new.event.schema_version,
        data_text=canonical_text(data),
        metadata_text=metadata_text,
    )
    return _PreparedEvent(new=new, event_id=event_id, data=data, template=template)


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
            StoreError: the database failed, or a payload has no canonical
                form (RFC 8785).
        """
        if not events:
            return []
        self.start()
        request = _request(events, expected_versions or {}, dict(metadata or {}))
        self._queue.put_nowait(request)
        return await request.future

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
            async with self._pool.connection() as conn:
                try:
                    await conn.execute(_BEGIN_LOCKED)
                    results, written, last = await _write_batch(conn, batch)
                    await conn.execute(_commit_statement(written, last))
                except BaseException:
                    await _rollback(conn)
                    raise
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


def _request(
    events: Sequence[NewEvent],
    expected_versions: Mapping[str, int],
    metadata: dict[str, Any],
) -> _AppendRequest:
    """Prepare a caller's events; a payload without a JCS form fails here."""
    try:
        metadata_text = canonical_text(metadata)
        prepared = [_prepare(new, metadata_text) for new in events]
    except rfc8785.CanonicalizationError as exc:
        raise StoreError(f"event has no canonical form: {exc}") from exc
    return _AppendRequest(
        events=prepared,
        expected_versions=expected_versions,
        metadata=metadata,
        future=asyncio.get_running_loop().create_future(),
    )


# One simple-protocol query, so BEGIN and the lock cost one round trip. The
# head is read by the next statement: its snapshot is taken after the lock.
_BEGIN_LOCKED = f"BEGIN; SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY})"

_HEAD_AND_VERSIONS = (
    "(SELECT NULL::text, position, hash FROM events "
    "ORDER BY position DESC LIMIT 1) "
    "UNION ALL "
    "SELECT stream_id, max(stream_version), NULL FROM events "
    "WHERE stream_id = ANY(%s) GROUP BY stream_id"
)


def _commit_statement(written: int, last_position: int) -> str:
    """COMMIT, after a NOTIFY of the new head when rows were written.

    NOTIFY is delivered at commit, so readers get one wake-up per batch.
    """
    if not written:
        return "COMMIT"
    return f"SELECT pg_notify('{EVENTS_CHANNEL}', '{int(last_position)}'); COMMIT"


async def _rollback(conn: AsyncConnection[Any]) -> None:
    if conn.closed:
        return
    with contextlib.suppress(psycopg.Error):
        await conn.execute("ROLLBACK")


async def _read_head_and_versions(
    conn: AsyncConnection[Any], batch: list[_AppendRequest]
) -> tuple[int, bytes, dict[str, int]]:
    """The chain head and each touched stream's version, under the lock."""
    stream_ids = sorted({e.new.stream_id for r in batch for e in r.events})
    cur = await conn.execute(_HEAD_AND_VERSIONS, (stream_ids,), prepare=False)
    position, head = 0, GENESIS_HASH
    versions = {stream_id: 0 for stream_id in stream_ids}
    for stream_id, number, digest in await cur.fetchall():
        if stream_id is None:
            position, head = int(number), bytes(digest)
        else:
            versions[stream_id] = int(number)
    return position, head, versions


async def _write_batch(
    conn: AsyncConnection[Any], batch: list[_AppendRequest]
) -> tuple[list[list[RecordedEvent] | Exception], int, int]:
    """Place, hash and COPY every event of the batch.

    Returns each request's events (or its conflict), the number of rows
    written and the last position.

    Rows stream to the server as they are hashed; a request whose expected
    versions are stale gets its conflict and writes nothing.
    """
    position, head, versions = await _read_head_and_versions(conn, batch)
    now = datetime.now(UTC)
    stamp = format_timestamp(now)
    results: list[list[RecordedEvent] | Exception] = []
    first = position
    async with conn.cursor() as cur, cur.copy(_COPY) as copy:
        for request in batch:
            planned = _plan_request(request, versions)
            if isinstance(planned, Exception):
                results.append(planned)
                continue
            recorded = []
            for prepared, version in planned:
                position += 1
                event, row = _place(
                    prepared, request, version, position, head, now, stamp
                )
                await copy.write_row(row)
                recorded.append(event)
                head = event.hash
            results.append(recorded)
    return results, position - first, position


def _plan_request(
    request: _AppendRequest, versions: dict[str, int]
) -> list[tuple[_PreparedEvent, int]] | Exception:
    """Check expected versions and assign each event its stream version."""
    for stream_id, expected in request.expected_versions.items():
        current = versions.get(stream_id, 0)
        if expected != ANY_VERSION and expected != current:
            return StreamVersionConflict(
                f"stream {stream_id} is at version {current}, expected {expected}"
            )
    planned = []
    for prepared in request.events:
        stream_id = prepared.new.stream_id
        versions[stream_id] = versions.get(stream_id, 0) + 1
        planned.append((prepared, versions[stream_id]))
    return planned


def _place(
    prepared: _PreparedEvent,
    request: _AppendRequest,
    stream_version: int,
    position: int,
    prev_hash: bytes,
    now: datetime,
    stamp: str,
) -> tuple[RecordedEvent, tuple[Any, ...]]:
    """The event at its position, and its row for COPY (see `_COPY`)."""
    new = prepared.new
    canonical = prepared.template.render(
        position=position, stream_version=stream_version, recorded_at=stamp
    )
    digest = link_hash(prev_hash, canonical.encode("utf-8"))
    event = RecordedEvent(
        position=position,
        event_id=prepared.event_id,
        stream_type=new.stream_type,
        stream_id=new.stream_id,
        stream_version=stream_version,
        project_id=new.project_id,
        type=new.event.event_type,
        schema_version=new.event.schema_version,
        data=prepared.data,
        metadata=request.metadata,
        recorded_at=now,
        prev_hash=prev_hash,
        hash=digest,
    )
    row = (
        position,
        prepared.event_id,
        new.stream_type,
        new.stream_id,
        stream_version,
        new.project_id,
        event.type,
        event.schema_version,
        now,
        canonical,
        prev_hash,
        digest,
    )
    return event, row
