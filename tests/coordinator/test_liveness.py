"""The coordinator's liveness watch: a running run whose reports stop ends
failed with reason `lost`, counted on the receiver's clock, never from the
executor's timestamps (DESIGN "Runs", CASES C07)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from coordtest import Runs, delete_durable, eventually, unique_durable
from nats.js.errors import NotFoundError

from animus.bus import Bus, fetch_batch
from animus.eventstore import EventStore, RecordedEvent
from commands.coordinator import Coordinator, LivenessWatch
from commands.run import Ignored, IgnoreReason, RunStatus, decide_lost, fold_run
from contracts.bus import CONTROL_STREAM, CancelRequested, cancel_subject
from contracts.events import RunStarted

LOST_AFTER = 1.5
SEEDED = ["RunSubmitted", "RunPlanned", "RunDispatched"]


class Clock:
    """A receiver clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def logged(position: int, event_type: str, run_id: str, attempt: int = 1) -> Any:
    return RecordedEvent(
        position=position,
        event_id=uuid.uuid4(),
        stream_type="run",
        stream_id=f"run-{run_id}",
        stream_version=position,
        project_id="p",
        type=event_type,
        schema_version=1,
        data={"run_id": run_id, "attempt": attempt},
        metadata={},
        recorded_at=datetime.now(UTC),
        prev_hash=b"",
        hash=b"",
    )


class TestLivenessWatch:
    def test_a_run_is_silent_only_after_the_bound_since_its_last_report(
        self,
    ) -> None:
        clock = Clock()
        watch = LivenessWatch(clock=clock)
        watch.follow(logged(1, "RunStarted", "r1"))
        clock.now += 50
        watch.heard("r1", 1)
        clock.now += 59

        assert watch.silent(60) == []
        clock.now += 1
        assert watch.silent(60) == [("r1", 60.0)]

    def test_a_report_of_an_older_attempt_proves_nothing(self) -> None:
        clock = Clock()
        watch = LivenessWatch(clock=clock)
        watch.follow(logged(1, "RunStarted", "r1", attempt=2))
        clock.now += 30
        watch.heard("r1", 1)
        clock.now += 30

        assert watch.silent(60) == [("r1", 60.0)]

    def test_only_running_runs_are_watched(self) -> None:
        watch = LivenessWatch(clock=Clock())
        watch.follow(logged(1, "RunDispatched", "queued"))
        watch.follow(logged(2, "MetricsRecorded", "busy"))
        watch.follow(logged(3, "RunStarted", "done"))
        watch.follow(logged(4, "RunSucceeded", "done"))

        assert ("queued" in watch, "busy" in watch, "done" in watch) == (
            False,
            True,
            False,
        )
        assert watch.position == 4

    def test_a_refresh_restarts_every_count(self) -> None:
        clock = Clock()
        watch = LivenessWatch(clock=clock)
        watch.follow(logged(1, "RunStarted", "r1"))
        clock.now += 100
        watch.refresh()
        clock.now += 10

        assert watch.silent(60) == []


class TestDecideLost:
    def test_only_a_running_run_can_be_lost(self) -> None:
        state = fold_run("r1", [])

        assert decide_lost(state, silent_for=90) == Ignored(
            reason=IgnoreReason.UNKNOWN_RUN
        )


@pytest.fixture
async def watching(store: EventStore, bus: Bus) -> AsyncIterator[Coordinator]:
    """A coordinator that declares runs lost after LOST_AFTER seconds."""
    durable = unique_durable()
    running = Coordinator(
        store,
        bus,
        durable=durable,
        fetch_timeout=0.2,
        lost_after=LOST_AFTER,
        sweep_interval=0.1,
    )
    await running.start()
    yield running
    await running.stop()
    await delete_durable(bus, durable)


async def started_run(runs: Runs, executor: str) -> str:
    run_id = runs.new_id()
    await runs.dispatched(run_id, executor=executor)
    await runs.publish(runs.report(run_id, "started", seq=1))
    await eventually(
        lambda: _has(runs, run_id, "RunStarted"), what=f"{run_id} to start"
    )
    return run_id


async def _has(runs: Runs, run_id: str, event_type: str) -> bool:
    return event_type in await runs.types(run_id)


