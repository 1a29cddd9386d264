"""Cancel end to end through the HTTP API, in one process: the gateway app
(in-process client), projector, relay, coordinator and the local executor,
over a fresh database, the session's S3 and a NATS server of this module's
own (so no other test's launches reach this executor, and no launch of this
one reaches theirs). A long workload that spawned a child of its own is
canceled; its process groups are gone, the run ends `canceled` with exactly
one terminal event, and the timeline shows the request before the end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import pytest

from animus.embedded import EmbeddedNats, free_port
from animus.relay import Relay
from animus.settings import Settings, load_settings
from commands.coordinator import Coordinator
from contracts.events import TERMINAL_RUN_EVENTS
from executors.local import LocalExecutor, Workspace
from gateway.app import create_app
from gateway.services import GatewayServices, open_services
from projections import ProjectorService

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed"
)

TOKEN = {"Authorization": "Bearer alice-token"}
TIMEOUT = 30.0


@dataclass(frozen=True)
class Platform:
    client: httpx.AsyncClient
    executor: LocalExecutor


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedNats(tmp_path_factory.mktemp("cancel-nats"), free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def settings(
    services: Any,
    fresh_database: str,
    nats_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    return load_settings(
        environment="test",
        home=tmp_path_factory.mktemp("cancel-home"),
        database_url=fresh_database,
        nats_url=nats_url,
        s3_endpoint=services.s3_endpoint,
        s3_access_key=services.s3_access_key,
        s3_secret_key=services.s3_secret_key,
        s3_bucket=f"cancel-{secrets.token_hex(4)}",
        dev_tokens={"alice-token": "alice"},
        run_heartbeat_seconds=0.5,
        run_lost_after_seconds=30,
    )


@pytest.fixture(scope="module")
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    """Every process of `animus up` but the embedded services, as tasks."""
    async with open_services(settings) as services:
        assert services.bus is not None
        await services.bus.ensure_streams()
        executor = LocalExecutor(
            services.bus,
            services.blobs,
            settings,
            cancel_grace=1.0,
            poll_interval=0.05,
        )
        stop = asyncio.Event()
        async with (
            ProjectorService(services.pool, poll_interval=0.02),
            Relay(services.store, services.bus, services.pool, idle_interval=0.02),
            Coordinator(
                services.store,
                services.bus,
                fetch_timeout=0.2,
                lost_after=settings.run_lost_after_seconds,
            ),
        ):
            running = asyncio.create_task(executor.run(stop))
            try:
                async with client_of(settings, services) as client:
                    yield Platform(client=client, executor=executor)
            finally:
                stop.set()
                await asyncio.wait_for(running, 20)


@contextlib.asynccontextmanager
async def client_of(
    settings: Settings, services: GatewayServices
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, services=services)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 50000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", timeout=60
    ) as client:
        yield client


async def until(check: Any, what: str, timeout: float = TIMEOUT) -> Any:
    """Poll `check` (async, returns a truthy value when done)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if found := await check():
            return found
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def probes(token: str) -> list[psutil.Process]:
    """Live processes whose command line carries `token`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if token in (proc.info.get("cmdline") or []):
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
    return found


def process_groups(shim_pid: int) -> set[int]:
    """The process groups of the supervisor and everything below it."""
    shim = psutil.Process(shim_pid)
    groups = {os.getpgid(shim_pid)}
    for proc in shim.children(recursive=True):
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(proc.pid))
    return groups


def live_members(groups: set[int]) -> list[psutil.Process]:
    """Live (not zombie) processes in any of `groups`."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) in groups and proc.status() != (
                psutil.STATUS_ZOMBIE
            ):
                members.append(proc)
    return members


async def test_a_run_canceled_through_the_api_ends_canceled_once(
    platform: Platform,
) -> None:
    client = platform.client
    project_id = f"p-{secrets.token_hex(4)}"
    token = f"animus-cancel-e2e-{secrets.token_hex(4)}"
    code = textwrap.dedent(
        f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                          {token!r}])
        time.sleep(300)
        """
    )
    answer = await client.post(
        "/projects", json={"project_id": project_id, "name": "cancel"}, headers=TOKEN
    )
    assert answer.status_code == 201, answer.text
    answer = await client.post(
        f"/projects/{project_id}/runs",
        json={"command": ["python", "-c", code], "timeout_seconds": 600},
        headers=TOKEN,
    )
    assert answer.status_code == 201, answer.text
    run_id = answer.json()["run_id"]
    run_url = f"/projects/{project_id}/runs/{run_id}"

    async def status() -> str:
        reply = await client.get(run_url, headers=TOKEN)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["status"])

    async def running() -> bool:
        return await status() == "running"

    async def spawned() -> list[psutil.Process]:
        return probes(token)

    await until(running, f"{run_id} to run")
    await until(spawned, "the workload's child process")
    workspace = Workspace(platform.executor.workdir / run_id / "1")
    shim_pid = json.loads(workspace.marker.read_text())["pid"]
    groups = process_groups(shim_pid)
    assert live_members(groups)

    answer = await client.post(f"{run_url}/cancel", headers=TOKEN)
    assert answer.status_code == 202, answer.text

    async def canceled() -> bool:
        return await status() == "canceled"

    await until(canceled, f"{run_id} to be canceled")
    await asyncio.sleep(1.0)  # anything late would land by now

    assert live_members(groups) == []
    assert probes(token) == []
    run = (await client.get(run_url, headers=TOKEN)).json()
    assert run["status"] == "canceled"
    assert run["cancel_requested"] is True
    assert run["finished_at_source"] == "workload"
    timeline = (await client.get(f"{run_url}/timeline", headers=TOKEN)).json()
    types = [event["type"] for event in timeline["events"]]
    assert [t for t in types if t in TERMINAL_RUN_EVENTS] == ["RunCanceled"]
    assert types.index("RunCancelRequested") < types.index("RunCanceled")
    assert types[-1] == "RunCanceled"
    assert types[:3] == ["RunSubmitted", "RunPlanned", "RunDispatched"]
    versions = [event["stream_version"] for event in timeline["events"]]
    assert versions == list(range(1, len(versions) + 1))
