"""Folding events into the `rm` read models through the running projector."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

from psycopg_pool import AsyncConnectionPool

from animus.eventstore import EventStore, NewEvent
from contracts.events import (
    DomainEvent,
    ProjectCreated,
    ReportRejected,
    RunCanceled,
    RunCancelRequested,
    RunDispatched,
    RunFailed,
    RunStarted,
    RunSucceeded,
)
from contracts.streams import project_stream
from projections import (
    READ_MODEL_TABLES,
    ProjectorService,
    ProjectorState,
    read_checkpoint,
    wait_for_position,
)

if TYPE_CHECKING:
    from tests.projections.conftest import Fold, Select, Workload


class SomethingHappened(DomainEvent):
    """An event type this projector has never heard of."""

    event_type: ClassVar[str] = "SomethingHappened"
    project_id: str


async def _count_rows(select: Select) -> dict[str, int]:
    counts = {}
    for table in READ_MODEL_TABLES:
        rows = await select(f"SELECT count(*) AS n FROM rm.{table}")
        counts[table] = rows[0]["n"]
    return counts


class TestFolding:
    async def test_a_project_dataset_version_and_run_lifecycle_become_rows(
        self, workload: Workload, fold: Fold, select: Select
    ) -> None:
        pid = workload.project_id
        setup = await fold(workload.setup({"train": 2}))
        run = await fold(workload.successful_run("run-a1", {"data": ("train", 2)}))

        [project] = await select("SELECT * FROM rm.projects WHERE project_id = %s", pid)
        assert project["name"] == "Churn"
        assert project["created_by"] == "alice"
        assert project["created_at"] == setup[0].recorded_at
        assert project["position"] == setup[0].position

        [dataset] = await select("SELECT * FROM rm.datasets WHERE project_id = %s", pid)
        assert dataset["latest_version"] == 2
        versions = await select(
            "SELECT * FROM rm.dataset_versions WHERE project_id = %s ORDER BY version",
            pid,
        )
        assert [v["version"] for v in versions] == [1, 2]
        assert versions[1]["committed_at"] == setup[-1].recorded_at
        assert versions[1]["content_type"] == "text/csv"

        [row] = await select("SELECT * FROM rm.runs WHERE run_id = %s", "run-a1")
        assert row["project_id"] == pid
        assert row["status"] == "succeeded"
        assert row["attempt"] == 1
        assert row["executor"] == "local"
        assert row["submitted_by"] == "alice"
        assert row["submitted_at"] == run[0].recorded_at
        assert row["started_at"] == run[3].recorded_at
        assert row["finished_at"] == run[-1].recorded_at
        assert row["exit_code"] == 0
        assert row["spec"]["inputs"] == {"data": {"dataset": "train", "version": 2}}
        assert row["plan"]["inputs"]["data"]["sha256"] == versions[1]["sha256"]
        assert row["plan_hash"] == run[1].data["plan_hash"]
        assert row["last_position"] == run[-1].position
        assert row["cancel_requested"] is False

    async def test_metrics_artifacts_and_lineage_edges_are_recorded(
        self, workload: Workload, fold: Fold, select: Select
    ) -> None:
        await fold(workload.setup({"train": 1}))
        await fold(workload.successful_run("run-b1", {"data": ("train", 1)}))

        metrics = await select(
            "SELECT name, value FROM rm.run_metrics WHERE run_id = %s ORDER BY name",
            "run-b1",
        )
        assert metrics == [
            {"name": "auc", "value": 0.91},
            {"name": "loss", "value": 0.2},
        ]
        artifacts = await select(
            "SELECT name, kind FROM rm.run_artifacts WHERE run_id = %s ORDER BY name",
            "run-b1",
        )
        assert artifacts == [
            {"name": "logs/run.log", "kind": "log"},
            {"name": "model.pkl", "kind": "output"},
        ]
        edges = await select(
            "SELECT source_kind, source_id, target_kind, target_id, relation "
            "FROM rm.lineage_edges WHERE project_id = %s ORDER BY relation, target_id",
            workload.project_id,
        )
        assert edges == [
            {
                "source_kind": "dataset_version",
                "source_id": "train@1",
                "target_kind": "run",
                "target_id": "run-b1",
                "relation": "input_of",
            },
            {
                "source_kind": "run",
                "source_id": "run-b1",
                "target_kind": "artifact",
                "target_id": "run-b1/logs/run.log",
                "relation": "produced",
            },
            {
                "source_kind": "run",
                "source_id": "run-b1",
                "target_kind": "artifact",
                "target_id": "run-b1/model.pkl",
                "relation": "produced",
            },
        ]

    async def test_latest_version_follows_the_highest_committed_version(
        self, workload: Workload, fold: Fold, select: Select
    ) -> None:
        await fold(workload.setup({"eval": 3}))

        [dataset] = await select(
            "SELECT latest_version FROM rm.datasets WHERE project_id = %s",
            workload.project_id,
        )
        assert dataset["latest_version"] == 3


class TestTerminalStatus:
    async def test_a_late_run_started_after_run_succeeded_leaves_it_succeeded(
        self, workload: Workload, fold: Fold, select: Select
    ) -> None:
        await fold(workload.setup({"train": 1}))
        run = await fold(workload.successful_run("run-c1", {"data": ("train", 1)}))
        await fold([workload.run_event("run-c1", RunStarted, attempt=1)])

        [row] = await select("SELECT * FROM rm.runs WHERE run_id = %s", "run-c1")
        assert row["status"] == "succeeded"
        assert row["started_at"] == run[3].recorded_at
        assert row["last_position"] == run[-1].position

    async def test_a_second_terminal_event_changes_nothing(
        self, workload: Workload, fold: Fold, select: Select
    ) -> None:
        await fold(workload.setup({"train": 1}))
        await fold(workload.successful_run("run-c2", {"data": ("train", 1)}))
        await fold(
            [workload.run_event("run-c2", RunFailed, reason="lost", message="gone")]
        )

        [row] = await select("SELECT * FROM rm.runs WHERE run_id = %s", "run-c2")
        assert row["status"] == "succeeded"
        assert row["failure_reason"] is None

    async def test_a_canceled_run_records_the_request_and_the_reason(
        self, workload: Workload, fold: Fold, select: Select
    ) -> None:
        await fold(workload.setup({"train": 1}))
        inputs = {"data": ("train", 1)}
        events = [
            workload.run_submitted("run-c3", inputs),
            workload.run_planned("run-c3", inputs),
            workload.run_event("run-c3", RunDispatched, executor="local"),
            workload.run_event("run-c3", RunCancelRequested),
            workload.run_event("run-c3", RunCanceled, reason="user asked"),
            workload.run_event("run-c3", RunSucceeded),
        ]
        recorded = await fold(events)

        [row] = await select("SELECT * FROM rm.runs WHERE run_id = %s", "run-c3")
        assert row["status"] == "canceled"
        assert row["cancel_requested"] is True
        assert row["failure_message"] == "user asked"
        assert row["finished_at"] == recorded[4].recorded_at
        assert row["exit_code"] is None


class TestFinishTimes:
    """C04: `finished_at` is the workload's exit time when the executor
    reported one, beside the time the control plane recorded the end."""

    async def _finish(
        self,
        workload: Workload,
        fold: Fold,
        store: EventStore,
        app_pool: AsyncConnectionPool,
        run_id: str,
        workload_time: object,
    ) -> int:
        events = workload.successful_run(run_id, {"data": ("train", 1)})
        await fold(events[:-1])
        metadata = {"actor": "executor:local", "workload_time": workload_time}
        [done] = await store.append([events[-1]], metadata=metadata)
        assert await wait_for_position(app_pool, done.position, timeout=10)
        return done.position

    async def test_a_reported_workload_time_is_the_finish_time(
        self,
        workload: Workload,
        fold: Fold,
        store: EventStore,
        app_pool: AsyncConnectionPool,
        select: Select,
    ) -> None:
        await fold(workload.setup({"train": 1}))
        await self._finish(
            workload, fold, store, app_pool, "run-w1", "2026-01-01T00:00:00.25Z"
        )

        [row] = await select("SELECT * FROM rm.runs WHERE run_id = %s", "run-w1")
        [done] = await select(
            "SELECT recorded_at FROM events WHERE stream_id = %s "
            "ORDER BY stream_version DESC LIMIT 1",
            "run-run-w1",
        )
        assert row["finished_at"] == datetime(2026, 1, 1, 0, 0, 0, 250000, UTC)
        assert row["recorded_finished_at"] == done["recorded_at"]
        assert row["finished_at_source"] == "workload"

    async def test_an_unreadable_or_missing_workload_time_falls_back(
        self,
        workload: Workload,
        fold: Fold,
        store: EventStore,
        app_pool: AsyncConnectionPool,
        select: Select,
    ) -> None:
        await fold(workload.setup({"train": 1}))
        for run_id, value in (
            ("run-w2", "yesterday"),
            ("run-w3", "2026-01-01T00:00:00"),  # no zone: not a point in time
            ("run-w4", None),
        ):
            await self._finish(workload, fold, store, app_pool, run_id, value)

        rows = await select(
            "SELECT finished_at, recorded_finished_at, finished_at_source "
            "FROM rm.runs WHERE run_id IN ('run-w2', 'run-w3', 'run-w4')"
        )
        assert len(rows) == 3
        for row in rows:
            assert row["finished_at"] == row["recorded_finished_at"] is not None
            assert row["finished_at_source"] == "recorded"


class TestRejectedReports:
    async def test_rejections_are_counted_on_their_run_whatever_its_status(
        self, workload: Workload, fold: Fold, select: Select
    ) -> None:
        await fold(workload.setup({"train": 1}))
        run = await fold(workload.successful_run("run-r1", {"data": ("train", 1)}))

        def rejected(run_id: str | None, sequence: int) -> NewEvent:
            event = ReportRejected(
                project_id=workload.project_id if run_id else None,
                run_id=run_id,
                reason="invalid_report",
                subject=f"animus.report.{run_id or 'nobody'}",
                stream_sequence=sequence,
                sha256="0" * 64,
                size=3,
                dead_letter_subject=f"animus.deadletter.report.{run_id or 'nobody'}",
            )
            return NewEvent(
                stream_type="coordinator",
                stream_id="coordinator-rejected-reports",
                project_id=event.project_id,
                event=event,
            )

        late = await fold([rejected("run-r1", 1), rejected(None, 2)])

        [row] = await select("SELECT * FROM rm.runs WHERE run_id = %s", "run-r1")
        assert row["rejected_reports"] == 1
        assert row["status"] == "succeeded"
        assert row["finished_at"] == run[-1].recorded_at
        assert row["last_position"] == late[0].position


class TestCheckpoint:
    async def test_an_unknown_event_type_is_skipped_and_passed(
        self, workload: Workload, fold: Fold, select: Select
    ) -> None:
        unknown = NewEvent(
            stream_type="project",
            stream_id=project_stream(workload.project_id),
            project_id=workload.project_id,
            event=SomethingHappened(project_id=workload.project_id),
        )
        await fold([unknown, workload.project_created("After the unknown")])

        [row] = await select(
            "SELECT name FROM rm.projects WHERE project_id = %s", workload.project_id
        )
        assert row["name"] == "After the unknown"

    async def test_a_payload_that_does_not_decode_is_skipped_and_passed(
        self, workload: Workload, fold: Fold, select: Select
    ) -> None:
        bad = ProjectCreated.model_construct(
            project_id="Not An Identifier", name="bad", description=""
        )
        broken = NewEvent(
            stream_type="project",
            stream_id=project_stream("broken"),
            project_id=None,
            event=bad,
        )
        await fold([broken, workload.project_created()])

        assert (
            await select(
                "SELECT * FROM rm.projects WHERE project_id = %s", "Not An Identifier"
            )
            == []
        )
        assert (
            len(
                await select(
                    "SELECT * FROM rm.projects WHERE project_id = %s",
                    workload.project_id,
                )
            )
            == 1
        )

    async def test_a_second_projector_never_refolds_what_the_checkpoint_covers(
        self,
        workload: Workload,
        fold: Fold,
        select: Select,
        app_pool: AsyncConnectionPool,
    ) -> None:
        await fold(workload.setup({"train": 2}))
        await fold(workload.successful_run("run-d1", {"data": ("train", 2)}))
        before = await _count_rows(select)
        checkpoint = await read_checkpoint(app_pool)

        # A fresh instance starts from position 0 in memory: the checkpoint
        # it locks tells it every one of those events is already folded.
        late = ProjectorService(app_pool)
        assert await late.run_once() == 0
        assert late.position == checkpoint
        assert await late.run_once() == 0

        assert await _count_rows(select) == before
        assert await read_checkpoint(app_pool) == checkpoint

    async def test_two_running_projectors_share_one_checkpoint(
        self,
        workload: Workload,
        store: EventStore,
        select: Select,
        app_pool: AsyncConnectionPool,
        projector: ProjectorService,
    ) -> None:
        async with ProjectorService(app_pool, poll_interval=0.01) as second:
            assert second.state is ProjectorState.RUNNING
            await store.append(workload.setup({"train": 3}))
            for n in range(5):
                run_id = f"run-e{n}-{workload.project_id}"
                recorded = await store.append(
                    workload.successful_run(run_id, {"data": ("train", 3)})
                )
            assert await wait_for_position(app_pool, recorded[-1].position, 10)
        assert second.state is ProjectorState.IDLE
        assert projector.state is ProjectorState.RUNNING

        runs = await select(
            "SELECT status, last_position FROM rm.runs WHERE project_id = %s",
            workload.project_id,
        )
        assert [r["status"] for r in runs] == ["succeeded"] * 5
        metrics = await select(
            "SELECT count(*) AS n FROM rm.run_metrics m JOIN rm.runs r USING (run_id) "
            "WHERE r.project_id = %s",
            workload.project_id,
        )
        assert metrics[0]["n"] == 10
