"""Entry point of `animus gateway` (see `animus.cli.PROCESSES`)."""

from __future__ import annotations

import asyncio

from animus.settings import Settings
from gateway.server import serve


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the gateway until `stop` is set."""
    await serve(settings, stop=stop)
