"""The gateway's reads return what was projected, JSON-ready."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from psycopg_pool import AsyncConnectionPool

from animus.errors import NotFoundError, ValidationError
from animus.eventstore import RecordedEvent
from contracts.events import RunDispatched, RunFailed, RunStarted
from projections import (
    get_artifact,
    get_dataset,
    get_dataset_version,
    get_project,
    get_run,
    list_dataset_versions,
    list_datasets,
    list_projects,
    list_runs,
    run_lineage,
    run_timeline,
)

if TYPE_CHECKING:
    from tests.projections.conftest import Fold, Workload


@pytest.fixture
async def project(workload: Workload, fold: Fold) -> list[RecordedEvent]:
    """A project with two datasets, a succeeded run and a failed run."""
    recorded = await fold(workload.setup({"train": 2, "eval": 1}))
    inputs = {"data": ("train", 2), "holdout": ("eval", 1)}
    recorded += await fold(workload.successful_run(f"{workload.project_id}-ok", inputs))
    failed = f"{workload.project_id}-bad"
    recorded += await fold(
        [
            workload.run_submitted(failed, {"data": ("train", 1)}),
            workload.run_planned(failed, {"data": ("train", 1)}),
            workload.run_event(failed, RunDispatched, executor="local"),
            workload.run_event(failed, RunStarted),
            workload.run_event(failed, RunFailed, reason="timeout", message="slow"),
        ]
    )
    return recorded


def _assert_json_ready(value: object) -> None:
    json.dumps(value, allow_nan=False)


class TestProjects:
    async def test_a_project_is_listed_and_fetched(
        self,
        app_pool: AsyncConnectionPool,
        workload: Workload,
        project: list[RecordedEvent],
    ) -> None:
        listed = await list_projects(app_pool, limit=1000, offset=0)
        fetched = await get_project(app_pool, workload.project_id)

        assert fetched in listed
        assert fetched["name"] == "Churn"
        assert fetched["created_by"] == "alice"
        assert fetched["created_at"] == project[0].recorded_at.isoformat()
        _assert_json_ready(listed)

    async def test_projects_page_in_creation_order(
        self, app_pool: AsyncConnectionPool, project: list[RecordedEvent]
    ) -> None:
        everything = await list_projects(app_pool, limit=1000, offset=0)
        second_page = await list_projects(app_pool, limit=1, offset=1)

        assert second_page == everything[1:2]
        positions = [p["position"] for p in everything]
        assert positions == sorted(positions)

    async def test_a_missing_project_raises_not_found(
        self, app_pool: AsyncConnectionPool
    ) -> None:
        with pytest.raises(NotFoundError, match="^project nope does not exist$"):
            await get_project(app_pool, "nope")


class TestDatasets:
    async def test_datasets_and_versions_are_listed_and_fetched(
        self,
        app_pool: AsyncConnectionPool,
        workload: Workload,
        project: list[RecordedEvent],
    ) -> None:
        pid = workload.project_id
        datasets = await list_datasets(app_pool, pid)
        train = await get_dataset(app_pool, pid, "train")
        versions = await list_dataset_versions(app_pool, pid, "train")
        second = await get_dataset_version(app_pool, pid, "train", 2)

        assert [d["dataset_id"] for d in datasets] == ["eval", "train"]
        assert train["latest_version"] == 2
        assert [v["version"] for v in versions] == [1, 2]
        assert second == versions[1]
        assert second["sha256"] == project[3].data["sha256"]
        _assert_json_ready([datasets, versions])

    async def test_missing_datasets_and_versions_raise_not_found(
        self,
        app_pool: AsyncConnectionPool,
        workload: Workload,
        project: list[RecordedEvent],
    ) -> None:
        pid = workload.project_id
        with pytest.raises(NotFoundError, match="^dataset nope does not exist"):
            await get_dataset(app_pool, pid, "nope")
        with pytest.raises(NotFoundError, match="has no version 3"):
            await get_dataset_version(app_pool, pid, "train", 3)
        with pytest.raises(NotFoundError):
            await get_dataset(app_pool, "other-project", "train")


class TestRuns:
    async def test_runs_are_listed_newest_first_and_filtered_by_status(
        self,
        app_pool: AsyncConnectionPool,
        workload: Workload,
        project: list[RecordedEvent],
    ) -> None:
        pid = workload.project_id
        runs = await list_runs(app_pool, pid, limit=10, offset=0)
        failed = await list_runs(app_pool, pid, status="failed", limit=10, offset=0)
        page = await list_runs(app_pool, pid, limit=1, offset=1)

        assert [r["run_id"] for r in runs] == [f"{pid}-bad", f"{pid}-ok"]
        assert [r["run_id"] for r in failed] == [f"{pid}-bad"]
        assert failed[0]["failure_reason"] == "timeout"
        assert page == runs[1:]
        assert "spec" not in runs[0]
        _assert_json_ready(runs)

    async def test_an_unknown_status_filter_is_refused(
        self, app_pool: AsyncConnectionPool
    ) -> None:
        with pytest.raises(ValidationError, match="unknown run status"):
            await list_runs(app_pool, "any", status="exploded", limit=10, offset=0)

    async def test_a_run_carries_its_spec_plan_metrics_and_artifacts(
        self,
        app_pool: AsyncConnectionPool,
        workload: Workload,
        project: list[RecordedEvent],
    ) -> None:
        run = await get_run(app_pool, workload.project_id, f"{workload.project_id}-ok")

        assert run["status"] == "succeeded"
        assert run["metrics"] == {"auc": 0.91, "loss": 0.2}
        assert [a["name"] for a in run["artifacts"]] == ["logs/run.log", "model.pkl"]
        assert run["spec"]["parameters"] == {"alpha": 0.5}
        assert set(run["plan"]["inputs"]) == {"data", "holdout"}
        assert run["finished_at"] is not None
        _assert_json_ready(run)

    async def test_a_run_of_another_project_is_not_found(
        self,
        app_pool: AsyncConnectionPool,
        workload: Workload,
        project: list[RecordedEvent],
    ) -> None:
        with pytest.raises(NotFoundError, match="does not exist in project"):
            await get_run(app_pool, "elsewhere", f"{workload.project_id}-ok")
        with pytest.raises(NotFoundError):
            await get_run(app_pool, workload.project_id, "no-such-run")


class TestTimelineAndLineage:
    async def test_the_timeline_lists_the_run_stream_in_order(
        self,
        app_pool: AsyncConnectionPool,
        workload: Workload,
        project: list[RecordedEvent],
    ) -> None:
        run_id = f"{workload.project_id}-ok"
        timeline = await run_timeline(app_pool, workload.project_id, run_id)

        assert [e["stream_version"] for e in timeline] == list(range(1, 9))
        assert timeline[0]["type"] == "RunSubmitted"
        assert timeline[-1]["type"] == "RunSucceeded"
        assert {e["actor"] for e in timeline} == {"alice"}
        assert timeline[0]["data"]["run_id"] == run_id
        positions = [e["position"] for e in timeline]
        assert positions == sorted(positions)
        _assert_json_ready(timeline)

    async def test_a_timeline_of_a_missing_run_raises_not_found(
        self, app_pool: AsyncConnectionPool, workload: Workload
    ) -> None:
        with pytest.raises(NotFoundError):
            await run_timeline(app_pool, workload.project_id, "no-such-run")

    async def test_lineage_names_inputs_and_outputs_with_their_digests(
        self,
        app_pool: AsyncConnectionPool,
        workload: Workload,
        project: list[RecordedEvent],
    ) -> None:
        run_id = f"{workload.project_id}-ok"
        lineage = await run_lineage(app_pool, workload.project_id, run_id)
        train_2 = await get_dataset_version(app_pool, workload.project_id, "train", 2)

        assert [i["id"] for i in lineage["inputs"]] == ["eval@1", "train@2"]
        assert lineage["inputs"][1]["sha256"] == train_2["sha256"]
        assert [o["id"] for o in lineage["outputs"]] == [
            f"{run_id}/logs/run.log",
            f"{run_id}/model.pkl",
        ]
        assert all(len(o["sha256"]) == 64 for o in lineage["outputs"])
        relations = sorted(e["relation"] for e in lineage["edges"])
        assert relations == ["input_of", "input_of", "produced", "produced"]
        _assert_json_ready(lineage)

    async def test_lineage_of_a_missing_run_raises_not_found(
        self, app_pool: AsyncConnectionPool, workload: Workload
    ) -> None:
        with pytest.raises(NotFoundError):
            await run_lineage(app_pool, workload.project_id, "no-such-run")


class TestArtifacts:
    async def test_an_artifact_is_fetched_with_its_digest(
        self,
        app_pool: AsyncConnectionPool,
        workload: Workload,
        project: list[RecordedEvent],
    ) -> None:
        run_id = f"{workload.project_id}-ok"
        artifact = await get_artifact(
            app_pool, workload.project_id, run_id, "model.pkl"
        )

        assert artifact["kind"] == "output"
        assert artifact["size"] == 42
        assert artifact["object_key"].endswith(artifact["sha256"])

    async def test_a_missing_artifact_raises_not_found(
        self,
        app_pool: AsyncConnectionPool,
        workload: Workload,
        project: list[RecordedEvent],
    ) -> None:
        run_id = f"{workload.project_id}-ok"
        with pytest.raises(NotFoundError, match=r"has no artifact nope\.bin$"):
            await get_artifact(app_pool, workload.project_id, run_id, "nope.bin")
        with pytest.raises(NotFoundError):
            await get_artifact(app_pool, "elsewhere", run_id, "model.pkl")
