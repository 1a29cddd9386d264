"""Point-in-time read models: replay up to a position or an instant into a
schema, the diff between two points, and the gateway's `as_of` snapshots."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from contracts.events import RunCanceled, RunCancelRequested, RunDispatched, RunStarted
from projections import pointintime, wait_for_position
from projections.asof import ensure_snapshot, snapshot_schema, snapshots
from projections.pointintime import PointError, SchemaRefused, diff, replay_into

if TYPE_CHECKING:
    from tests.projections.conftest import Database, Workload


async def _rows(dsn: str, query: str, *params: Any) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(query, params)
        return await cur.fetchall()


async def _schemas(dsn: str, pattern: str) -> list[str]:
    rows = await _rows(
        dsn, "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", pattern
    )
    return sorted(row["nspname"] for row in rows)


async def _drop(dsn: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="module")
async def history(
    store: Any,
    app_pool: AsyncConnectionPool,
    projector: Any,
    new_workload: type[Workload],
) -> dict[str, Any]:
    """A run that was running at `running_at`, then canceled; its instants."""
    work = new_workload()
    run_id = f"{work.project_id}-r"
    inputs = {"train": ("train", 1)}
    setup = await store.append(work.setup({"train": 1}), metadata={"actor": "bob"})
    started = await store.append(
        [
            work.run_submitted(run_id, inputs),
            work.run_planned(run_id, inputs),
            work.run_event(run_id, RunDispatched, executor="local"),
            work.run_event(run_id, RunStarted),
        ],
        metadata={"actor": "bob"},
    )
    await asyncio.sleep(0.05)
    between = datetime.now(UTC)
    await asyncio.sleep(0.05)
    ended = await store.append(
        [
            work.run_event(run_id, RunCancelRequested),
            work.run_event(run_id, RunCanceled, reason="asked"),
        ],
        metadata={"actor": "bob"},
    )
    assert await wait_for_position(app_pool, ended[-1].position, timeout=10)
    return {
        "project_id": work.project_id,
        "run_id": run_id,
        "genesis_at": setup[0].recorded_at,
        "running_at": started[-1].position,
        "between": between,
        "head": ended[-1].position,
    }


class TestReplayUntil:
    async def test_a_replay_before_the_cancel_shows_the_run_running(
        self, database: Database, history: dict[str, Any]
    ) -> None:
        position = history["running_at"]
        try:
            built = await replay_into(database.owner_dsn, str(position), "pit_s1")

            assert built.point.position == position
            assert built.events == position
            assert built.rows["runs"] >= 1
            [run] = await _rows(
                database.owner_dsn,
                "SELECT status, cancel_requested FROM pit_s1.runs WHERE run_id = %s",
                history["run_id"],
            )
            assert run == {"status": "running", "cancel_requested": False}
            [live] = await _rows(
                database.owner_dsn,
                "SELECT status FROM rm.runs WHERE run_id = %s",
                history["run_id"],
            )
            assert live["status"] == "canceled"
        finally:
            await _drop(database.owner_dsn, "pit_s1")
        assert await _schemas(database.owner_dsn, "rm\\_replay\\_%") == []

    async def test_an_instant_resolves_to_the_last_event_recorded_by_then(
        self, database: Database, history: dict[str, Any]
    ) -> None:
        instant = history["between"].isoformat()
        try:
            built = await replay_into(database.owner_dsn, instant, "pit_ts")
            assert built.point.position == history["running_at"]
            assert built.point.instant == history["between"]
            [run] = await _rows(
                database.owner_dsn,
                "SELECT status FROM pit_ts.runs WHERE run_id = %s",
                history["run_id"],
            )
            assert run["status"] == "running"
        finally:
            await _drop(database.owner_dsn, "pit_ts")

    async def test_an_existing_schema_is_refused_and_replace_rebuilds_a_replay(
        self, database: Database, history: dict[str, Any]
    ) -> None:
        try:
            await replay_into(database.owner_dsn, "1", "pit_twice")
            with pytest.raises(SchemaRefused, match="exists; pass --replace"):
                await replay_into(database.owner_dsn, "2", "pit_twice")

            rebuilt = await replay_into(
                database.owner_dsn, str(history["head"]), "pit_twice", replace=True
            )
            assert rebuilt.replaced
            [run] = await _rows(
                database.owner_dsn,
                "SELECT status FROM pit_twice.runs WHERE run_id = %s",
                history["run_id"],
            )
            assert run["status"] == "canceled"
        finally:
            await _drop(database.owner_dsn, "pit_twice")

    async def test_replace_never_touches_a_schema_replay_did_not_make(
        self, database: Database, history: dict[str, Any]
    ) -> None:
        async with await psycopg.AsyncConnection.connect(
            database.owner_dsn, autocommit=True
        ) as conn:
            await conn.execute("CREATE SCHEMA pit_foreign")
            await conn.execute("CREATE TABLE pit_foreign.keep (x int)")
        try:
            for replace in (False, True):
                with pytest.raises(SchemaRefused) as caught:
                    await replay_into(
                        database.owner_dsn, "1", "pit_foreign", replace=replace
                    )
                assert caught.value.detail == (
                    "--into: schema pit_foreign exists and was not built by animus "
                    "replay, so it will not be replaced; choose another name"
                )
            assert (
                await _rows(database.owner_dsn, "SELECT * FROM pit_foreign.keep") == []
            )
        finally:
            await _drop(database.owner_dsn, "pit_foreign")

    @pytest.mark.parametrize(
        ("schema", "why"),
        [
            ("rm", "schema of the platform"),
            ("public", "schema of the platform"),
            ("pg_catalog", "schema of the platform"),
            ("rm_asof_3", "schema of the platform"),
            ("Bad-Name", "not a plain identifier"),
            ("1abc", "not a plain identifier"),
            ('x"; drop', "not a plain identifier"),
        ],
    )
    async def test_names_that_are_not_plain_or_are_the_platforms_are_refused(
        self, database: Database, schema: str, why: str
    ) -> None:
        with pytest.raises(SchemaRefused, match=why):
            await replay_into(database.owner_dsn, "1", schema)

    @pytest.mark.parametrize(
        ("until", "message", "malformed"),
        [
            ("yesterday", "neither a position nor an RFC 3339", True),
            ("2025-01-01T00:00:00", "has no time zone", True),
            ("0", "before the first event", False),
            ("-1", "position -1 is negative", False),
            ("-5", "position -5 is negative", False),
            ("99999999", "beyond the head of the log", False),
            ("2999-01-01T00:00:00Z", "is in the future", False),
            ("2001-01-01T00:00:00+00:00", "before the first event (recorded at", False),
        ],
    )
    async def test_a_point_outside_the_log_is_refused(
        self,
        database: Database,
        history: dict[str, Any],
        until: str,
        message: str,
        malformed: bool,
    ) -> None:
        with pytest.raises(PointError, match=re.escape(message)) as caught:
            await replay_into(database.owner_dsn, until, "pit_never")
        assert caught.value.malformed is malformed
        assert await _schemas(database.owner_dsn, "pit\\_never") == []


class TestDiff:
    @pytest.mark.parametrize("point", ["-1", "-5"])
    async def test_a_negative_position_is_refused_not_taken_for_the_head(
        self, database: Database, history: dict[str, Any], point: str
    ) -> None:
        with pytest.raises(PointError, match=f"position {point} is negative"):
            await diff(database.owner_dsn, "1", point)
        with pytest.raises(PointError, match=f"position {point} is negative"):
            await diff(database.owner_dsn, point, "head")

    async def test_the_diff_from_running_to_head_shows_the_cancellation(
        self, database: Database, history: dict[str, Any]
    ) -> None:
        result = await diff(database.owner_dsn, str(history["running_at"]), "head")

        assert result.first.position == history["running_at"]
        assert result.second.position >= history["head"]
        runs = next(t for t in result.tables if t.table == "runs")
        assert runs.key == ("run_id",)
        [change] = [c for c in runs.changed if c.key == {"run_id": history["run_id"]}]
        assert change.columns["status"] == ("running", "canceled")
        assert change.columns["cancel_requested"] == (False, True)
        assert change.columns["failure_message"] == (None, "asked")
        assert "spec" not in change.columns
        as_json = result.as_json()["tables"]["runs"]["changed"]
        mine = [c for c in as_json if c["key"] == {"run_id": history["run_id"]}]
        assert mine[0]["columns"]["status"] == {"old": "running", "new": "canceled"}
        lines = pointintime.diff_lines(result)
        assert any(
            f"run_id={history['run_id']}" in line
            and "status running -> canceled" in line
            for line in lines
        ), lines
        assert await _schemas(database.owner_dsn, "rm\\_diff\\_%") == []

    async def test_added_rows_are_listed_with_their_key(
        self, database: Database, history: dict[str, Any]
    ) -> None:
        result = await diff(database.owner_dsn, "0", str(history["running_at"]))

        projects = next(t for t in result.tables if t.table == "projects")
        assert {"project_id": history["project_id"]} in [
            projects.key_of(row) for row in projects.added
        ]
        assert projects.removed == () and projects.changed == ()

    async def test_no_change_between_a_point_and_itself(
        self, database: Database, history: dict[str, Any]
    ) -> None:
        result = await diff(database.owner_dsn, "3", "3")
        assert result.unchanged

    async def test_the_scratch_schemas_are_dropped_when_the_diff_fails(
        self, database: Database, history: dict[str, Any]
    ) -> None:
        def boom(position: int, target: int) -> None:
            raise RuntimeError("interrupted mid-fold")

        with pytest.raises(RuntimeError, match="interrupted mid-fold"):
            await diff(database.owner_dsn, "1", "head", progress=boom, batch_size=2)
        assert await _schemas(database.owner_dsn, "rm\\_diff\\_%") == []

    async def test_the_scratch_schemas_are_dropped_when_the_diff_is_cancelled(
        self, database: Database, history: dict[str, Any]
    ) -> None:
        created = asyncio.Event()

        def slow(position: int, target: int) -> None:
            created.set()

        task = asyncio.create_task(
            diff(database.owner_dsn, "1", "head", progress=slow, batch_size=1)
        )
        await asyncio.wait_for(created.wait(), 10)
        assert await _schemas(database.owner_dsn, "rm\\_diff\\_%") != []
        task.cancel()  # what Ctrl-C does under asyncio.run
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await _schemas(database.owner_dsn, "rm\\_diff\\_%") == []


class TestAsOfSnapshots:
    async def test_concurrent_requests_build_a_snapshot_once_as_the_app_role(
        self,
        database: Database,
        app_pool: AsyncConnectionPool,
        history: dict[str, Any],
    ) -> None:
        position = history["running_at"]
        schemas = await asyncio.gather(
            *(ensure_snapshot(app_pool, position) for _ in range(4))
        )

        assert set(schemas) == {snapshot_schema(position)}
        [row] = await _rows(
            database.owner_dsn,
            "SELECT events FROM asof_snapshots WHERE position = %s",
            position,
        )
        assert row["events"] == position
        [run] = await _rows(
            database.owner_dsn,
            f"SELECT status FROM {snapshot_schema(position)}.runs WHERE run_id = %s",
            history["run_id"],
        )
        assert run["status"] == "running"

    async def test_a_built_snapshot_is_read_only_for_the_app_role(
        self, app_pool: AsyncConnectionPool, history: dict[str, Any]
    ) -> None:
        schema = await ensure_snapshot(app_pool, history["running_at"])
        async with app_pool.connection() as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(f"UPDATE {schema}.runs SET status = 'failed'")

    async def test_the_least_recently_used_snapshots_beyond_the_bound_are_dropped(
        self,
        database: Database,
        app_pool: AsyncConnectionPool,
        history: dict[str, Any],
    ) -> None:
        for position in (1, 2, 3):
            await ensure_snapshot(app_pool, position, keep=2, grace=0)
        await ensure_snapshot(app_pool, 2, keep=2, grace=0)  # 2 is used again
        await ensure_snapshot(app_pool, 4, keep=2, grace=0)

        kept = await snapshots(app_pool)
        assert kept[:2] == [4, 2]
        assert len(kept) == 2
        names = await _schemas(database.owner_dsn, "rm\\_asof\\_%")
        assert names == sorted(snapshot_schema(p) for p in kept)

    async def test_the_app_role_cannot_create_schemas_of_its_own(
        self, app_pool: AsyncConnectionPool
    ) -> None:
        async with app_pool.connection() as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute("CREATE SCHEMA app_was_here")
