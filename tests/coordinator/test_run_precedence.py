"""C05 end to end: late, reordered and conflicting reports on the real bus never
move a finished run back in GET run (the projected tables), and a replay of
the log gives the same state."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from coordtest import Runs, drained, eventually
from psycopg_pool import AsyncConnectionPool

from animus.bus import Bus
from animus.eventstore import EventStore
from commands.coordinator import Coordinator
from contracts.bus import RunReport
from contracts.events import RunCancelRequested
from projections import wait_for_position
from projections.queries import get_run
from projections.replay import replay

SEEDED = ["RunSubmitted", "RunPlanned", "RunDispatched"]
TERMINAL = {"succeeded", "failed", "canceled"}


class Observer:
    """Publishes reports one at a time and reads GET run after each."""

    def __init__(
        self,
        runs: Runs,
        bus: Bus,
        coordinator: Coordinator,
        pool: AsyncConnectionPool,
        store: EventStore,
    ) -> None:
        self.runs, self.bus, self.coordinator = runs, bus, coordinator
        self.pool, self.store = pool, store

    async def get(self, run_id: str) -> dict[str, Any]:
        """GET run once the projector has folded everything appended so far."""
        head = await self.store.head_position()
        assert await wait_for_position(self.pool, head, timeout=15)
        return dict(await get_run(self.pool, self.runs.project_id, run_id))

    async def send(self, report: RunReport) -> dict[str, Any]:
        await self.runs.publish(report)

        async def done() -> bool:
            return await drained(self.bus, self.coordinator.durable)

        await eventually(done, what="the coordinator to settle the report")
        return await self.get(report.run_id)

    async def statuses(self, reports: list[RunReport]) -> list[str]:
        return [(await self.send(report))["status"] for report in reports]


def after_first_terminal(statuses: list[str]) -> list[str]:
    first = next(i for i, status in enumerate(statuses) if status in TERMINAL)
    return statuses[first:]


def ignored_reasons(logs: list[dict[str, Any]], report: RunReport) -> list[str]:
    return [
        entry["reason"]
        for entry in logs
        if entry["event"] == "report_ignored"
        and entry["report_id"] == report.report_id
    ]


@pytest.fixture
def seen(
    runs: Runs,
    bus: Bus,
    coordinator: Coordinator,
    app_pool: AsyncConnectionPool,
    store: EventStore,
    project: str,
) -> Observer:
    """An observer of this test's coordinator, in a project already logged."""
    return Observer(runs, bus, coordinator, app_pool, store)


