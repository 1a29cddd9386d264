"""Fixtures for the read side: a fresh migrated database per test module, the
application role's pool, the event store, and builders of domain events."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from animus.db import open_pool, with_user
from animus.eventstore import EventStore, NewEvent, RecordedEvent
from animus.migrate import migrate
from animus.settings import APP_ROLE
from contracts.events import (
    ArtifactRecorded,
    DatasetRegistered,
    DatasetVersionCommitted,
    DomainEvent,
    MetricsRecorded,
    ProjectCreated,
    RunDispatched,
    RunPlanned,
    RunStarted,
    RunSubmitted,
    RunSucceeded,
)
from contracts.runs import ArtifactInfo, DatasetRef, ResolvedInput, RunPlan, RunSpec
from contracts.streams import dataset_stream, project_stream, run_stream
from projections import ProjectorService, wait_for_position

ACTOR = {"actor": "alice"}


@pytest.fixture(scope="session")
def superuser_dsn(request: pytest.FixtureRequest) -> str:
    """The superuser DSN: ANIMUS_TEST_DATABASE_URL, else the shared services."""
    dsn = os.environ.get("ANIMUS_TEST_DATABASE_URL")
    if dsn:
        return dsn
    try:
        services = request.getfixturevalue("services")
    except pytest.FixtureLookupError:
        pytest.skip("no PostgreSQL: set ANIMUS_TEST_DATABASE_URL")
    return str(services.database_url)


@dataclass(frozen=True)
class Database:
    owner_dsn: str
    app_dsn: str


def _with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
async def database(superuser_dsn: str) -> AsyncIterator[Database]:
    """A fresh database, migrated to head, dropped after the module."""
    name = f"animus_t_{secrets.token_hex(4)}"
    async with await psycopg.AsyncConnection.connect(
        superuser_dsn, autocommit=True
    ) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    owner_dsn = _with_database(superuser_dsn, name)
    await asyncio.to_thread(migrate, owner_dsn)
    yield Database(owner_dsn=owner_dsn, app_dsn=with_user(owner_dsn, APP_ROLE))
    async with await psycopg.AsyncConnection.connect(
        superuser_dsn, autocommit=True
    ) as admin:
        await admin.execute(
            sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="module")
async def app_pool(database: Database) -> AsyncIterator[AsyncConnectionPool]:
    pool = await open_pool(database.app_dsn, max_size=8, name="test-app")
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def store(app_pool: AsyncConnectionPool) -> AsyncIterator[EventStore]:
    async with EventStore(app_pool) as event_store:
        yield event_store


@pytest.fixture(scope="module")
async def projector(app_pool: AsyncConnectionPool) -> AsyncIterator[ProjectorService]:
    async with ProjectorService(app_pool, poll_interval=0.02) as service:
        yield service


Fold = Callable[[list[NewEvent]], Awaitable[list[RecordedEvent]]]
"""Append events and wait until the running projector folded them."""


@pytest.fixture
def fold(
    store: EventStore, app_pool: AsyncConnectionPool, projector: ProjectorService
) -> Fold:
    async def append_and_fold(events: list[NewEvent]) -> list[RecordedEvent]:
        recorded = await store.append(events, metadata=ACTOR)
        assert await wait_for_position(app_pool, recorded[-1].position, timeout=10)
        return recorded

    return append_and_fold


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Workload:
    """Builds the events of one project, with ids unique to the test."""

    def __init__(self) -> None:
        self.project_id = f"p-{secrets.token_hex(4)}"

    def _project(self, event: ProjectCreated) -> NewEvent:
        return NewEvent(
            stream_type="project",
            stream_id=project_stream(self.project_id),
            project_id=self.project_id,
            event=event,
        )

    def _dataset(self, dataset_id: str, event: DomainEvent) -> NewEvent:
        return NewEvent(
            stream_type="dataset",
            stream_id=dataset_stream(self.project_id, dataset_id),
            project_id=self.project_id,
            event=event,
        )

    def _run(self, run_id: str, event: DomainEvent) -> NewEvent:
        return NewEvent(
            stream_type="run",
            stream_id=run_stream(run_id),
            project_id=self.project_id,
            event=event,
        )

    def project_created(self, name: str = "Churn") -> NewEvent:
        return self._project(
            ProjectCreated(project_id=self.project_id, name=name, description="d")
        )

    def dataset_registered(self, dataset_id: str) -> NewEvent:
        return self._dataset(
            dataset_id,
            DatasetRegistered(
                project_id=self.project_id, dataset_id=dataset_id, name=dataset_id
            ),
        )

    def version_committed(self, dataset_id: str, version: int) -> NewEvent:
        return self._dataset(
            dataset_id,
            DatasetVersionCommitted(
                project_id=self.project_id,
                dataset_id=dataset_id,
                version=version,
                sha256=digest(f"{dataset_id}@{version}"),
                size=100 * version,
                object_key=f"datasets/{digest(f'{dataset_id}@{version}')}",
                filename=f"{dataset_id}.csv",
                content_type="text/csv",
            ),
        )

    def run_submitted(
        self, run_id: str, inputs: dict[str, tuple[str, int]]
    ) -> NewEvent:
        spec = RunSpec(
            name=f"train {run_id}",
            command=["python", "train.py"],
            inputs={
                name: DatasetRef(dataset=dataset, version=version)
                for name, (dataset, version) in inputs.items()
            },
            parameters={"alpha": 0.5},
        )
        return self._run(
            run_id,
            RunSubmitted(
                project_id=self.project_id,
                run_id=run_id,
                spec=spec,
                spec_hash=digest(f"spec-{run_id}"),
            ),
        )

    def run_planned(self, run_id: str, inputs: dict[str, tuple[str, int]]) -> NewEvent:
        resolved = {
            name: ResolvedInput(
                dataset=dataset,
                version=version,
                sha256=digest(f"{dataset}@{version}"),
                size=100 * version,
                object_key=f"datasets/{digest(f'{dataset}@{version}')}",
            )
            for name, (dataset, version) in inputs.items()
        }
        plan = RunPlan(
            spec_hash=digest(f"spec-{run_id}"),
            command=["python", "train.py"],
            image=None,
            inputs=resolved,
            parameters={"alpha": 0.5},
            resources=RunSpec(command=["x"]).resources,
            timeout_seconds=3600,
            secret_refs=[],
            executor="local",
        )
        return self._run(
            run_id,
            RunPlanned(
                project_id=self.project_id,
                run_id=run_id,
                plan=plan,
                plan_hash=digest(f"plan-{run_id}"),
            ),
        )

    def run_event(
        self, run_id: str, event_class: type[DomainEvent], **fields: Any
    ) -> NewEvent:
        """Any run event; `attempt` defaults to 1 and `report_id` to a fresh id."""
        defaults: dict[str, Any] = {"attempt": 1}
        if "report_id" in event_class.model_fields:
            defaults["report_id"] = f"r-{secrets.token_hex(4)}"
        event = event_class(
            project_id=self.project_id, run_id=run_id, **{**defaults, **fields}
        )
        return self._run(run_id, event)

    def artifact_recorded(self, run_id: str, name: str) -> NewEvent:
        artifact = ArtifactInfo(
            name=name,
            sha256=digest(f"{run_id}/{name}"),
            size=42,
            object_key=f"artifacts/{digest(f'{run_id}/{name}')}",
            kind="log" if name.startswith("logs/") else "output",
        )
        return self.run_event(run_id, ArtifactRecorded, artifact=artifact)

    def setup(self, datasets: dict[str, int]) -> list[NewEvent]:
        """The project, its datasets, and `n` committed versions of each."""
        events = [self.project_created()]
        for dataset_id, versions in datasets.items():
            events.append(self.dataset_registered(dataset_id))
            events += [
                self.version_committed(dataset_id, v) for v in range(1, versions + 1)
            ]
        return events

    def successful_run(
        self, run_id: str, inputs: dict[str, tuple[str, int]]
    ) -> list[NewEvent]:
        """A run from submission to success, with metrics and two artifacts."""
        return [
            self.run_submitted(run_id, inputs),
            self.run_planned(run_id, inputs),
            self.run_event(run_id, RunDispatched, executor="local"),
            self.run_event(run_id, RunStarted),
            self.run_event(run_id, MetricsRecorded, metrics={"auc": 0.91, "loss": 0.2}),
            self.artifact_recorded(run_id, "model.pkl"),
            self.artifact_recorded(run_id, "logs/run.log"),
            self.run_event(run_id, RunSucceeded, exit_code=0),
        ]


@pytest.fixture(scope="session")
def new_workload() -> type[Workload]:
    """The builder class, for fixtures and tests that need several projects."""
    return Workload


@pytest.fixture
def workload() -> Workload:
    return Workload()


Select = Callable[..., Awaitable[list[dict[str, Any]]]]
"""Run a query on the application role's pool; rows as dicts."""


@pytest.fixture
def select(app_pool: AsyncConnectionPool) -> Select:
    async def run(query: str, *params: Any) -> list[dict[str, Any]]:
        async with app_pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query, params)
            return await cur.fetchall()

    return run