async def cancels(bus: Bus, executor: str) -> list[CancelRequested]:
    """The cancel requests published for `executor` so far."""
    try:
        sub = await bus.js.pull_subscribe(
            cancel_subject(executor),
            durable=f"obs-{secrets.token_hex(4)}",
            stream=CONTROL_STREAM,
        )
    except NotFoundError:
        return []
    try:
        msgs = await fetch_batch(sub, batch=10, timeout=0.5)
    except TimeoutError:
        msgs = []
    finally:
        await sub.unsubscribe()
    return [CancelRequested.model_validate_json(m.data) for m in msgs]


class TestSilentRuns:
    async def test_a_run_whose_reports_stop_ends_failed_lost(
        self, runs: Runs, bus: Bus, watching: Coordinator
    ) -> None:
        executor = f"exec-{secrets.token_hex(4)}"
        run_id = await started_run(runs, executor)

        await eventually(
            lambda: _has(runs, run_id, "RunFailed"), what=f"{run_id} to be lost"
        )

        events = await runs.events(run_id)
        assert [e.type for e in events] == [*SEEDED, "RunStarted", "RunFailed"]
        lost = events[-1]
        assert lost.data["reason"] == "lost"
        assert lost.metadata["actor"] == "coordinator:liveness"
        assert lost.metadata["silent_seconds"] >= LOST_AFTER
        assert fold_run(run_id, events).status is RunStatus.FAILED
        assert [(c.run_id, c.attempt) for c in await cancels(bus, executor)] == [
            (run_id, 1)
        ]

    async def test_heartbeats_with_a_skewed_clock_keep_a_run_alive(
        self, runs: Runs, bus: Bus, watching: Coordinator
    ) -> None:
        """C07: the executor's clock is hours behind; only arrival counts."""
        run_id = await started_run(runs, f"exec-{secrets.token_hex(4)}")

        for seq in range(2, 2 + int(4 * LOST_AFTER / 0.25)):
            beat = runs.report(
                run_id, "heartbeat", seq=seq, sent_at="2020-01-01T00:00:00Z"
            )
            await runs.publish(beat)
            await asyncio.sleep(0.25)
        alive = await runs.types(run_id)
        await eventually(
            lambda: _has(runs, run_id, "RunFailed"), what="the loss after silence"
        )

        assert alive == [*SEEDED, "RunStarted"]
        assert (await runs.events(run_id))[-1].data["reason"] == "lost"

    async def test_a_run_that_never_started_is_not_swept(
        self, runs: Runs, bus: Bus, watching: Coordinator, store: EventStore
    ) -> None:
        queued = runs.new_id()
        await runs.dispatched(queued)
        running = await started_run(runs, f"exec-{secrets.token_hex(4)}")

        await eventually(
            lambda: _has(runs, running, "RunFailed"), what="the started run lost"
        )

        assert await runs.types(queued) == SEEDED

    async def test_a_late_report_after_the_loss_changes_nothing(
        self, runs: Runs, bus: Bus, watching: Coordinator
    ) -> None:
        run_id = await started_run(runs, f"exec-{secrets.token_hex(4)}")
        await eventually(
            lambda: _has(runs, run_id, "RunFailed"), what=f"{run_id} to be lost"
        )

        late = runs.report(run_id, "succeeded", seq=9, exit_code=0)
        outcome = await watching.apply(late)

        assert outcome == Ignored(reason=IgnoreReason.TERMINAL_CONFLICT)
        assert (await runs.types(run_id))[-1] == "RunFailed"


class TestRestartedWatch:
    async def test_a_new_coordinator_gives_running_runs_a_fresh_bound(
        self, runs: Runs, bus: Bus, store: EventStore
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        await runs.append(
            run_id,
            RunStarted(
                project_id=runs.project_id, run_id=run_id, attempt=1, report_id="s1"
            ),
        )
        await asyncio.sleep(2 * LOST_AFTER)  # silent while no coordinator ran
        durable = unique_durable()
        fresh = Coordinator(
            store, bus, durable=durable, lost_after=LOST_AFTER, sweep_interval=0.1
        )
        await fresh.start()
        try:

            async def watched() -> bool:
                return run_id in fresh.liveness

            await eventually(watched, what="the watch to follow the log")
            first_look = await runs.types(run_id)
            await eventually(
                lambda: _has(runs, run_id, "RunFailed"), what="the loss after a bound"
            )
        finally:
            await fresh.stop()
            await delete_durable(bus, durable)

        assert first_look == [*SEEDED, "RunStarted"]
