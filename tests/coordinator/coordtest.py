"""Helpers of the coordinator tests: seeded runs, reports on the real bus,
and polling with a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.js.errors import NotFoundError

from animus.bus import Bus, fetch_batch
from animus.eventstore import EventStore, NewEvent, RecordedEvent
from contracts.bus import (
    DEAD_LETTER_STREAM,
    REPORT_STREAM,
    RunReport,
    dead_letter_subject,
    report_subject,
)
from contracts.events import ProjectCreated, RunDispatched, RunPlanned, RunSubmitted
from contracts.runs import ArtifactInfo, Resources, RunPlan, RunSpec
from contracts.streams import project_stream, run_stream


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 15, what: str = ""
) -> None:
    """Poll `check` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.05)


class Runs:
    """Seeds dispatched runs and builds and publishes their reports."""

    def __init__(self, store: EventStore, bus: Bus) -> None:
        self.store = store
        self.bus = bus
        self.project_id = f"p-{secrets.token_hex(4)}"

    async def project(self) -> None:
        """Append ProjectCreated, which the projected runs refer to."""
        await self.store.append(
            [
                NewEvent(
                    stream_type="project",
                    stream_id=project_stream(self.project_id),
                    project_id=self.project_id,
                    event=ProjectCreated(project_id=self.project_id, name="test"),
                )
            ],
            metadata={"actor": "test"},
        )

    def new_id(self) -> str:
        return f"run-{secrets.token_hex(6)}"

    async def dispatched(self, run_id: str, *, executor: str = "local") -> None:
        """Append RunSubmitted, RunPlanned and RunDispatched (attempt 1)."""
        await self.append(
            run_id,
            RunSubmitted(
                project_id=self.project_id,
                run_id=run_id,
                spec=RunSpec(command=["python", "train.py"]),
                spec_hash=digest(f"spec-{run_id}"),
            ),
            RunPlanned(
                project_id=self.project_id,
                run_id=run_id,
                plan=RunPlan(
                    spec_hash=digest(f"spec-{run_id}"),
                    command=["python", "train.py"],
                    image=None,
                    inputs={},
                    parameters={},
                    resources=Resources(),
                    timeout_seconds=3600,
                    secret_refs=[],
                    executor=executor,
                ),
                plan_hash=digest(f"plan-{run_id}"),
            ),
            self.dispatch(run_id, attempt=1, executor=executor),
        )

    def dispatch(
        self, run_id: str, *, attempt: int, executor: str = "local"
    ) -> RunDispatched:
        return RunDispatched(
            project_id=self.project_id,
            run_id=run_id,
            attempt=attempt,
            executor=executor,
        )

    async def append(self, run_id: str, *events: Any) -> list[RecordedEvent]:
        return await self.store.append(
            [
                NewEvent(
                    stream_type="run",
                    stream_id=run_stream(run_id),
                    project_id=self.project_id,
                    event=event,
                )
                for event in events
            ],
            metadata={"actor": "test"},
        )

    def report(self, run_id: str, kind: str, *, seq: int, **fields: Any) -> RunReport:
        values: dict[str, Any] = {
            "report_id": f"rep-{secrets.token_hex(6)}",
            "project_id": self.project_id,
            "run_id": run_id,
            "attempt": 1,
            "seq": seq,
            "kind": kind,
            "sent_at": "2026-01-01T00:00:00Z",
        }
        if kind == "artifact":
            values["artifact"] = ArtifactInfo(
                name="model.pkl",
                sha256=digest(f"{run_id}/model.pkl"),
                size=42,
                object_key=f"artifacts/{digest(f'{run_id}/model.pkl')}",
            )
        return RunReport.model_validate({**values, **fields})

    async def publish(self, report: RunReport, *, msg_id: str | None = None) -> None:
        """Publish on the report subject; a fresh msg id defeats dedupe."""
        await self.bus.publish(
            report_subject(report.run_id),
            report.model_dump_json().encode(),
            msg_id=msg_id or f"{report.report_id}:{secrets.token_hex(4)}",
        )

    async def publish_raw(self, run_id: str, payload: bytes) -> None:
        await self.bus.publish(
            report_subject(run_id), payload, msg_id=f"raw-{secrets.token_hex(6)}"
        )

    async def events(self, run_id: str) -> list[RecordedEvent]:
        return await self.store.read_stream(run_stream(run_id))

    async def types(self, run_id: str) -> list[str]:
        return [event.type for event in await self.events(run_id)]


async def drained(bus: Bus, durable: str) -> bool:
    """Every report on the stream was delivered to `durable` and settled."""
    try:
        info = await bus.js.consumer_info(REPORT_STREAM, durable)
    except NotFoundError:  # the coordinator has not bound it yet
        return False
    return info.num_pending == 0 and info.num_ack_pending == 0


def unique_durable() -> str:
    return f"coordinator-test-{secrets.token_hex(4)}"


async def delete_durable(bus: Bus, durable: str) -> None:
    with contextlib.suppress(NotFoundError):
        await bus.js.delete_consumer(REPORT_STREAM, durable)


async def dead_letters(bus: Bus, run_id: str) -> list[bytes]:
    """The payloads dead-lettered for `run_id`'s subject, in order."""
    durable = f"dead-letters-{secrets.token_hex(4)}"
    sub = await bus.js.pull_subscribe(
        dead_letter_subject(report_subject(run_id)),
        durable=durable,
        stream=DEAD_LETTER_STREAM,
    )
    found: list[bytes] = []
    try:
        while True:
            try:
                batch = await fetch_batch(sub, batch=100, timeout=0.5)
            except TimeoutError:  # nats-py can let a bare asyncio timeout out
                batch = []
            if not batch:
                break
            for msg in batch:
                found.append(msg.data)
                await msg.ack()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(NotFoundError):
            await bus.js.delete_consumer(DEAD_LETTER_STREAM, durable)
    return found
