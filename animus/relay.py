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
import json
from collections.abc import Sequence
from typing import TypeVar

import structlog
from psycopg_pool import AsyncConnectionPool

from animus.bus import Bus, bus_session
from animus.chain import format_timestamp
from animus.db import app_dsn, open_pool
from animus.errors import ConfigurationError
from animus.eventstore import EventStore, RecordedEvent
from animus.follower import BATCH_SIZE, IDLE_INTERVAL, LogFollower
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

__all__ = ["Relay", "envelope_payload", "run"]

log = structlog.get_logger(__name__)

E = TypeVar("E", bound=DomainEvent)


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


class Relay(LogFollower[RecordedEvent]):
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
        super().__init__(
            pool, name=name, batch_size=batch_size, idle_interval=idle_interval
        )
        self._store = store
        self._bus = bus

    async def _read(self, after: int, limit: int) -> list[RecordedEvent]:
        return await self._store.read_all(after=after, limit=limit)

    async def _deliver(self, items: Sequence[RecordedEvent]) -> None:
        for event in items:
            await self._publish_event(event)

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
    """The `animus relay` process: publish until `stop` is set.

    Beside the relay it runs the SIEM stream's publisher and, when
    ANIMUS_SYSLOG_URL is set, the syslog forwarder (animus/siem/): each
    follows the log from its own checkpoint, so none holds up another.
    """
    from animus.siem.stream import AuditPublisher
    from animus.siem.syslog import SyslogForwarder, SyslogTarget

    syslog = SyslogTarget.from_settings(settings)
    pool = await open_pool(app_dsn(settings), max_size=6, name="relay")
    try:
        async with bus_session(
            _nats_url(settings), name="animus-relay", wait=settings.nats_wait_seconds
        ) as bus:
            await bus.ensure_audit_stream(settings.audit_retention_days * 86400)
            async with (
                EventStore(pool) as store,
                Relay(store, bus, pool),
                AuditPublisher(bus, pool),
                contextlib.AsyncExitStack() as optional,
            ):
                if syslog is not None:
                    await optional.enter_async_context(SyslogForwarder(pool, syslog))
                    log.info("syslog_forwarding", syslog=syslog.where)
                await stop.wait()
    finally:
        await pool.close()


def _nats_url(settings: Settings) -> str:
    if not settings.nats_url:
        raise ConfigurationError("ANIMUS_NATS_URL: the relay needs a NATS server")
    return settings.nats_url
