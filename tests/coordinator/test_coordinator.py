"""The coordinator against real PostgreSQL and NATS JetStream: reports that
arrive late, twice, out of order, for an old attempt, or as garbage never
corrupt a run, and a restart loses or repeats nothing."""

from __future__ import annotations

import asyncio
import json
import secrets

import pytest
from coordtest import (
    Runs,
    dead_letters,
    delete_durable,
    digest_of,
    drained,
    eventually,
    unique_durable,
)

from animus.bus import Bus
from animus.db import open_pool, with_user
from animus.errors import ConfigurationError
from animus.eventstore import EventStore
from animus.settings import APP_ROLE, load_settings
from commands.coordinator import Coordinator, CoordinatorState
from commands.main import run as run_coordinator_process
from commands.run import RunStatus, fold_run
from contracts.bus import REPORT_STREAM, report_subject
from contracts.events import RunCancelRequested

SEEDED = ["RunSubmitted", "RunPlanned", "RunDispatched"]


async def settle(bus: Bus, coordinator: Coordinator) -> None:
    """Wait until the coordinator settled every report on the stream."""

    async def done() -> bool:
        return await drained(bus, coordinator.durable)

    await eventually(done, what=f"consumer {coordinator.durable} to drain")


async def wait_for_types(runs: Runs, run_id: str, expected: list[str]) -> None:
    async def arrived() -> bool:
        return await runs.types(run_id) == expected

    await eventually(arrived, what=f"{run_id} to hold {expected}")


