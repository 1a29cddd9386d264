"""Replay rebuilds the read models from the log and compares them with `rm`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from animus.eventstore import EventStore, NewEvent
from contracts.events import (
    MetricsRecorded,
    ProjectCreated,
    RunCanceled,
    RunCancelRequested,
    RunDispatched,
    RunFailed,
    RunStarted,
)
from contracts.streams import project_stream
from projections import (
    READ_MODEL_TABLES,
    ProjectorService,
    read_checkpoint,
    replay,
    wait_for_position,
)

if TYPE_CHECKING:
    from tests.projections.conftest import Database, Workload


def _project_workload(workload: Workload) -> list[list[NewEvent]]:
    """About 80 events of one project, as the appends a gateway would make."""
    appends = [workload.setup({"train": 3, "eval": 2})]
    inputs = {"train": ("train", 3), "eval": ("eval", 2)}
    for n in range(6):
        appends.append(workload.successful_run(f"{workload.project_id}-ok{n}", inputs))
    failed = f"{workload.project_id}-failed"
    appends.append(
        [
            workload.run_submitted(failed, inputs),
            workload.run_planned(failed, inputs),
            workload.run_event(failed, RunDispatched, executor="local"),
            workload.run_event(failed, RunStarted),
            workload.run_event(
                failed,
                MetricsRecorded,
                metrics={},
                metrics_error="metrics.json is not valid JSON (Expecting value)",
            ),
            workload.run_event(failed, RunFailed, reason="nonzero_exit", exit_code=3),
            workload.run_event(failed, RunStarted),
        ]
    )
    canceled = f"{workload.project_id}-canceled"
    appends.append(
        [
            workload.run_submitted(canceled, {"train": ("train", 1)}),
            workload.run_event(canceled, RunCancelRequested),
            workload.run_event(canceled, RunCanceled),
        ]
    )
    return appends


@pytest.fixture(scope="module")
async def populated(
    store: EventStore,
    app_pool: AsyncConnectionPool,
    projector: ProjectorService,
    new_workload: type[Workload],
) -> int:
    """Five projects of work (a few hundred events), appended concurrently."""
    workloads = [_project_workload(new_workload()) for _ in range(5)]

    async def append_all(appends: list[list[NewEvent]]) -> int:
        position = 0
        for events in appends:
            recorded = await store.append(events, metadata={"actor": "bob"})
            position = recorded[-1].position
        return position

    positions = await asyncio.gather(*(append_all(w) for w in workloads))
    head = max(positions)
    assert head >= 300
    assert await wait_for_position(app_pool, head, timeout=20)
    return head


async def _schema_exists(dsn: str, schema: str) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)
        )
        row = await cur.fetchone()
    return bool(row and row[0])


class TestReplay:
    async def test_replay_of_the_log_equals_the_live_read_models(
        self, database: Database, app_pool: AsyncConnectionPool, populated: int
    ) -> None:
        reached: list[tuple[int, int]] = []

        report = await replay(
            database.owner_dsn,
            batch_size=100,
            progress=lambda position, target: reached.append((position, target)),
        )

        assert report.equal, report.tables
        assert report.position == await read_checkpoint(app_pool) >= populated
        assert report.events == report.position
        assert report.skipped == ()
        assert [t.table for t in report.tables] == list(READ_MODEL_TABLES)
        for table in report.tables:
            assert table.rows_live == table.rows_replayed > 0
        assert len(reached) >= 3
        assert reached[-1][0] == report.position
        assert [p for p, _ in reached] == sorted(p for p, _ in reached)
        assert not await _schema_exists(database.owner_dsn, report.schema)

    async def test_a_tampered_live_row_is_reported(
        self, database: Database, populated: int
    ) -> None:
        async with await psycopg.AsyncConnection.connect(
            database.owner_dsn, autocommit=True
        ) as owner:
            cur = await owner.execute(
                "UPDATE rm.runs SET exit_code = 99 WHERE run_id = "
                "(SELECT min(run_id) FROM rm.runs WHERE status = 'succeeded') "
                "RETURNING run_id"
            )
            row = await cur.fetchone()
            assert row is not None
            try:
                report = await replay(database.owner_dsn)
            finally:
                await owner.execute(
                    "UPDATE rm.runs SET exit_code = 0 WHERE run_id = %s", (row[0],)
                )

        assert not report.equal
        runs = next(t for t in report.tables if t.table == "runs")
        assert (runs.only_live, runs.only_replayed, runs.differing) == (1, 1, 2)
        assert runs.rows_live == runs.rows_replayed
        others = [t for t in report.tables if t.table != "runs"]
        assert all(t.equal for t in others)

    async def test_keep_leaves_the_replay_schema_for_inspection(
        self, database: Database, populated: int
    ) -> None:
        report = await replay(database.owner_dsn, keep=True)

        assert report.kept
        assert await _schema_exists(database.owner_dsn, report.schema)
        async with await psycopg.AsyncConnection.connect(
            database.owner_dsn, autocommit=True
        ) as owner:
            await owner.execute(f'DROP SCHEMA "{report.schema}" CASCADE')

    async def test_a_row_that_does_not_decode_is_reported_not_fatal(
        self,
        database: Database,
        store: EventStore,
        app_pool: AsyncConnectionPool,
        populated: int,
    ) -> None:
        bad = ProjectCreated.model_construct(
            project_id="Not An Identifier", name="bad", description=""
        )
        [recorded] = await store.append(
            [
                NewEvent(
                    stream_type="project",
                    stream_id=project_stream("not-an-identifier"),
                    project_id=None,
                    event=bad,
                )
            ]
        )
        assert await wait_for_position(app_pool, recorded.position, timeout=10)

        report = await replay(database.owner_dsn)

        assert report.equal
        [skipped] = report.skipped
        assert skipped.position == recorded.position
        assert skipped.type == "ProjectCreated"
        assert "does not validate" in skipped.reason

    async def test_replay_while_writers_and_the_projector_are_busy_still_matches(
        self,
        database: Database,
        store: EventStore,
        new_workload: type[Workload],
        populated: int,
    ) -> None:
        async def keep_writing() -> None:
            for appends in [_project_workload(new_workload()) for _ in range(2)]:
                for events in appends:
                    await store.append(events)
                    await asyncio.sleep(0)

        report, _ = await asyncio.gather(
            replay(database.owner_dsn, batch_size=50), keep_writing()
        )

        assert report.equal, report.tables
