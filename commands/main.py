"""Entry point of `animus coordinator` (see `animus.cli.PROCESSES`)."""

from __future__ import annotations

import asyncio

from animus.bus import bus_session
from animus.db import app_dsn, open_pool
from animus.errors import ConfigurationError
from animus.eventstore import EventStore
from animus.settings import Settings
from commands.coordinator import Coordinator


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Turn executor reports into run events until `stop` is set.

    Raises:
        ConfigurationError: no database or no NATS server is configured.
    """
    if not (settings.database_url or settings.app_database_url):
        raise ConfigurationError(
            "ANIMUS_DATABASE_URL: the coordinator needs a database"
        )
    if not settings.nats_url:
        raise ConfigurationError("ANIMUS_NATS_URL: the coordinator needs a NATS server")
    pool = await open_pool(app_dsn(settings), max_size=4, name="coordinator")
    try:
        # bus_session creates or updates the streams before the consumer binds
        async with (
            bus_session(
                settings.nats_url,
                name="animus-coordinator",
                wait=settings.nats_wait_seconds,
            ) as bus,
            EventStore(pool) as store,
            Coordinator(store, bus, lost_after=settings.run_lost_after_seconds),
        ):
            await stop.wait()
    finally:
        await pool.close()
