"""A batch and its checkpoint commit together, or neither does.

This module poisons its own database's log on purpose: the projector stays
stuck on the failing batch, so nothing else runs against this database.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from psycopg_pool import AsyncConnectionPool

from animus.errors import StoreError
from animus.eventstore import EventStore
from projections import ProjectorService, ProjectorState, read_checkpoint

if TYPE_CHECKING:
    from tests.projections.conftest import Fold, Select, Workload


async def _wait_for_failure(projector: ProjectorService) -> Exception:
    for _ in range(200):
        if projector.last_error is not None:
            return projector.last_error
        await asyncio.sleep(0.02)
    raise AssertionError("the projector never reported the failing batch")


class TestAtomicBatches:
    async def test_a_failing_handler_leaves_no_rows_and_the_checkpoint_in_place(
        self,
        workload: Workload,
        fold: Fold,
        select: Select,
        store: EventStore,
        app_pool: AsyncConnectionPool,
        projector: ProjectorService,
    ) -> None:
        good = await fold(workload.setup({"train": 1}))
        checkpoint = await read_checkpoint(app_pool)
        assert checkpoint == good[-1].position

        # One append, so one batch: two good events, then a version of a
        # dataset that was never registered (its foreign key fails).
        other = type(workload)()
        await store.append(
            [
                other.project_created("Half"),
                other.dataset_registered("real"),
                other.version_committed("ghost", 1),
            ]
        )
        error = await _wait_for_failure(projector)

        assert isinstance(error, StoreError)
        assert "ForeignKeyViolation" in error.detail
        assert await read_checkpoint(app_pool) == checkpoint
        assert projector.position == checkpoint
        assert projector.state is ProjectorState.RUNNING
        assert (
            await select(
                "SELECT * FROM rm.projects WHERE project_id = %s", other.project_id
            )
            == []
        )
        assert (
            await select(
                "SELECT * FROM rm.datasets WHERE project_id = %s", other.project_id
            )
            == []
        )
