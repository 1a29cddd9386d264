"""The relay against real PostgreSQL and NATS JetStream: every committed event
reaches the bus exactly once, across restarts and a lost checkpoint, and a
dispatched run becomes one launch message."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from animus.bus import Bus, connect_bus, fetch_batch
from animus.db import open_pool, with_user
from animus.eventstore import EventStore, NewEvent
from animus.relay import Relay
from animus.settings import APP_ROLE
from contracts.bus import EVENTS_STREAM, LAUNCH_STREAM, LaunchRequested, launch_subject
from contracts.events import (
    ProjectCreated,
    RunDispatched,
    RunPlanned,
    RunSubmitted,
)
from contracts.runs import RunPlan, RunSpec
from contracts.streams import project_stream, run_stream


@pytest.fixture(scope="module")
async def pool(fresh_database: str) -> AsyncIterator[AsyncConnectionPool]:
    p = await open_pool(with_user(fresh_database, APP_ROLE), max_size=4, name="t")
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def store(pool: AsyncConnectionPool) -> AsyncIterator[EventStore]:
    async with EventStore(pool) as s:
        yield s


@pytest.fixture(scope="module")
async def bus(services: Any) -> AsyncIterator[Bus]:
    b = await connect_bus(services.nats_url, name="relay-test")
    await b.ensure_streams()
    yield b
    await b.close()


def project_events(count: int) -> list[NewEvent]:
    """`count` projects, one event each, ids unique to this run."""
    tag = secrets.token_hex(3)
    return [
        NewEvent(
            stream_type="project",
            stream_id=project_stream(f"p-{tag}-{i}"),
            project_id=f"p-{tag}-{i}",
            event=ProjectCreated(project_id=f"p-{tag}-{i}", name=f"project {i}"),
        )
        for i in range(count)
    ]


async def published_ids(bus: Bus, wanted: set[str]) -> list[str]:
    """Event ids on the events stream that belong to `wanted`, with repeats."""
    sub = await bus.js.pull_subscribe(
        "animus.events.>", durable=f"t-{secrets.token_hex(4)}", stream=EVENTS_STREAM
    )
    seen: list[str] = []
    try:
        while batch := await fetch_batch(sub, batch=500, timeout=1.0):
            for msg in batch:
                event_id = json.loads(msg.data)["event_id"]
                if event_id in wanted:
                    seen.append(event_id)
                await msg.ack()
    finally:
        await sub.unsubscribe()
    return seen


async def wait_for_checkpoint(relay: Relay, position: int, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while relay.position < position:  # noqa: ASYNC110 - a plain attribute
            await asyncio.sleep(0.05)


async def test_a_restarted_relay_publishes_every_event_exactly_once(
    store: EventStore,
    pool: AsyncConnectionPool,
    bus: Bus,
    fresh_database: str,
) -> None:
    first = await store.append(project_events(40), metadata={"actor": "t"})
    async with Relay(store, bus, pool, batch_size=16, idle_interval=0.02) as relay:
        await wait_for_checkpoint(relay, first[-1].position)

    # Events committed while the relay is down are picked up on restart.
    second = await store.append(project_events(25), metadata={"actor": "t"})
    # A crash between publish and checkpoint: the checkpoint falls behind what
    # the bus already holds, so the restarted relay publishes those again.
    with psycopg.connect(fresh_database, autocommit=True) as owner:
        owner.execute(
            "UPDATE relay_checkpoints SET position = %s WHERE name = 'relay'",
            (first[10].position,),
        )
    async with Relay(store, bus, pool, batch_size=16, idle_interval=0.02) as relay:
        await wait_for_checkpoint(relay, second[-1].position)
        assert relay.published == len(first) - 11 + len(second)

    wanted = {str(e.event_id) for e in first + second}
    seen = await published_ids(bus, wanted)
    assert sorted(seen) == sorted(wanted)  # every event, none twice
    positions = {str(e.event_id): e.position for e in first + second}
    assert [positions[i] for i in seen] == sorted(positions[i] for i in seen)


async def test_a_dispatched_run_becomes_one_launch_message(
    store: EventStore, pool: AsyncConnectionPool, bus: Bus, fresh_database: str
) -> None:
    run_id = f"run-{secrets.token_hex(6)}"
    spec = RunSpec(name="t", command=["python", "-c", "print(1)"])
    plan = RunPlan(
        spec_hash="a" * 64,
        command=spec.command,
        image=None,
        inputs={},
        parameters={},
        resources=spec.resources,
        timeout_seconds=60,
        secret_refs=[],
        executor="local",
    )

    def on_run(event: Any) -> NewEvent:
        return NewEvent(
            stream_type="run", stream_id=run_stream(run_id), project_id="p", event=event
        )

    await store.append(
        [
            on_run(
                RunSubmitted(
                    project_id="p", run_id=run_id, spec=spec, spec_hash="a" * 64
                )
            ),
            on_run(
                RunPlanned(project_id="p", run_id=run_id, plan=plan, plan_hash="b" * 64)
            ),
            on_run(
                RunDispatched(
                    project_id="p", run_id=run_id, attempt=1, executor="local"
                )
            ),
        ],
        metadata={"actor": "t"},
    )
    head = await store.head_position()
    sub = await bus.js.pull_subscribe(
        launch_subject("local"),
        durable=f"t-{secrets.token_hex(4)}",
        stream=LAUNCH_STREAM,
    )
    try:
        # Two relays in turn over the same log: the launch is published once.
        for _ in range(2):
            async with Relay(store, bus, pool, idle_interval=0.02) as relay:
                await wait_for_checkpoint(relay, head)
            with psycopg.connect(fresh_database, autocommit=True) as owner:
                owner.execute("UPDATE relay_checkpoints SET position = 0")
        launches = []
        while batch := await fetch_batch(sub, batch=100, timeout=1.0):
            for msg in batch:
                launch = LaunchRequested.model_validate_json(msg.data)
                if launch.run_id == run_id:
                    launches.append(launch)
                await msg.ack()
    finally:
        await sub.unsubscribe()
    assert len(launches) == 1
    assert launches[0].plan == plan and launches[0].plan_hash == "b" * 64
    assert launches[0].attempt == 1
