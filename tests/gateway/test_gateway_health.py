"""Readiness names the dependency that is down; liveness does not care.

Each case builds the gateway over the module's real services with one of
them swapped for an unreachable twin: PostgreSQL at a closed port, S3 at a
closed port, and a NATS server that was stopped under a connected client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from animus.bus import Bus, connect_bus
from animus.db import with_user
from animus.embedded import EmbeddedNats, free_port
from animus.eventstore import EventStore
from animus.settings import APP_ROLE, INSTANCE_HEADER, Settings
from animus.storage import BlobStore
from commands.handlers import CommandHandlers
from contracts.api import PROBLEM_MEDIA_TYPE
from gateway.app import create_app
from gateway.health import CHECK_TIMEOUT
from gateway.services import GatewayServices

Swap = Callable[[AsyncExitStack, GatewayServices], Awaitable[GatewayServices]]


async def postgres_down(stack: AsyncExitStack, up: GatewayServices) -> GatewayServices:
    dsn = with_user(f"postgresql://127.0.0.1:{free_port()}/animus", APP_ROLE)
    pool = AsyncConnectionPool(dsn, min_size=1, open=False, name="unreachable")
    await pool.open(wait=False)
    stack.push_async_callback(pool.close)
    store = EventStore(pool)
    return dataclasses.replace(
        up, pool=pool, store=store, handlers=CommandHandlers(store)
    )


async def s3_down(stack: AsyncExitStack, up: GatewayServices) -> GatewayServices:
    blobs = BlobStore(
        endpoint=f"http://127.0.0.1:{free_port()}",
        access_key="nobody",
        secret_key="nothing",
        bucket=up.blobs.bucket,
    )
    await stack.enter_async_context(blobs)
    return dataclasses.replace(up, blobs=blobs)


def nats_down(root: Path) -> Swap:
    async def swap(stack: AsyncExitStack, up: GatewayServices) -> GatewayServices:
        server = EmbeddedNats(root / "nats", free_port())
        server.start()  # on this thread, so the server dies with the tests
        stack.callback(server.stop)
        bus = await connect_bus(server.url, name="readyz-test")
        stack.push_async_callback(close_quietly, bus)
        await bus.check()  # it answered once ...
        server.stop()  # ... and then went away
        return dataclasses.replace(up, bus=bus)

    return swap


async def close_quietly(bus: Bus) -> None:
    with contextlib.suppress(Exception):  # its server is gone
        await bus.nc.close()


@asynccontextmanager
async def gateway_with(
    settings: Settings, up: GatewayServices, swap: Swap
) -> AsyncIterator[httpx.AsyncClient]:
    async with AsyncExitStack() as stack:
        services = await swap(stack, up)
        app = create_app(settings, services=services)
        transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 50000))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=30
        ) as client:
            yield client


async def assert_not_ready(client: httpx.AsyncClient, failing: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await client.get("/readyz")
    elapsed = loop.time() - started

    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    problem = answer.json()
    assert problem["status"] == 503
    assert problem["type"] == "urn:animus:problem:not-ready"
    assert problem["detail"] == f"not ready: {failing} did not answer"
    assert problem["checks"][failing] == "failed"
    others = {name: state for name, state in problem["checks"].items()}
    others.pop(failing)
    assert others and set(others.values()) == {"ok"}
    assert elapsed < CHECK_TIMEOUT + 3, "readiness waited past its timeout"
    return problem


class TestReadiness:
    async def test_all_dependencies_up_is_ready(
        self, settings: Settings, gateway_services: GatewayServices
    ) -> None:
        async def same(stack: AsyncExitStack, up: GatewayServices) -> GatewayServices:
            return up

        async with gateway_with(settings, gateway_services, same) as client:
            answer = await client.get("/readyz")

        assert answer.status_code == 200, answer.text
        assert answer.json()["checks"] == {"postgres": "ok", "s3": "ok", "nats": "ok"}

    @pytest.mark.parametrize(
        ("failing", "swap"),
        [("postgres", postgres_down), ("s3", s3_down)],
    )
    async def test_an_unreachable_dependency_is_named_and_liveness_holds(
        self,
        settings: Settings,
        gateway_services: GatewayServices,
        failing: str,
        swap: Swap,
    ) -> None:
        async with gateway_with(settings, gateway_services, swap) as client:
            await assert_not_ready(client, failing)
            health = await client.get("/healthz")

        assert health.status_code == 200, health.text

    async def test_a_nats_server_that_went_away_is_named_and_liveness_holds(
        self,
        settings: Settings,
        gateway_services: GatewayServices,
        tmp_path: Path,
    ) -> None:
        swap = nats_down(tmp_path)
        async with gateway_with(settings, gateway_services, swap) as client:
            await assert_not_ready(client, "nats")
            health = await client.get("/healthz")

        assert health.status_code == 200, health.text


class TestInstance:
    async def test_liveness_names_the_animus_up_the_gateway_belongs_to(
        self, settings: Settings, gateway_services: GatewayServices
    ) -> None:
        async def same(stack: AsyncExitStack, up: GatewayServices) -> GatewayServices:
            return up

        ours = settings.model_copy(update={"instance_id": "0f65a454"})
        async with gateway_with(ours, gateway_services, same) as client:
            health = await client.get("/healthz")
        async with gateway_with(settings, gateway_services, same) as client:
            alone = await client.get("/healthz")

        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert health.headers[INSTANCE_HEADER] == "0f65a454"
        assert INSTANCE_HEADER not in alone.headers
