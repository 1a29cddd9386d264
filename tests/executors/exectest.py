"""Helpers for the executor tests: launches, inputs, and a harness that runs
an executor and collects the reports of one run from JetStream."""

from __future__ import annotations

import asyncio
import secrets
import textwrap
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from animus.bus import Bus, fetch_batch
from animus.eventstore import EventStore, NewEvent, RecordedEvent
from animus.settings import Settings
from animus.storage import BlobStore
from commands.coordinator import Coordinator
from contracts.bus import (
    REPORT_STREAM,
    CancelRequested,
    LaunchRequested,
    RunReport,
    cancel_subject,
    launch_subject,
    report_subject,
)
from contracts.events import ProjectCreated, RunDispatched, RunPlanned, RunSubmitted
from contracts.runs import ResolvedInput, Resources, RunPlan, RunSpec
from contracts.streams import project_stream, run_stream
from executors.local import LocalExecutor
from projections import wait_for_position
from projections.queries import get_run

TERMINAL = ("succeeded", "failed", "canceled")


def new_id(prefix: str = "run") -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


def python(code: str) -> list[str]:
    """argv running `code` with the sandbox's python."""
    return ["python", "-c", textwrap.dedent(code)]


def make_launch(
    command: Sequence[str],
    *,
    run_id: str | None = None,
    attempt: int = 1,
    inputs: dict[str, ResolvedInput] | None = None,
    timeout_seconds: int = 60,
    memory_mb: int = 1024,
    parameters: dict[str, Any] | None = None,
) -> LaunchRequested:
    plan = RunPlan(
        spec_hash="0" * 64,
        command=list(command),
        image=None,
        inputs=inputs or {},
        parameters=parameters or {},
        resources=Resources(cpu=1, memory_mb=memory_mb),
        timeout_seconds=timeout_seconds,
        secret_refs=[],
        executor="local",
    )
    return LaunchRequested(
        launch_id=new_id("launch"),
        project_id="proj-exec",
        run_id=run_id or new_id(),
        attempt=attempt,
        plan=plan,
        plan_hash="1" * 64,
    )


async def stored_input(store: BlobStore, data: bytes, *, name: str) -> ResolvedInput:
    blob = await store.put_bytes(data)
    return ResolvedInput(
        dataset=name, version=1, sha256=blob.sha256, size=blob.size, object_key=blob.key
    )


@dataclass
class Harness:
    """One executor name (so one set of subjects) with helpers for a test."""

    bus: Bus
    store: BlobStore
    settings: Settings
    name: str
    extra_rw_binds: tuple[tuple[Path, str], ...] = ()

    def executor(self, **kwargs: Any) -> LocalExecutor:
        options: dict[str, Any] = {
            "name": self.name,
            "cancel_grace": 1.0,
            "poll_interval": 0.05,
            "extra_rw_binds": self.extra_rw_binds,
        }
        options.update(kwargs)
        return LocalExecutor(self.bus, self.store, self.settings, **options)

    @asynccontextmanager
    async def running(self, **kwargs: Any) -> AsyncIterator[LocalExecutor]:
        executor = self.executor(**kwargs)
        stop = asyncio.Event()
        task = asyncio.create_task(executor.run(stop))
        try:
            yield executor
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)

    async def launch(
        self, launch: LaunchRequested, *, msg_id: str | None = None
    ) -> None:
        await self.bus.publish(
            launch_subject(self.name),
            launch.model_dump_json().encode(),
            msg_id=msg_id or f"{launch.launch_id}:launch",
        )

    async def cancel(self, launch: LaunchRequested) -> None:
        message = CancelRequested(
            project_id=launch.project_id, run_id=launch.run_id, attempt=launch.attempt
        )
        await self.bus.publish(
            cancel_subject(self.name),
            message.model_dump_json().encode(),
            msg_id=new_id("cancel"),
        )

    async def _fetch(self, sub: Any) -> list[Any]:
        try:
            return await fetch_batch(sub, batch=100, timeout=0.3)
        except TimeoutError:  # nats-py can let a bare asyncio timeout out
            return []

    async def reports(
        self,
        run_id: str,
        *,
        until: Sequence[str] = TERMINAL,
        timeout: float = 30.0,
        settle: float = 0.0,
    ) -> list[RunReport]:
        """Reports of `run_id` in stream order, once one of kind `until` arrived.

        With `settle`, keep reading that long after it, to see any extra.
        """
        sub = await self.bus.js.pull_subscribe(
            report_subject(run_id), durable=new_id("obs"), stream=REPORT_STREAM
        )
        found: list[RunReport] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while loop.time() < deadline:
                for msg in await self._fetch(sub):
                    found.append(RunReport.model_validate_json(msg.data))
                    await msg.ack()
                if any(r.kind in until for r in found):
                    break
            else:
                raise AssertionError(
                    f"no {until} report for {run_id} in {timeout}s: "
                    f"{[r.kind for r in found]}"
                )
            end = loop.time() + settle
            while loop.time() < end:
                for msg in await self._fetch(sub):
                    found.append(RunReport.model_validate_json(msg.data))
                    await msg.ack()
        finally:
            await sub.unsubscribe()
        return found


@dataclass
class ControlPlane:
    """The event store, a coordinator and the projector behind an executor."""

    store: EventStore
    pool: AsyncConnectionPool
    coordinator: Coordinator
    project_id: str = "proj-exec"

    async def create_project(self) -> None:
        await self.store.append(
            [
                NewEvent(
                    stream_type="project",
                    stream_id=project_stream(self.project_id),
                    project_id=self.project_id,
                    event=ProjectCreated(project_id=self.project_id, name="exec"),
                )
            ],
            metadata={"actor": "test"},
        )

    async def dispatched(self, launch: LaunchRequested) -> None:
        """Append what submission appends for `launch` (as the relay's source)."""
        plan = launch.plan
        common = {"project_id": launch.project_id, "run_id": launch.run_id}
        spec = RunSpec(command=plan.command, timeout_seconds=plan.timeout_seconds)
        events = [
            RunSubmitted(**common, spec=spec, spec_hash=plan.spec_hash),
            RunPlanned(**common, plan=plan, plan_hash=launch.plan_hash),
            RunDispatched(**common, attempt=launch.attempt, executor=plan.executor),
        ]
        await self.store.append(
            [
                NewEvent(
                    stream_type="run",
                    stream_id=run_stream(launch.run_id),
                    project_id=launch.project_id,
                    event=event,
                )
                for event in events
            ],
            metadata={"actor": "test"},
        )

    async def events(self, run_id: str) -> list[RecordedEvent]:
        return await self.store.read_stream(run_stream(run_id))

    async def until(
        self, run_id: str, event_types: Sequence[str], *, timeout: float = 30
    ) -> list[RecordedEvent]:
        """The run's events once one of `event_types` is among them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            events = await self.events(run_id)
            if any(e.type in event_types for e in events):
                return events
            await asyncio.sleep(0.1)
        kinds = [e.type for e in await self.events(run_id)]
        raise AssertionError(f"no {event_types} for {run_id} in {timeout}s: {kinds}")

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """GET run, once the projector folded everything appended so far."""
        head = await self.store.head_position()
        assert await wait_for_position(self.pool, head, timeout=15)
        return dict(await get_run(self.pool, self.project_id, run_id))
