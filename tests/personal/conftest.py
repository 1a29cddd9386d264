"""Fixtures for crypto-shredding: a gateway over a fresh database with real
NATS and S3, a projector, a relay publishing to JetStream, and a test user
whose email is unique to this module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from litestar import Litestar
from pdtest import (
    CLIENT,
    EMAIL,
    NAME,
    OTHER_EMAIL,
    PERSONAL_DATA_KEY,
    READER_EMAIL,
    READER_NAME,
    SUFFIX,
)

from animus.relay import Relay
from animus.settings import Settings, load_settings
from gateway.app import create_app
from gateway.services import GatewayServices, open_services
from projections.projector import ProjectorService


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("personal-home")


@pytest.fixture(scope="module")
def settings(services: object, fresh_database: str, home: Path) -> Settings:
    return load_settings(
        environment="test",
        home=home,
        database_url=fresh_database,
        nats_url=services.nats_url,  # type: ignore[attr-defined]
        s3_endpoint=services.s3_endpoint,  # type: ignore[attr-defined]
        s3_access_key=services.s3_access_key,  # type: ignore[attr-defined]
        s3_secret_key=services.s3_secret_key,  # type: ignore[attr-defined]
        s3_bucket=f"pd-{SUFFIX}",
        personal_data_key=PERSONAL_DATA_KEY,
        dev_tokens={
            "erin-token": {"name": NAME, "email": EMAIL},
            "olaf-token": {"name": f"Olaf {SUFFIX}", "email": OTHER_EMAIL},
            "operator-token": "operator",
            "rita-token": {"name": READER_NAME, "email": READER_EMAIL},
        },
        storage_sweep_interval_seconds=0,
    )


@pytest.fixture(scope="module")
async def gateway_services(settings: Settings) -> AsyncIterator[GatewayServices]:
    async with open_services(settings) as services:
        assert services.bus is not None
        await services.bus.ensure_streams()
        yield services


@pytest.fixture(scope="module")
async def running(gateway_services: GatewayServices) -> AsyncIterator[Relay]:
    """The projector and the relay, running beside the gateway."""
    services = gateway_services
    assert services.bus is not None
    async with (
        ProjectorService(services.pool, poll_interval=0.02),
        Relay(services.store, services.bus, services.pool, idle_interval=0.02) as relay,
    ):
        yield relay


@pytest.fixture(scope="module")
async def client(
    settings: Settings, gateway_services: GatewayServices, running: Relay
) -> AsyncIterator[httpx.AsyncClient]:
    app: Litestar = create_app(settings, services=gateway_services)
    transport = httpx.ASGITransport(app=app, client=CLIENT)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", timeout=60
    ) as test_client:
        yield test_client
