"""Serve the gateway with uvicorn, in-process (`animus gateway`, `animus up`).

HTTP is parsed by httptools: h11, uvicorn's pure-Python parser, spent more
CPU per request than the gateway's own work. Logging stays ours: uvicorn's
logging config and access log are off, the `request` line of
`gateway.context` is the access log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import structlog
import uvicorn

from animus.runtime import settle_heap
from animus.settings import Settings
from gateway.app import create_app

log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    """A server stopped by its owner's event, not by its own signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def server_config(settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        lifespan="on",
        http="httptools",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
    )


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set, or until SIGINT/SIGTERM when no event is given.

    Raises:
        ConfigurationError: a setting the gateway needs is missing or wrong.
    """
    config = server_config(settings)
    settle_heap()  # the app, its routes and schemas live as long as we do
    if stop is None:
        await uvicorn.Server(config).serve()
        return
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name="gateway-server")
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    waiter.cancel()
    await task
    log.info("gateway_stopped")