class TestDuplicateReports:
    async def test_a_report_delivered_twice_gives_one_terminal_event(
        self, runs: Runs, bus: Bus, coordinator: Coordinator
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        started = runs.report(run_id, "started", seq=1)
        succeeded = runs.report(run_id, "succeeded", seq=2, exit_code=0)

        await runs.publish(started)
        await runs.publish(succeeded)
        await runs.publish(succeeded)
        await runs.publish(started)
        await settle(bus, coordinator)

        events = await runs.events(run_id)
        assert [e.type for e in events] == [*SEEDED, "RunStarted", "RunSucceeded"]
        terminal = events[-1]
        assert terminal.data["report_id"] == succeeded.report_id
        assert terminal.metadata["actor"] == "executor:local"
        assert terminal.metadata["report_id"] == succeeded.report_id
        assert terminal.stream_version == 5

    async def test_the_actor_names_the_executor_of_the_run(
        self, runs: Runs, bus: Bus, coordinator: Coordinator
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id, executor="gpu-pool")

        await runs.publish(runs.report(run_id, "started", seq=1))
        await wait_for_types(runs, run_id, [*SEEDED, "RunStarted"])

        events = await runs.events(run_id)
        assert events[-1].metadata["actor"] == "executor:gpu-pool"


class TestLateReports:
    async def test_after_success_late_reports_change_nothing(
        self, runs: Runs, bus: Bus, coordinator: Coordinator
    ) -> None:
        """C05: heartbeat 7, succeeded 9, started 2, heartbeat 8, failed 10."""
        run_id = runs.new_id()
        await runs.dispatched(run_id)

        for report in (
            runs.report(run_id, "heartbeat", seq=7),
            runs.report(run_id, "succeeded", seq=9, exit_code=0),
            runs.report(run_id, "started", seq=2),
            runs.report(run_id, "heartbeat", seq=8),
            runs.report(run_id, "failed", seq=10, exit_code=1, message="late"),
        ):
            await runs.publish(report)
        await settle(bus, coordinator)

        events = await runs.events(run_id)
        assert [e.type for e in events] == [*SEEDED, "RunStarted", "RunSucceeded"]
        assert fold_run(run_id, events).status is RunStatus.SUCCEEDED

    async def test_a_success_after_a_cancel_request_wins_and_keeps_the_flag(
        self, runs: Runs, bus: Bus, coordinator: Coordinator
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        await runs.append(
            run_id,
            RunCancelRequested(project_id=runs.project_id, run_id=run_id, attempt=1),
        )

        await runs.publish(runs.report(run_id, "succeeded", seq=3, exit_code=0))
        await runs.publish(runs.report(run_id, "canceled", seq=4))
        await settle(bus, coordinator)

        events = await runs.events(run_id)
        assert [e.type for e in events] == [
            *SEEDED,
            "RunCancelRequested",
            "RunSucceeded",
        ]
        state = fold_run(run_id, events)
        assert state.status is RunStatus.SUCCEEDED
        assert state.cancel_requested

    async def test_a_report_for_an_older_attempt_is_ignored(
        self, runs: Runs, bus: Bus, coordinator: Coordinator
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        await runs.append(run_id, runs.dispatch(run_id, attempt=2))

        await runs.publish(runs.report(run_id, "started", seq=1, attempt=2))
        await runs.publish(runs.report(run_id, "succeeded", seq=5, attempt=1))
        await runs.publish(runs.report(run_id, "artifact", seq=4, attempt=1))
        await settle(bus, coordinator)

        events = await runs.events(run_id)
        assert [e.type for e in events] == [*SEEDED, "RunDispatched", "RunStarted"]
        assert events[-1].data["attempt"] == 2

        await runs.publish(runs.report(run_id, "failed", seq=2, attempt=2))
        await wait_for_types(
            runs, run_id, [*SEEDED, "RunDispatched", "RunStarted", "RunFailed"]
        )
        events = await runs.events(run_id)
        assert events[-1].data["attempt"] == 2
        assert events[-1].data["reason"] == "internal_error"


class TestOutOfOrderReports:
    async def test_an_artifact_before_started_implies_the_start_once(
        self, runs: Runs, bus: Bus, coordinator: Coordinator
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        artifact = runs.report(run_id, "artifact", seq=3)

        await runs.publish(artifact)
        await runs.publish(runs.report(run_id, "started", seq=1))
        await runs.publish(runs.report(run_id, "metrics", seq=4, metrics={"auc": 1}))
        await runs.publish(runs.report(run_id, "succeeded", seq=5))
        await settle(bus, coordinator)

        events = await runs.events(run_id)
        assert [e.type for e in events] == [
            *SEEDED,
            "RunStarted",
            "ArtifactRecorded",
            "MetricsRecorded",
            "RunSucceeded",
        ]
        implied, recorded = events[3], events[4]
        assert implied.data["report_id"] == recorded.data["report_id"]
        assert implied.data["report_id"] == artifact.report_id
        assert recorded.position == implied.position + 1


class TestBadReports:
    async def test_garbage_is_dead_lettered_without_blocking_later_reports(
        self, runs: Runs, bus: Bus, coordinator: Coordinator
    ) -> None:
        """C13: each poison message is recorded once on its open run and kept
        byte for byte on the dead-letter subject; later reports still apply."""
        run_id = runs.new_id()
        other_id = runs.new_id()
        await runs.dispatched(run_id)
        await runs.dispatched(other_id)
        garbage = [
            b"not json at all",
            b"\xff\xfe\x00",
            b'{"kind": "started"}',
            b"[]",
            b'{"kind": ["succeeded"], "attempt": "1", "run_id": 7}',
        ]

        for payload in garbage:
            await runs.publish_raw(run_id, payload)
        # a valid report for another run, on this run's subject
        misplaced = runs.report(other_id, "succeeded", seq=1)
        await bus.publish(
            report_subject(run_id),
            misplaced.model_dump_json().encode(),
            msg_id=f"misplaced-{secrets.token_hex(4)}",
        )
        await runs.publish(runs.report(run_id, "started", seq=1))
        await runs.publish(runs.report(run_id, "succeeded", seq=2))
        await settle(bus, coordinator)

        events = await runs.events(run_id)
        assert [e.type for e in events] == [
            *SEEDED,
            *["ReportRejected"] * 6,
            "RunStarted",
            "RunSucceeded",
        ]
        rejected = [e.data for e in events if e.type == "ReportRejected"]
        payloads = [*garbage, misplaced.model_dump_json().encode()]
        assert [r["sha256"] for r in rejected] == [digest_of(p) for p in payloads]
        assert [r["size"] for r in rejected] == [len(p) for p in payloads]
        assert [r["reason"] for r in rejected] == [
            *["invalid_report"] * 5,
            "subject_mismatch",
        ]
        assert [r["claimed_kind"] for r in rejected] == [
            None,
            None,
            "started",
            None,
            None,
            "succeeded",
        ]
        assert all(r["run_id"] == run_id for r in rejected)
        assert await runs.types(other_id) == SEEDED
        assert await dead_letters(bus, run_id) == payloads
        assert coordinator.rejected >= 6
        assert coordinator.state is CoordinatorState.RUNNING

    async def test_an_unstorable_report_is_dead_lettered_and_recorded(
        self, runs: Runs, bus: Bus, coordinator: Coordinator
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        poison = runs.report(run_id, "metrics", seq=1, metrics={"bad\x00name": 1.0})

        await runs.publish(poison)
        await runs.publish(runs.report(run_id, "started", seq=2))
        await settle(bus, coordinator)

        events = await runs.events(run_id)
        assert [e.type for e in events] == [*SEEDED, "ReportRejected", "RunStarted"]
        rejected = events[3].data
        assert rejected["reason"] == "unstorable_report"
        assert rejected["claimed_kind"] == "metrics"
        assert rejected["claimed_attempt"] == 1
        assert "bad" not in json.dumps(rejected)  # never the payload itself
        assert await dead_letters(bus, run_id) == [poison.model_dump_json().encode()]

    async def test_a_report_for_an_unknown_run_is_acknowledged(
        self, runs: Runs, bus: Bus, coordinator: Coordinator
    ) -> None:
        run_id = runs.new_id()

        await runs.publish(runs.report(run_id, "succeeded", seq=1))
        await settle(bus, coordinator)

        assert await runs.types(run_id) == []


class TestRestart:
    async def test_a_restarted_coordinator_processes_the_rest_exactly_once(
        self, runs: Runs, bus: Bus, store: EventStore
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        durable = unique_durable()

        def coordinator() -> Coordinator:
            return Coordinator(
                store,
                bus,
                durable=durable,
                subject=report_subject(run_id),
                fetch_timeout=0.2,
            )

        first = coordinator()
        try:
            async with first:
                started = runs.report(run_id, "started", seq=1)
                await runs.publish(started)
                await wait_for_types(runs, run_id, [*SEEDED, "RunStarted"])
            assert first.state is CoordinatorState.STOPPED

            succeeded = runs.report(run_id, "succeeded", seq=4)
            await runs.publish(runs.report(run_id, "artifact", seq=2))
            await runs.publish(runs.report(run_id, "metrics", seq=3, metrics={"a": 1}))
            await runs.publish(succeeded)
            await runs.publish(succeeded)
            await runs.publish(started)
            assert await runs.types(run_id) == [*SEEDED, "RunStarted"]

            second = coordinator()
            async with second:
                await settle(bus, second)
                expected = [
                    *SEEDED,
                    "RunStarted",
                    "ArtifactRecorded",
                    "MetricsRecorded",
                    "RunSucceeded",
                ]
                assert await runs.types(run_id) == expected
                assert second.applied == 3
                assert second.ignored == 2
                assert first.applied == 1
        finally:
            await delete_durable(bus, durable)

    async def test_a_report_that_failed_on_the_database_is_redelivered(
        self, runs: Runs, bus: Bus, store: EventStore, fresh_database: str
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        durable = unique_durable()
        broken_pool = await open_pool(with_user(fresh_database, APP_ROLE))
        await broken_pool.close()
        broken = Coordinator(
            EventStore(broken_pool),
            bus,
            durable=durable,
            subject=report_subject(run_id),
            fetch_timeout=0.2,
        )
        healthy = Coordinator(
            store, bus, durable=durable, subject=report_subject(run_id)
        )
        try:
            async with broken:
                await runs.publish(runs.report(run_id, "succeeded", seq=1))

                async def naked() -> bool:
                    return broken.redelivered >= 1

                await eventually(naked, what="the report to be put back")
            assert broken.applied == 0
            assert await runs.types(run_id) == SEEDED

            async with healthy:
                await wait_for_types(runs, run_id, [*SEEDED, "RunSucceeded"])
                await settle(bus, healthy)
            assert await runs.types(run_id) == [*SEEDED, "RunSucceeded"]
        finally:
            await delete_durable(bus, durable)


class TestSharedConsumer:
    async def test_two_coordinators_on_one_consumer_apply_each_report_once(
        self, runs: Runs, bus: Bus, store: EventStore
    ) -> None:
        run_ids = [runs.new_id() for _ in range(8)]
        for run_id in run_ids:
            await runs.dispatched(run_id)
        durable = unique_durable()
        pair = [
            Coordinator(store, bus, durable=durable, batch_size=4, fetch_timeout=0.2)
            for _ in range(2)
        ]
        try:
            async with pair[0], pair[1]:
                for run_id in run_ids:
                    for report in (
                        runs.report(run_id, "artifact", seq=2),
                        runs.report(run_id, "started", seq=1),
                        runs.report(run_id, "succeeded", seq=3),
                    ):
                        await runs.publish(report)
                        await runs.publish(report)
                await settle(bus, pair[0])
        finally:
            await delete_durable(bus, durable)

        for run_id in run_ids:
            assert await runs.types(run_id) == [
                *SEEDED,
                "RunStarted",
                "ArtifactRecorded",
                "RunSucceeded",
            ]


class TestProcess:
    async def test_the_process_applies_reports_until_stopped(
        self, runs: Runs, bus: Bus, services: object, fresh_database: str
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        settings = load_settings(
            environment="test",
            database_url=fresh_database,
            nats_url=services.nats_url,  # type: ignore[attr-defined]
        )
        stop = asyncio.Event()
        process = asyncio.create_task(run_coordinator_process(settings, stop))
        try:
            await runs.publish(runs.report(run_id, "succeeded", seq=1))
            await wait_for_types(runs, run_id, [*SEEDED, "RunSucceeded"])
        finally:
            stop.set()
            await asyncio.wait_for(process, timeout=20)
            await delete_durable(bus, "coordinator")

    async def test_the_process_refuses_to_start_without_nats(
        self, fresh_database: str
    ) -> None:
        settings = load_settings(database_url=fresh_database, nats_url=None)

        with pytest.raises(ConfigurationError, match="ANIMUS_NATS_URL"):
            await run_coordinator_process(settings, asyncio.Event())


async def test_reports_live_in_the_report_stream(bus: Bus) -> None:
    info = await bus.js.stream_info(REPORT_STREAM)
    assert "animus.report.>" in (info.config.subjects or [])
