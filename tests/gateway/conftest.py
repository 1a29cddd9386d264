"""Fixtures for the gateway: a fresh migrated database per module, real NATS
and S3, the gateway's services opened from settings, a running projector, and
an in-process client."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from gwtest import PERSONAL_DATA_KEY, TOKENS
from litestar import Litestar
from psycopg import sql

from animus.migrate import migrate
from animus.settings import Settings, load_settings
from gateway.app import create_app
from gateway.services import GatewayServices, open_services
from projections.projector import ProjectorService


@dataclass(frozen=True, kw_only=True)
class Backends:
    database_url: str
    nats_url: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str


@pytest.fixture(scope="session")
def backends(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backends]:
    """The shared `services` fixture, else PostgreSQL from the environment with
    NATS and S3 started here from their wheels."""
    try:
        shared = request.getfixturevalue("services")
    except pytest.FixtureLookupError:
        shared = None
    if shared is not None:
        yield Backends(
            database_url=shared.database_url,
            nats_url=shared.nats_url,
            s3_endpoint=shared.s3_endpoint,
            s3_access_key=shared.s3_access_key,
            s3_secret_key=shared.s3_secret_key,
        )
        return
    yield from _own_backends(tmp_path_factory.mktemp("gateway-backends"))


def _own_backends(root: Path) -> Iterator[Backends]:
    from animus.embedded import EmbeddedStack

    dsn = os.environ.get("ANIMUS_TEST_DATABASE_URL")
    if not dsn:
        pytest.skip("no PostgreSQL: set ANIMUS_TEST_DATABASE_URL")
    with EmbeddedStack(root, services={"nats", "s3"}) as stack:
        assert stack.nats is not None and stack.s3 is not None
        yield Backends(
            database_url=dsn,
            nats_url=stack.nats.url,
            s3_endpoint=stack.s3.endpoint,
            s3_access_key=stack.s3.access_key,
            s3_secret_key=stack.s3.secret_key,
        )


def _with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
async def database_url(backends: Backends) -> AsyncIterator[str]:
    """The owner DSN of a fresh database at the newest revision."""
    name = f"animus_t_{secrets.token_hex(4)}"
    admin_dsn = backends.database_url
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as c:
        await c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    owner_dsn = _with_database(admin_dsn, name)
    await asyncio.to_thread(migrate, owner_dsn)
    yield owner_dsn
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as c:
        await c.execute(
            sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
        )


def gateway_settings(backends: Backends, database_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "nats_url": backends.nats_url,
        "s3_endpoint": backends.s3_endpoint,
        "s3_access_key": backends.s3_access_key,
        "s3_secret_key": backends.s3_secret_key,
        "s3_bucket": f"gw-{secrets.token_hex(4)}",
        "dev_tokens": TOKENS,
        "personal_data_key": PERSONAL_DATA_KEY,
        "max_body_bytes": 1024 * 1024,
        "max_upload_bytes": 64 * 1024 * 1024,
        "upload_part_bytes": 5 * 1024 * 1024,
    }
    return load_settings(**{**values, **extra})


@pytest.fixture(scope="module")
def settings(backends: Backends, database_url: str) -> Settings:
    return gateway_settings(backends, database_url)


@pytest.fixture(scope="module")
async def gateway_services(settings: Settings) -> AsyncIterator[GatewayServices]:
    async with open_services(settings) as services:
        yield services


@pytest.fixture(scope="module")
async def projector(
    gateway_services: GatewayServices,
) -> AsyncIterator[ProjectorService]:
    async with ProjectorService(gateway_services.pool, poll_interval=0.02) as service:
        yield service


@pytest.fixture(scope="module")
def app(
    settings: Settings,
    gateway_services: GatewayServices,
    projector: ProjectorService,
) -> Litestar:
    return create_app(settings, services=gateway_services)


@pytest.fixture(scope="module")
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process HTTP client on the test's own event loop.

    Litestar's AsyncTestClient serves the app from a portal thread with its
    own loop; the NATS and S3 clients opened by the fixtures belong to the
    test loop and would hang there.
    """
    transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 50000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", timeout=60
    ) as test_client:
        yield test_client


@pytest.fixture
def head(gateway_services: GatewayServices) -> Any:
    """The events head position, to prove a rejection appended nothing."""
    return gateway_services.store.head_position
