"""Poison reports end to end (CASES C13): a report from the executor that
cannot be read or stored stalls neither the coordinator nor the projector; it
is dead-lettered byte for byte, recorded once as ReportRejected, and its run
still reaches a terminal state that GET run and a replay agree on."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

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
from psycopg_pool import AsyncConnectionPool

from animus.bus import Bus
from animus.errors import StoreError
from animus.eventstore import EventStore, NewEvent, RecordedEvent
from commands.coordinator import UNAPPLIABLE_AFTER, Coordinator
from commands.run import Ignored, IgnoreReason, Rejection
from contracts.bus import dead_letter_subject, report_subject
from contracts.streams import REJECTED_REPORTS_STREAM
from projections import ProjectorService, replay, wait_for_position
from projections.queries import get_run, run_timeline

SEEDED = ["RunSubmitted", "RunPlanned", "RunDispatched"]

# every run of this module is projected: its project must be in the log first
pytestmark = pytest.mark.usefixtures("project")


async def settle(bus: Bus, coordinator: Coordinator) -> None:
    async def done() -> bool:
        return await drained(bus, coordinator.durable)

    await eventually(done, what=f"consumer {coordinator.durable} to drain")


async def projected(
    store: EventStore, pool: AsyncConnectionPool, project_id: str, run_id: str
) -> dict[str, Any]:
    """GET run once the projector folded the whole log."""
    assert await wait_for_position(pool, await store.head_position(), timeout=15)
    return await get_run(pool, project_id, run_id)


def poison_terminal(runs: Runs, run_id: str) -> bytes:
    """A "succeeded" report whose exit code no column or canonical form holds."""
    report = runs.report(run_id, "succeeded", seq=2).model_dump(mode="json")
    return json.dumps({**report, "exit_code": 2**70}).encode()


async def rejections_elsewhere(store: EventStore) -> list[RecordedEvent]:
    return await store.read_stream(REJECTED_REPORTS_STREAM)


class TestPoisonTerminalReport:
    async def test_the_run_fails_at_once_and_replay_agrees(
        self,
        runs: Runs,
        bus: Bus,
        store: EventStore,
        app_pool: AsyncConnectionPool,
        project: str,
        projector: ProjectorService,
        coordinator: Coordinator,
        fresh_database: str,
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        payload = poison_terminal(runs, run_id)

        await runs.publish(runs.report(run_id, "started", seq=1))
        await runs.publish_raw(run_id, payload)
        # the executor's word after the poison one is late: first terminal won
        await runs.publish(runs.report(run_id, "succeeded", seq=3))
        await settle(bus, coordinator)

        events = await runs.events(run_id)
        assert [e.type for e in events] == [
            *SEEDED,
            "RunStarted",
            "ReportRejected",
            "RunFailed",
        ]
        rejected, failed = events[-2], events[-1]
        assert rejected.data["reason"] == "invalid_report"
        assert rejected.data["sha256"] == digest_of(payload)
        assert rejected.data["size"] == len(payload)
        assert rejected.data["claimed_kind"] == "succeeded"
        assert rejected.data["dead_letter_subject"] == dead_letter_subject(
            report_subject(run_id)
        )
        assert str(2**70) not in json.dumps(rejected.data)
        assert failed.data["reason"] == "report_rejected"
        assert failed.metadata["actor"] == "coordinator:dead-letter"
        assert await dead_letters(bus, run_id) == [payload]

        run = await projected(store, app_pool, project, run_id)
        assert (run["status"], run["failure_reason"]) == ("failed", "report_rejected")
        assert run["rejected_reports"] == 1
        assert run["finished_at_source"] == "recorded"
        timeline = await run_timeline(app_pool, project, run_id)
        assert [e["type"] for e in timeline][-2:] == ["ReportRejected", "RunFailed"]
        assert projector.last_error is None

        report = await replay(fresh_database)
        assert report.equal, report.tables
        assert report.skipped == ()

    async def test_a_poison_message_delivered_again_is_recorded_once(
        self, runs: Runs, store: EventStore, coordinator: Coordinator
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        rejection = Rejection(
            reason="invalid_report",
            detail="not a report",
            subject=report_subject(run_id),
            stream_sequence=10**9 + secrets.randbelow(10**6),
            sha256=digest_of(b"garbage"),
            size=7,
            dead_letter_subject=dead_letter_subject(report_subject(run_id)),
            run_id=run_id,
            claimed_kind="failed",
            claimed_attempt=1,
        )

        first = await coordinator.record_rejection(rejection)
        again = await coordinator.record_rejection(rejection)

        assert not isinstance(first, Ignored)
        assert first.event_types == ("ReportRejected", "RunFailed")
        assert again == Ignored(reason=IgnoreReason.DUPLICATE_REPORT)
        assert await runs.types(run_id) == [*SEEDED, "ReportRejected", "RunFailed"]


class TestPoisonWithoutAnOpenRun:
    async def test_unknown_and_finished_runs_are_recorded_on_the_coordinator_stream(
        self, runs: Runs, bus: Bus, store: EventStore, coordinator: Coordinator
    ) -> None:
        unknown = runs.new_id()
        finished = runs.new_id()
        await runs.dispatched(finished)
        await runs.publish(runs.report(finished, "succeeded", seq=1))
        await settle(bus, coordinator)
        before = await runs.types(finished)

        await runs.publish_raw(unknown, b"\x00 not a report")
        await runs.publish_raw(finished, b'{"kind": "failed", "attempt": 1}')
        await settle(bus, coordinator)

        assert await runs.types(unknown) == []
        assert await runs.types(finished) == before == [*SEEDED, "RunSucceeded"]
        recorded = {e.data["subject"]: e for e in await rejections_elsewhere(store)}
        lost = recorded[report_subject(unknown)]
        assert (lost.data["run_id"], lost.project_id) == (None, None)
        late = recorded[report_subject(finished)]
        assert late.data["run_id"] == finished
        assert late.project_id == late.data["project_id"] == runs.project_id
        assert late.data["claimed_kind"] == "failed"
        assert await dead_letters(bus, unknown) == [b"\x00 not a report"]


class TestUnclaimedPoison:
    async def test_a_running_run_whose_last_word_was_garbage_ends_lost(
        self, runs: Runs, bus: Bus, store: EventStore
    ) -> None:
        """Poison that does not claim to be the end leaves the run running;
        the liveness bound ends it."""
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        durable = unique_durable()
        watching = Coordinator(
            store,
            bus,
            durable=durable,
            fetch_timeout=0.2,
            lost_after=1.5,
            sweep_interval=0.1,
        )
        try:
            async with watching:
                await runs.publish(runs.report(run_id, "started", seq=1))
                await runs.publish_raw(run_id, b"\xde\xad\xbe\xef")

                async def ended() -> bool:
                    return (await runs.types(run_id))[-1] == "RunFailed"

                await eventually(ended, what=f"{run_id} to end")
        finally:
            await delete_durable(bus, durable)

        events = await runs.events(run_id)
        assert [e.type for e in events] == [
            *SEEDED,
            "RunStarted",
            "ReportRejected",
            "RunFailed",
        ]
        assert events[-1].data["reason"] == "lost"


class _RefusingStore:
    """An event store whose appends of one event type fail permanently, as a
    value the database refuses would."""

    def __init__(self, store: EventStore, refused: str) -> None:
        self._store = store
        self._refused = refused
        self.refusals = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def append(
        self, events: Sequence[NewEvent], **kwargs: Any
    ) -> list[RecordedEvent]:
        if any(e.event.event_type == self._refused for e in events):
            self.refusals += 1
            raise StoreError("database error (DataError)")
        return await self._store.append(events, **kwargs)


class TestUnappliableReport:
    async def test_a_permanently_failing_terminal_report_is_dead_lettered(
        self,
        runs: Runs,
        bus: Bus,
        store: EventStore,
        app_pool: AsyncConnectionPool,
        project: str,
    ) -> None:
        run_id = runs.new_id()
        await runs.dispatched(run_id)
        succeeded = runs.report(run_id, "succeeded", seq=1)
        refusing = _RefusingStore(store, "RunSucceeded")
        durable = unique_durable()
        coordinator = Coordinator(
            refusing,  # type: ignore[arg-type]
            bus,
            durable=durable,
            subject=report_subject(run_id),
            fetch_timeout=0.2,
        )

        async def ended() -> bool:
            return (await runs.types(run_id))[-1] == "RunFailed"

        try:
            async with coordinator:
                await runs.publish(succeeded)
                await eventually(ended, what=f"{run_id} to end", timeout=30)
        finally:
            await delete_durable(bus, durable)

        events = await runs.events(run_id)
        assert [e.type for e in events] == [*SEEDED, "ReportRejected", "RunFailed"]
        assert events[-2].data["reason"] == "unappliable_report"
        assert "StoreError" in events[-2].data["detail"]
        assert refusing.refusals == UNAPPLIABLE_AFTER
        assert coordinator.redelivered == UNAPPLIABLE_AFTER - 1
        run = await projected(store, app_pool, project, run_id)
        assert (run["status"], run["failure_reason"]) == ("failed", "report_rejected")
        assert await dead_letters(bus, run_id) == [succeeded.model_dump_json().encode()]