class TestLateStatusMessages:
    async def test_get_run_stays_terminal_through_the_c05_sequence(
        self,
        runs: Runs,
        seen: Observer,
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        assert (await seen.send(runs.report(run_id, "started", seq=1)))[
            "status"
        ] == "running"
        failed = runs.report(run_id, "failed", seq=10, exit_code=1, message="late")

        with structlog.testing.capture_logs() as logs:
            statuses = await seen.statuses(
                [
                    runs.report(run_id, "heartbeat", seq=7),
                    runs.report(run_id, "succeeded", seq=9, exit_code=0),
                    runs.report(run_id, "started", seq=2),
                    runs.report(run_id, "heartbeat", seq=8),
                    failed,
                ]
            )

        assert statuses == ["running", *["succeeded"] * 4]
        assert set(after_first_terminal(statuses)) == {"succeeded"}
        run = await seen.get(run_id)
        assert run["exit_code"] == 0
        assert run["failure_reason"] is None
        assert await runs.types(run_id) == [*SEEDED, "RunStarted", "RunSucceeded"]
        assert ignored_reasons(logs, failed) == ["terminal_conflict"]

    async def test_a_late_success_after_a_confirmed_cancel_is_a_conflict(
        self,
        runs: Runs,
        seen: Observer,
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        await seen.send(runs.report(run_id, "started", seq=1))
        await runs.append(
            run_id,
            RunCancelRequested(project_id=runs.project_id, run_id=run_id, attempt=1),
        )
        assert (await seen.get(run_id))["cancel_requested"] is True
        late = runs.report(run_id, "succeeded", seq=2, exit_code=0)

        with structlog.testing.capture_logs() as logs:
            statuses = await seen.statuses(
                [runs.report(run_id, "canceled", seq=3), late]
            )

        assert statuses == ["canceled", "canceled"]
        assert (await seen.get(run_id))["exit_code"] is None
        assert await runs.types(run_id) == [
            *SEEDED,
            "RunStarted",
            "RunCancelRequested",
            "RunCanceled",
        ]
        assert ignored_reasons(logs, late) == ["terminal_conflict"]

    async def test_reports_of_attempt_one_never_touch_attempt_two(
        self,
        runs: Runs,
        seen: Observer,
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        await seen.send(runs.report(run_id, "started", seq=1))
        await runs.append(run_id, runs.dispatch(run_id, attempt=2))
        await seen.send(runs.report(run_id, "started", seq=1, attempt=2))

        stale = [
            runs.report(run_id, "succeeded", seq=5, attempt=1, exit_code=0),
            runs.report(run_id, "heartbeat", seq=6, attempt=1),
            runs.report(run_id, "failed", seq=7, attempt=1, exit_code=3),
        ]
        statuses = await seen.statuses(stale)

        assert statuses == ["running"] * 3
        run = await seen.get(run_id)
        assert run["attempt"] == 2
        assert run["exit_code"] is None
        final = await seen.send(
            runs.report(run_id, "succeeded", seq=2, attempt=2, exit_code=0)
        )
        assert (final["status"], final["attempt"]) == ("succeeded", 2)


class TestReplayAfterLateReports:
    async def test_replay_of_the_log_equals_the_live_runs(
        self,
        runs: Runs,
        seen: Observer,
        fresh_database: str,
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        await seen.statuses(
            [
                runs.report(run_id, "heartbeat", seq=7),
                runs.report(run_id, "failed", seq=9, exit_code=2),
                runs.report(run_id, "started", seq=2),
                runs.report(run_id, "succeeded", seq=10, exit_code=0),
            ]
        )
        live = await seen.get(run_id)

        report = await replay(fresh_database)

        assert report.equal, report.tables
        assert report.skipped == ()
        assert (live["status"], live["failure_reason"]) == ("failed", "nonzero_exit")


class TestRefusedMetrics:
    async def test_a_refused_metrics_file_is_shown_on_the_run_and_replayed(
        self,
        runs: Runs,
        seen: Observer,
        fresh_database: str,
    ) -> None:
        """The run still succeeds; GET run and the timeline say what was wrong."""
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        problem = 'metrics.json: refused "loss" is NaN, not a finite number'
        await seen.send(runs.report(run_id, "started", seq=1))
        await seen.send(
            runs.report(run_id, "metrics", seq=2, metrics={"auc": 0.5}, message=problem)
        )
        run = await seen.send(runs.report(run_id, "succeeded", seq=3, exit_code=0))

        assert run["status"] == "succeeded"
        assert run["metrics"] == {"auc": 0.5}
        assert run["metrics_error"] == problem
        events = await runs.events(run_id)
        recorded = next(e for e in events if e.type == "MetricsRecorded")
        assert recorded.data["metrics_error"] == problem
        replayed = await replay(fresh_database)
        assert replayed.equal and replayed.skipped == ()

    async def test_metrics_read_whole_have_no_error(
        self,
        runs: Runs,
        seen: Observer,
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        run = await seen.send(runs.report(run_id, "metrics", seq=1, metrics={"a": 1}))
        assert (run["metrics"], run["metrics_error"]) == ({"a": 1.0}, None)


class TestPoisonTerminalReports:
    async def test_a_lone_surrogate_and_a_nul_in_the_message_still_finish_the_run(
        self,
        runs: Runs,
        seen: Observer,
        fresh_database: str,
    ) -> None:
        """C13: pydantic's JSON parser refuses the surrogate escape; the report
        is still read, its text stored with U+FFFD, and replay decodes it."""
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        report = runs.report(run_id, "failed", seq=2, exit_code=1)
        raw = report.model_dump_json().replace(
            '"message":""', '"message":"col\\u0000umn \\ud800 tail"'
        )
        assert "\\ud800" in raw

        await runs.publish_raw(run_id, raw.encode())
        await eventually(
            lambda: drained(seen.bus, seen.coordinator.durable),
            what="the poison settled",
        )
        run = await seen.get(run_id)
        after = await seen.send(runs.report(run_id, "heartbeat", seq=3))

        assert run["status"] == after["status"] == "failed"
        assert run["failure_message"] == "col\ufffdumn \ufffd tail"
        assert (await runs.events(run_id))[-1].data["report_id"] == report.report_id
        replayed = await replay(fresh_database)
        assert replayed.equal and replayed.skipped == ()
