"""Serve the gateway with uvicorn, in-process (`animus gateway`, `animus up`).

HTTP is parsed by httptools: h11, uvicorn's pure-Python parser, spent more
CPU per request than the gateway's own work. Logging stays ours: uvicorn's
logging config and access log are off, the `request` line of
`gateway.context` is the access log.

The port is bound first, so that a taken port stops the process before any
service is opened; then the app's lifespan (its services) is entered here
rather than by uvicorn, so that a service missing at start stops the process
with its own error instead of uvicorn's traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Generator

import structlog
import uvicorn
from litestar import Litestar

from animus.errors import ConfigurationError
from animus.runtime import settle_heap
from animus.settings import Settings
from gateway.app import create_app

log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    """A server stopped by its owner's event, not by its own signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def server_config(settings: Settings, app: Litestar | None = None) -> uvicorn.Config:
    """uvicorn's config; the lifespan is off, as `serve` runs it itself."""
    return uvicorn.Config(
        app or create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        lifespan="off",
        http="httptools",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
    )


def bind_socket(settings: Settings) -> socket.socket:
    """The gateway's listening socket, bound (as uvicorn would bind it).

    Raises:
        ConfigurationError: the port is taken, or the host cannot be bound.
    """
    host, port = settings.gateway_host, settings.gateway_port
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # proto named, not 0: asyncio sets TCP_NODELAY only on sockets whose
        # proto says TCP, and without it every answer waited ~40 ms (Nagle)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        raise ConfigurationError(
            f"ANIMUS_GATEWAY_HOST: cannot listen on {host}: {exc.strerror or exc}"
        ) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(
                f"ANIMUS_GATEWAY_PORT: port {port} is in use "
                "(is another `animus up` or gateway running?)"
            ) from exc
        raise ConfigurationError(
            f"ANIMUS_GATEWAY_HOST: cannot listen on {host}:{port}: {exc.strerror}"
        ) from exc
    return sock


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set, or until SIGINT/SIGTERM when no event is given.

    Raises:
        ConfigurationError: a setting the gateway needs is missing or wrong,
            or its port is taken.
        StoreError, StorageError: a service cannot be reached at start.
    """
    app = create_app(settings)
    config = server_config(settings, app)
    with bind_socket(settings) as sock:
        async with app.lifespan():  # opens the services; errors are ours
            settle_heap()  # the app, its routes and schemas live as long as we do
            if stop is None:
                await uvicorn.Server(config).serve(sockets=[sock])
                return
            server = _Server(config)
            task = asyncio.create_task(
                server.serve(sockets=[sock]), name="gateway-server"
            )
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            waiter.cancel()
            await task
    log.info("gateway_stopped")
