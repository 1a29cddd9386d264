"""What the gateway talks to, opened together and closed together.

`GatewayServices` holds the application role's pool, the event store, the
command handlers, the blob store, the personal data key store and the bus
connection (used by readiness only). Tests inject their own;
`open_services` opens them from settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import structlog
from psycopg_pool import AsyncConnectionPool

from animus import storage
from animus.bus import Bus, open_bus
from animus.db import app_dsn, open_pool
from animus.errors import BusError
from animus.eventstore import EventStore
from animus.personal import SubjectKeys, load_master_key
from animus.settings import Settings
from animus.storage import BlobStore
from commands.handlers import CommandHandlers
from gateway.idempotency import IdempotencyStore

log = structlog.get_logger(__name__)

BUS_WAIT_SECONDS = 5.0  # then serve, not ready, while the bus keeps trying


@dataclass(frozen=True, kw_only=True)
class GatewayServices:
    """The gateway's connections; the pool is the INSERT/SELECT-only role's."""

    pool: AsyncConnectionPool
    store: EventStore
    handlers: CommandHandlers
    blobs: BlobStore
    subjects: SubjectKeys
    bus: Bus | None = None
    owner_dsn: str | None = None
    """The owner role's DSN where settings name it (VACUUM after erasure)."""

    @property
    def idempotency(self) -> IdempotencyStore:
        return IdempotencyStore(self.pool)


def blob_store(settings: Settings) -> BlobStore:
    """The blob store named by settings (not yet connected).

    Raises:
        ConfigurationError: no S3 endpoint is set.
    """
    return storage.blob_store(settings, process="the gateway")


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[GatewayServices]:
    """Open every service from settings; close them all on exit.

    Raises:
        ConfigurationError: a required service is not configured.
        StoreError, StorageError: a service cannot be reached.
    """
    blobs = blob_store(settings)
    master_key = load_master_key(settings)
    async with AsyncExitStack() as stack:
        pool = await open_pool(app_dsn(settings), name="gateway")
        stack.push_async_callback(pool.close)
        store = await stack.enter_async_context(EventStore(pool))
        await stack.enter_async_context(blobs)
        await blobs.ensure_bucket()
        bus = None
        if settings.nats_url:
            # the gateway serves without the bus (readiness says so) while
            # it keeps trying in the background
            bus = open_bus(settings.nats_url, name="animus-gateway")
            stack.push_async_callback(bus.close)
            try:
                await bus.connected(BUS_WAIT_SECONDS)
            except BusError:
                log.warning(
                    "bus_unavailable",
                    nats=bus.where,
                    detail="serving; /readyz fails on nats until it answers",
                )
        yield GatewayServices(
            pool=pool,
            store=store,
            handlers=CommandHandlers(store),
            blobs=blobs,
            subjects=SubjectKeys(pool, master_key),
            bus=bus,
            owner_dsn=settings.database_url,
        )
