"""Fixtures of the SIEM tests: a fresh log, the app role's pool and store,
the bus with an empty audit stream, and the audit publisher."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from animus.bus import Bus, connect_bus
from animus.db import open_pool, with_user
from animus.eventstore import EventStore
from animus.settings import APP_ROLE
from animus.siem.stream import AuditPublisher
from contracts.bus import AUDIT_STREAM


@pytest.fixture(scope="module")
async def pool(fresh_database: str) -> AsyncIterator[AsyncConnectionPool]:
    p = await open_pool(with_user(fresh_database, APP_ROLE), max_size=6, name="t")
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def store(pool: AsyncConnectionPool) -> AsyncIterator[EventStore]:
    async with EventStore(pool) as s:
        yield s


@pytest.fixture(scope="module")
async def bus(services: Any) -> AsyncIterator[Bus]:
    """The bus, with the audit stream emptied: this module's log is its only
    content, so positions in it run from 1 without gaps."""
    b = await connect_bus(services.nats_url, name="siem-test")
    await b.ensure_streams()
    await b.ensure_audit_stream(0)
    await b.js.purge_stream(AUDIT_STREAM)
    yield b
    await b.close()


@pytest.fixture(scope="module")
async def publisher(
    bus: Bus, pool: AsyncConnectionPool
) -> AsyncIterator[AuditPublisher]:
    async with AuditPublisher(bus, pool, idle_interval=0.02) as p:
        yield p  # type: ignore[misc]
