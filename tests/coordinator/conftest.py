"""Fixtures for the coordinator: a fresh migrated database per module, its
event store, a real JetStream connection, seeded runs, and a running
coordinator on a durable consumer of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from coordtest import Runs, delete_durable, unique_durable
from psycopg_pool import AsyncConnectionPool

from animus.bus import Bus, connect_bus
from animus.db import open_pool, with_user
from animus.eventstore import EventStore
from animus.settings import APP_ROLE
from commands.coordinator import Coordinator
from projections import ProjectorService


@pytest.fixture(scope="module")
async def app_pool(fresh_database: str) -> AsyncIterator[AsyncConnectionPool]:
    dsn = with_user(fresh_database, APP_ROLE)
    pool = await open_pool(dsn, max_size=8, name="test-coordinator")
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def store(app_pool: AsyncConnectionPool) -> AsyncIterator[EventStore]:
    async with EventStore(app_pool) as event_store:
        yield event_store


@pytest.fixture(scope="module")
async def bus(services: Any) -> AsyncIterator[Bus]:
    connected = await connect_bus(services.nats_url, name="test-coordinator")
    await connected.ensure_streams()
    yield connected
    await connected.close()


@pytest.fixture
def runs(store: EventStore, bus: Bus) -> Runs:
    return Runs(store, bus)


@pytest.fixture
async def coordinator(store: EventStore, bus: Bus) -> AsyncIterator[Coordinator]:
    """A running coordinator on a durable consumer of its own."""
    durable = unique_durable()
    running = Coordinator(store, bus, durable=durable, fetch_timeout=0.2)
    await running.start()
    yield running
    await running.stop()
    await delete_durable(bus, durable)


@pytest.fixture(scope="module")
async def projector(app_pool: AsyncConnectionPool) -> AsyncIterator[ProjectorService]:
    """The live projector over the module's database, folding into `rm`."""
    async with ProjectorService(app_pool, poll_interval=0.02) as service:
        yield service


@pytest.fixture
async def project(runs: Runs, projector: ProjectorService) -> str:
    """The test's project, created in the log so its runs can be projected."""
    await runs.project()
    return runs.project_id
