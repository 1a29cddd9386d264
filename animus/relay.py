"""The relay: publishes committed events to JetStream, in position order.

The relay reads the log after its checkpoint (`relay_checkpoints`), publishes
each event on `animus.events.<stream_type>.<type>` with `Nats-Msg-Id` = event
id, and turns `RunDispatched` and `RunCancelRequested` into launch and cancel
messages for the executor named in the run. The checkpoint advances only
after every publish of a batch is acknowledged, so a crash or a bus outage
republishes at most one batch, and JetStream's dedupe window absorbs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from typing import TypeVar

import structlog
from psycopg_pool import AsyncConnectionPool

from animus.bus import Bus, bus_session
from animus.chain import format_timestamp
from animus.db import app_dsn, open_pool, translate_db_errors
from animus.errors import AnimusError, ConfigurationError
from animus.eventstore import EventStore, RecordedEvent
from animus.settings import Settings
from contracts.bus import (
    CancelRequested,
    LaunchRequested,
    cancel_subject,
    event_subject,
    launch_subject,
)
from contracts.events import (
    DomainEvent,
    RunCancelRequested,
    RunDispatched,
    RunPlanned,
)
from contracts.streams import run_stream

__all__ = ["Relay", "RelayState", "envelope_payload", "run"]

log = structlog.get_logger(__name__)

E = TypeVar("E", bound=DomainEvent)

BATCH_SIZE = 500
IDLE_INTERVAL = 0.1
RETRY_INITIAL = 0.2
RETRY_MAX = 5.0

_READ_CHECKPOINT = "SELECT position FROM relay_checkpoints WHERE name = %s"
_WRITE_CHECKPOINT = (
    "INSERT INTO relay_checkpoints (name, position) VALUES (%s, %s) "
    "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position"
)


class RelayState(enum.Enum):
    """Where a relay is in its lifecycle."""

    CREATED = "created"  # constructed; nothing runs yet
    RUNNING = "running"  # the publishing loop is active
    STOPPING = "stopping"  # stop() was called; the loop is being ended
    STOPPED = "stopped"  # the loop has ended; start() may run it again


def envelope_payload(event: RecordedEvent) -> bytes:
    """The JSON body published for one committed event."""
    envelope = {
        "position": event.position,
        "event_id": str(event.event_id),
        "stream_type": event.stream_type,
        "stream_id": event.stream_id,
        "stream_version": event.stream_version,
        "project_id": event.project_id,
        "type": event.type,
        "schema_version": event.schema_version,
        "data": event.data,
        "metadata": event.metadata,
        "recorded_at": format_timestamp(event.recorded_at),
        "hash": event.hash.hex(),
    }
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()


class Relay:
    """Publishes the event log to the bus from a durable checkpoint.

    Use as `async with Relay(store, bus, pool):` or call start() and stop().
    """

    def __init__(
        self,
        store: EventStore,
        bus: Bus,
        pool: AsyncConnectionPool,
        *,
        name: str = "relay",
        batch_size: int = BATCH_SIZE,
        idle_interval: float = IDLE_INTERVAL,
    ) -> None:
        self.name = name
        self._store = store
        self._bus = bus
        self._pool = pool
        self._batch_size = batch_size
        self._idle_interval = idle_interval
        self._task: asyncio.Task[None] | None = None
        self._state = RelayState.CREATED
        self.position = 0
        self.published = 0

    @property
    def state(self) -> RelayState:
        return self._state

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the publishing loop; it resumes from the stored checkpoint."""
        if self._task is not None:
            return
        self._state = RelayState.RUNNING
        self._task = asyncio.create_task(self._run(), name=f"relay-{self.name}")
        log.info("relay_started", relay=self.name)

    async def stop(self) -> None:
        """End the loop. Events published past the checkpoint are republished
        on the next start and deduplicated by JetStream."""
        if self._task is None:
            return
        self._state = RelayState.STOPPING
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._state = RelayState.STOPPED
        log.info("relay_stopped", relay=self.name, position=self.position)

    async def run_once(self) -> int:
        """Publish one batch after the checkpoint; the number of events.

        Raises:
            BusError: a publish was not acknowledged; the checkpoint is kept.
            StoreError: the database failed.
        """
        events = await self._store.read_all(after=self.position, limit=self._batch_size)
        for event in events:
            await self._publish_event(event)
        if events:
            await self._save_checkpoint(events[-1].position)
            self.published += len(events)
        return len(events)

    async def _run(self) -> None:
        delay = RETRY_INITIAL
        loaded = False
        while True:
            try:
                if not loaded:
                    self.position = await self._load_checkpoint()
                    loaded = True
                count = await self.run_once()
            except AnimusError as exc:
                log.warning("relay_retrying", relay=self.name, error=exc.detail)
            except Exception:  # noqa: BLE001 - the relay must outlive a bad batch
                log.exception("relay_batch_failed", relay=self.name)
            else:
                delay = RETRY_INITIAL
                if count < self._batch_size:
                    await asyncio.sleep(self._idle_interval)
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _load_checkpoint(self) -> int:
        with translate_db_errors():
            async with self._pool.connection() as conn:
                cur = await conn.execute(_READ_CHECKPOINT, (self.name,))
                row = await cur.fetchone()
        position = int(row[0]) if row else 0
        log.info("relay_checkpoint_loaded", relay=self.name, position=position)
        return position

    async def _save_checkpoint(self, position: int) -> None:
        with translate_db_errors():
            async with self._pool.connection() as conn:
                await conn.execute(_WRITE_CHECKPOINT, (self.name, position))
        self.position = position

    async def _publish_event(self, event: RecordedEvent) -> None:
        """Publish one event, then the launch or cancel it implies."""
        await self._bus.publish(
            event_subject(event.stream_type, event.type),
            envelope_payload(event),
            msg_id=str(event.event_id),
        )
        if event.type == RunDispatched.event_type:
            await self._publish_launch(event)
        elif event.type == RunCancelRequested.event_type:
            await self._publish_cancel(event)

    async def _publish_launch(self, event: RecordedEvent) -> None:
        dispatched = RunDispatched.model_validate(event.data)
        planned = await self._latest(dispatched.run_id, RunPlanned, event.position)
        if planned is None:
            log.error(
                "relay_launch_without_plan",
                relay=self.name,
                run_id=dispatched.run_id,
                position=event.position,
            )
            return
        launch = LaunchRequested(
            launch_id=str(event.event_id),
            project_id=dispatched.project_id,
            run_id=dispatched.run_id,
            attempt=dispatched.attempt,
            plan=planned.plan,
            plan_hash=planned.plan_hash,
        )
        await self._bus.publish(
            launch_subject(dispatched.executor),
            launch.model_dump_json().encode(),
            msg_id=f"{event.event_id}:launch",
        )

    async def _publish_cancel(self, event: RecordedEvent) -> None:
        requested = RunCancelRequested.model_validate(event.data)
        dispatched = await self._latest(requested.run_id, RunDispatched, event.position)
        if dispatched is None:
            log.info(
                "relay_cancel_before_dispatch",
                relay=self.name,
                run_id=requested.run_id,
                position=event.position,
            )
            return
        cancel = CancelRequested(
            project_id=requested.project_id,
            run_id=requested.run_id,
            attempt=requested.attempt,
        )
        await self._bus.publish(
            cancel_subject(dispatched.executor),
            cancel.model_dump_json().encode(),
            msg_id=f"{event.event_id}:cancel",
        )

    async def _latest(self, run_id: str, kind: type[E], before: int) -> E | None:
        """The run's last event of `kind` at or before position `before`."""
        found = None
        for recorded in await self._store.read_stream(run_stream(run_id)):
            if recorded.position <= before and recorded.type == kind.event_type:
                found = kind.model_validate(recorded.data)
        return found


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """The `animus relay` process: publish until `stop` is set."""
    pool = await open_pool(app_dsn(settings), max_size=4, name="relay")
    try:
        async with (
            bus_session(
                _nats_url(settings),
                name="animus-relay",
                wait=settings.nats_wait_seconds,
            ) as bus,
            EventStore(pool) as store,
            Relay(store, bus, pool),
        ):
            await stop.wait()
    finally:
        await pool.close()


def _nats_url(settings: Settings) -> str:
    if not settings.nats_url:
        raise ConfigurationError("ANIMUS_NATS_URL: the relay needs a NATS server")
    return settings.nats_url
