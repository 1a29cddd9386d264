"""A NATS restart under a live pull consumer (DESIGN.md, Bus): the running
coordinator resumes by itself, with no restart of ours, and every report
sent before, during and after the outage becomes its event exactly once.

The broker here is a nats-server of this test's own, on a fixed port and
store, so it can be stopped and started again without touching the
session's server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from coordtest import Runs, eventually

from animus.bus import Bus, connect_bus
from animus.embedded import EmbeddedNats, free_port
from animus.errors import BusError
from animus.eventstore import EventStore
from commands.coordinator import Coordinator

RUNS = 6


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def own_bus(broker: EmbeddedNats) -> AsyncIterator[Bus]:
    bus = await connect_bus(broker.url, name="test-broker-restart")
    await bus.ensure_streams()
    yield bus
    await bus.close()


async def _publish_until_accepted(runs: Runs, report: object) -> None:
    """Publish as an executor would: retry while the broker is away."""
    for _ in range(200):
        try:
            await runs.publish(report)  # type: ignore[arg-type]
            return
        except BusError:
            await asyncio.sleep(0.1)
    pytest.fail("the broker never came back")


async def test_the_coordinator_resumes_after_the_broker_restarts(
    store: EventStore, own_bus: Bus, broker: EmbeddedNats
) -> None:
    runs = Runs(store, own_bus)
    run_ids = [runs.new_id() for _ in range(RUNS)]
    for run_id in run_ids:
        await runs.dispatched(run_id)

    async with Coordinator(store, own_bus, durable="restart", fetch_timeout=0.2):
        for run_id in run_ids[:2]:
            await runs.publish(runs.report(run_id, "succeeded", seq=1, exit_code=0))
        await eventually(
            lambda: _terminal(runs, run_ids[:2]), what="reports before the restart"
        )

        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(1.5)  # the consumer's fetches fail meanwhile
        await asyncio.to_thread(broker.start)

        for run_id in run_ids[2:]:
            report = runs.report(run_id, "succeeded", seq=1, exit_code=0)
            await _publish_until_accepted(runs, report)
        await eventually(
            lambda: _terminal(runs, run_ids), timeout=60, what="every report"
        )

    for run_id in run_ids:
        types = await runs.types(run_id)
        assert types.count("RunSucceeded") == 1, (run_id, types)
        assert types[-1] == "RunSucceeded"


async def _terminal(runs: Runs, run_ids: list[str]) -> bool:
    for run_id in run_ids:
        if "RunSucceeded" not in await runs.types(run_id):
            return False
    return True
