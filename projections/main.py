"""Entry point of `animus projector` (see `animus.cli.PROCESSES`)."""

from __future__ import annotations

import asyncio

from animus.db import app_dsn, open_pool
from animus.errors import ConfigurationError
from animus.settings import Settings
from projections.projector import ProjectorService


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Fold the log into the read models until `stop` is set."""
    if not settings.database_url:
        raise ConfigurationError("ANIMUS_DATABASE_URL: the projector needs a database")
    pool = await open_pool(app_dsn(settings), max_size=4, name="projector")
    try:
        async with ProjectorService(pool):
            await stop.wait()
    finally:
        await pool.close()
