"""Fixtures for the local executor: the bus, a bucket per module, and a
harness (a fresh executor name and home) per test."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from exectest import ControlPlane, Harness, new_id
from nats.js.errors import NotFoundError
from psycopg_pool import AsyncConnectionPool

from animus.bus import Bus, connect_bus
from animus.db import open_pool, with_user
from animus.eventstore import EventStore
from animus.settings import APP_ROLE, Settings
from animus.storage import BlobStore
from commands.coordinator import Coordinator
from contracts.bus import REPORT_STREAM
from projections import ProjectorService


@pytest.fixture(scope="module")
async def bus(services: Any) -> AsyncIterator[Bus]:
    b = await connect_bus(services.nats_url, name="executor-test")
    await b.ensure_streams()
    yield b
    await b.close()


@pytest.fixture(scope="module")
async def store(services: Any) -> AsyncIterator[BlobStore]:
    bucket = f"exec-{secrets.token_hex(4)}"
    async with BlobStore(
        endpoint=services.s3_endpoint,
        access_key=services.s3_access_key,
        secret_key=services.s3_secret_key,
        bucket=bucket,
    ) as s:
        await s.ensure_bucket()
        yield s


@pytest.fixture
def harness(bus: Bus, store: BlobStore, tmp_path: Path) -> Harness:
    settings = Settings(home=tmp_path / "home", environment="test")
    return Harness(bus=bus, store=store, settings=settings, name=new_id("exec"))


@pytest.fixture(scope="module")
async def app_pool(fresh_database: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = await open_pool(
        with_user(fresh_database, APP_ROLE), max_size=6, name="test-executor"
    )
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def control_plane(
    app_pool: AsyncConnectionPool, bus: Bus
) -> AsyncIterator[ControlPlane]:
    """Event store, projector and a coordinator of its own, for one module."""
    durable = f"coordinator-exec-{secrets.token_hex(4)}"
    async with (
        EventStore(app_pool) as event_store,
        ProjectorService(app_pool, poll_interval=0.02),
        Coordinator(event_store, bus, durable=durable, fetch_timeout=0.2) as running,
    ):
        plane = ControlPlane(store=event_store, pool=app_pool, coordinator=running)
        await plane.create_project()
        yield plane
    with contextlib.suppress(NotFoundError):
        await bus.js.delete_consumer(REPORT_STREAM, durable)
