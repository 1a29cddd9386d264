"""The projector: folds events into the read-model tables and keeps its checkpoint.

One handler per event type writes SQL into a target schema (`rm` live, a
scratch schema during replay). `ProjectorService` polls the log and applies
each batch together with its checkpoint in one transaction, so a read model
never holds half a batch and never sees an event twice. Timestamps come from
the event's `recorded_at`, never from payload times, with one exception for
display: a run's `finished_at` is the workload's own finish time when its
terminal event carries one (`workload_time` in the metadata, the exit the
executor read from the workload's status file, by the executor's clock), so
a finish recorded after a restart keeps the time the workload ended;
`recorded_finished_at` is always the terminal event's `recorded_at`, and
`finished_at_source` says which of the two `finished_at` is. Both come from
the log, so a replay gives the same values.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import structlog
from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError as PydanticValidationError

from animus.db import translate_db_errors
from animus.errors import AnimusError
from animus.eventstore import EVENTS_CHANNEL, EventStore, RecordedEvent
from animus.personal import actor_subject
from contracts.events import (
    EVENT_TYPES,
    ArtifactRecorded,
    DatasetRegistered,
    DatasetVersionCommitted,
    DomainEvent,
    MetricsRecorded,
    ProjectCreated,
    ReportRejected,
    RunCanceled,
    RunCancelRequested,
    RunDispatched,
    RunFailed,
    RunPlanned,
    RunStarted,
    RunSubmitted,
    RunSucceeded,
    SubjectErased,
    decode_event,
)
from contracts.streams import TERMINAL_STATUSES

log = structlog.get_logger(__name__)

DEFAULT_SCHEMA = "rm"
PROJECTED_CHANNEL = "animus_projected"  # NOTIFY payload: "<checkpoint>:<position>"
DEFAULT_CHECKPOINT = "rm"
READ_MODEL_TABLES = (
    "projects",
    "datasets",
    "dataset_versions",
    "runs",
    "run_metrics",
    "run_artifacts",
    "lineage_edges",
)

# A run whose status is terminal keeps it: every status change is guarded by this.
_NOT_TERMINAL = "status NOT IN ({})".format(
    ", ".join(f"'{status}'" for status in sorted(TERMINAL_STATUSES))
)


@lru_cache(maxsize=512)
def _sql(schema: str, template: str) -> sql.Composed:
    """Compose `template` with `{rm}` naming the target schema."""
    return sql.SQL(template).format(rm=sql.Identifier(schema))


@dataclass(frozen=True)
class Target:
    """Where handlers write: a connection and the read-model schema on it."""

    conn: AsyncConnection[Any]
    schema: str

    async def execute(self, template: str, params: Mapping[str, Any]) -> None:
        """Run one statement; `{rm}` in `template` names the schema."""
        await self.conn.execute(_sql(self.schema, template), params)

    async def executemany(
        self, template: str, params: Sequence[Mapping[str, Any]]
    ) -> None:
        if params:
            async with self.conn.cursor() as cur:
                await cur.executemany(_sql(self.schema, template), params)


Handler = Callable[[Target, RecordedEvent, Any], Awaitable[None]]
"""A fold step: write what one decoded event means into a target schema."""


def _actor(event: RecordedEvent) -> str | None:
    """Who caused the event: a person's pseudonymous subject, a service's name.

    A person's name and email are sealed in the metadata and never copied
    here; answers open them at read time (`animus.personal`), so an erasure
    reaches every read model without touching it.
    """
    actor = event.metadata.get("actor")
    if isinstance(actor, str):
        return actor
    return actor_subject(actor)


def _params(event: RecordedEvent, payload: DomainEvent, **extra: Any) -> dict[str, Any]:
    """The payload's fields plus what the envelope adds, as named parameters."""
    return {
        **dict(payload),
        "recorded_at": event.recorded_at,
        "actor": _actor(event),
        "position": event.position,
        **extra,
    }


def dataset_version_node(dataset_id: str, version: int) -> str:
    """The lineage id of a dataset version: `<dataset_id>@<version>`."""
    return f"{dataset_id}@{version}"


def artifact_node(run_id: str, name: str) -> str:
    """The lineage id of an artifact: `<run_id>/<name>`."""
    return f"{run_id}/{name}"


async def apply_project_created(
    rm: Target, event: RecordedEvent, payload: ProjectCreated
) -> None:
    await rm.execute(
        "INSERT INTO {rm}.projects (project_id, name, description, created_at, "
        "created_by, position) VALUES (%(project_id)s, %(name)s, %(description)s, "
        "%(recorded_at)s, %(actor)s, %(position)s) "
        "ON CONFLICT (project_id) DO NOTHING",
        _params(event, payload),
    )


async def apply_dataset_registered(
    rm: Target, event: RecordedEvent, payload: DatasetRegistered
) -> None:
    await rm.execute(
        "INSERT INTO {rm}.datasets (project_id, dataset_id, name, description, "
        "created_at, created_by) VALUES (%(project_id)s, %(dataset_id)s, %(name)s, "
        "%(description)s, %(recorded_at)s, %(actor)s) "
        "ON CONFLICT (project_id, dataset_id) DO NOTHING",
        _params(event, payload),
    )


async def apply_dataset_version_committed(
    rm: Target, event: RecordedEvent, payload: DatasetVersionCommitted
) -> None:
    params = _params(event, payload)
    await rm.execute(
        "INSERT INTO {rm}.dataset_versions (project_id, dataset_id, version, sha256, "
        "size, object_key, filename, content_type, committed_at, committed_by) "
        "VALUES (%(project_id)s, %(dataset_id)s, %(version)s, %(sha256)s, %(size)s, "
        "%(object_key)s, %(filename)s, %(content_type)s, %(recorded_at)s, "
        "%(actor)s) ON CONFLICT (project_id, dataset_id, version) DO NOTHING",
        params,
    )
    await rm.execute(
        "UPDATE {rm}.datasets SET latest_version = greatest(latest_version, "
        "%(version)s) WHERE project_id = %(project_id)s "
        "AND dataset_id = %(dataset_id)s",
        params,
    )


async def apply_run_submitted(
    rm: Target, event: RecordedEvent, payload: RunSubmitted
) -> None:
    spec = payload.spec
    await rm.execute(
        "INSERT INTO {rm}.runs (run_id, project_id, name, status, spec, spec_hash, "
        "executor, submitted_by, submitted_at, last_position) VALUES (%(run_id)s, "
        "%(project_id)s, %(name)s, 'submitted', %(spec)s, %(spec_hash)s, "
        "%(executor)s, %(actor)s, %(recorded_at)s, %(position)s) "
        "ON CONFLICT (run_id) DO NOTHING",
        _params(
            event,
            payload,
            name=spec.name,
            executor=spec.executor,
            spec=Jsonb(spec.model_dump(mode="json")),
        ),
    )
    await rm.executemany(
        "INSERT INTO {rm}.lineage_edges (project_id, source_kind, source_id, "
        "target_kind, target_id, relation) VALUES (%(project_id)s, "
        "'dataset_version', %(source_id)s, 'run', %(run_id)s, 'input_of') "
        "ON CONFLICT DO NOTHING",
        [
            {
                "project_id": payload.project_id,
                "source_id": dataset_version_node(ref.dataset, ref.version),
                "run_id": payload.run_id,
            }
            for ref in spec.inputs.values()
        ],
    )


async def apply_run_planned(
    rm: Target, event: RecordedEvent, payload: RunPlanned
) -> None:
    await _update_live_run(
        rm,
        "status = 'planned', plan = %(plan)s, plan_hash = %(plan_hash)s",
        _params(event, payload, plan=Jsonb(payload.plan.model_dump(mode="json"))),
    )


async def apply_run_dispatched(
    rm: Target, event: RecordedEvent, payload: RunDispatched
) -> None:
    await _update_live_run(
        rm,
        "status = 'dispatched', attempt = %(attempt)s, executor = %(executor)s",
        _params(event, payload),
    )


async def apply_run_cancel_requested(
    rm: Target, event: RecordedEvent, payload: RunCancelRequested
) -> None:
    await _update_live_run(rm, "cancel_requested = true", _params(event, payload))


async def apply_run_started(
    rm: Target, event: RecordedEvent, payload: RunStarted
) -> None:
    await _update_live_run(
        rm,
        "status = 'running', attempt = greatest(attempt, %(attempt)s), "
        "started_at = coalesce(started_at, %(recorded_at)s)",
        _params(event, payload),
    )


_FINISHED = (
    "finished_at = %(finished_at)s, recorded_finished_at = %(recorded_at)s, "
    "finished_at_source = %(finished_at_source)s"
)


def _finish(event: RecordedEvent) -> dict[str, Any]:
    """`finished_at` and its source for a terminal event (module docstring)."""
    workload_time = _workload_time(event.metadata.get("workload_time"))
    if workload_time is None:
        return {"finished_at": event.recorded_at, "finished_at_source": "recorded"}
    return {"finished_at": workload_time, "finished_at_source": "workload"}


def _workload_time(value: object) -> datetime | None:
    """An ISO 8601 time with a zone, as the executor reported it; else None."""
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else None


async def apply_run_succeeded(
    rm: Target, event: RecordedEvent, payload: RunSucceeded
) -> None:
    await _update_live_run(
        rm,
        f"status = 'succeeded', {_FINISHED}, exit_code = %(exit_code)s",
        _params(event, payload, **_finish(event)),
    )


async def apply_run_failed(
    rm: Target, event: RecordedEvent, payload: RunFailed
) -> None:
    await _update_live_run(
        rm,
        f"status = 'failed', {_FINISHED}, "
        "failure_reason = %(reason)s, failure_message = %(message)s, "
        "exit_code = %(exit_code)s",
        _params(event, payload, **_finish(event)),
    )


async def apply_run_canceled(
    rm: Target, event: RecordedEvent, payload: RunCanceled
) -> None:
    await _update_live_run(
        rm,
        f"status = 'canceled', {_FINISHED}, failure_message = %(reason)s",
        _params(event, payload, **_finish(event)),
    )


async def apply_report_rejected(
    rm: Target, event: RecordedEvent, payload: ReportRejected
) -> None:
    """Count a dead-lettered report on its run, whatever the run's status."""
    if payload.run_id is None:
        return  # a report for no known run: the log and the dead letter keep it
    await rm.execute(
        "UPDATE {rm}.runs SET rejected_reports = rejected_reports + 1, "
        "last_position = greatest(last_position, %(position)s) "
        "WHERE run_id = %(run_id)s",
        _params(event, payload),
    )


async def apply_artifact_recorded(
    rm: Target, event: RecordedEvent, payload: ArtifactRecorded
) -> None:
    artifact = payload.artifact
    params = _params(
        event,
        payload,
        **dict(artifact),
        target_id=artifact_node(payload.run_id, artifact.name),
    )
    await rm.execute(
        "INSERT INTO {rm}.run_artifacts (run_id, name, sha256, size, object_key, "
        "kind) VALUES (%(run_id)s, %(name)s, %(sha256)s, %(size)s, %(object_key)s, "
        "%(kind)s) ON CONFLICT (run_id, name) DO UPDATE SET "
        "sha256 = excluded.sha256, size = excluded.size, "
        "object_key = excluded.object_key, kind = excluded.kind",
        params,
    )
    await rm.execute(
        "INSERT INTO {rm}.lineage_edges (project_id, source_kind, source_id, "
        "target_kind, target_id, relation) VALUES (%(project_id)s, 'run', "
        "%(run_id)s, 'artifact', %(target_id)s, 'produced') ON CONFLICT DO NOTHING",
        params,
    )
    await _touch_run(rm, params)


async def apply_metrics_recorded(
    rm: Target, event: RecordedEvent, payload: MetricsRecorded
) -> None:
    await rm.executemany(
        "INSERT INTO {rm}.run_metrics (run_id, name, value) "
        "VALUES (%(run_id)s, %(name)s, %(value)s) "
        "ON CONFLICT (run_id, name) DO UPDATE SET value = excluded.value",
        [
            {"run_id": payload.run_id, "name": name, "value": value}
            for name, value in payload.metrics.items()
        ],
    )
    await rm.execute(
        "UPDATE {rm}.runs SET metrics_error = %(metrics_error)s, "
        "last_position = greatest(last_position, %(position)s) "
        "WHERE run_id = %(run_id)s",
        _params(event, payload),
    )


async def _update_live_run(
    rm: Target, assignments: str, params: Mapping[str, Any]
) -> None:
    """Change a run that is not terminal yet; a terminal run changes nothing."""
    await rm.execute(
        "UPDATE {rm}.runs SET " + assignments + ", last_position = %(position)s "
        "WHERE run_id = %(run_id)s AND " + _NOT_TERMINAL,
        params,
    )


async def _touch_run(rm: Target, params: Mapping[str, Any]) -> None:
    """Record that a report about the run was folded, whatever its status."""
    await rm.execute(
        "UPDATE {rm}.runs SET last_position = greatest(last_position, %(position)s) "
        "WHERE run_id = %(run_id)s",
        params,
    )


async def apply_subject_erased(
    rm: Target, event: RecordedEvent, payload: SubjectErased
) -> None:
    """Nothing to fold: read models hold the pseudonym only, and the
    subject's fields read as erased once the key is gone."""


HANDLERS: dict[str, Handler] = {
    ProjectCreated.event_type: apply_project_created,
    DatasetRegistered.event_type: apply_dataset_registered,
    DatasetVersionCommitted.event_type: apply_dataset_version_committed,
    RunSubmitted.event_type: apply_run_submitted,
    RunPlanned.event_type: apply_run_planned,
    RunDispatched.event_type: apply_run_dispatched,
    RunCancelRequested.event_type: apply_run_cancel_requested,
    RunStarted.event_type: apply_run_started,
    ArtifactRecorded.event_type: apply_artifact_recorded,
    MetricsRecorded.event_type: apply_metrics_recorded,
    RunSucceeded.event_type: apply_run_succeeded,
    RunFailed.event_type: apply_run_failed,
    RunCanceled.event_type: apply_run_canceled,
    ReportRejected.event_type: apply_report_rejected,
    SubjectErased.event_type: apply_subject_erased,
}
"""The one dispatch table: event type -> handler."""


@dataclass(frozen=True, kw_only=True)
class SkippedEvent:
    """An event the projector could not fold: unknown type or bad payload."""

    position: int
    type: str
    reason: str


@dataclass(kw_only=True)
class BatchOutcome:
    """What one batch did to a read model."""

    applied: int = 0
    skipped: list[SkippedEvent] = field(default_factory=list)


class Projector:
    """Folds recorded events into the read-model tables of one schema."""

    def __init__(self, schema: str = DEFAULT_SCHEMA) -> None:
        self.schema = schema

    async def apply(
        self, conn: AsyncConnection[Any], events: Sequence[RecordedEvent]
    ) -> BatchOutcome:
        """Fold `events` in order; run this inside the caller's transaction.

        Events whose type is unknown or whose payload does not decode are
        skipped, logged, and listed in the outcome.
        """
        outcome = BatchOutcome()
        target = Target(conn, self.schema)
        async with conn.pipeline():
            for event in events:
                payload = _decode(event)
                if isinstance(payload, SkippedEvent):
                    outcome.skipped.append(payload)
                    continue
                await HANDLERS[event.type](target, event, payload)
                outcome.applied += 1
        return outcome


def _decode(event: RecordedEvent) -> DomainEvent | SkippedEvent:
    if event.type not in EVENT_TYPES or event.type not in HANDLERS:
        log.warning(
            "projector_event_type_unknown",
            position=event.position,
            event_type=event.type,
        )
        return SkippedEvent(
            position=event.position, type=event.type, reason="unknown event type"
        )
    try:
        return decode_event(event.type, event.data)
    except PydanticValidationError as exc:
        log.error(
            "projector_event_undecodable",
            position=event.position,
            event_type=event.type,
            errors=exc.error_count(),
        )
        return SkippedEvent(
            position=event.position,
            type=event.type,
            reason=f"payload does not validate ({exc.error_count()} errors)",
        )


async def project_batch(
    conn: AsyncConnection[Any],
    events: Sequence[RecordedEvent],
    schema: str = DEFAULT_SCHEMA,
) -> BatchOutcome:
    """Fold `events` into the read models of `schema` on `conn`.

    Run it inside a transaction that also moves the checkpoint, so the batch
    and its checkpoint commit together.
    """
    return await Projector(schema).apply(conn, events)


_CHECKPOINT_QUERY = "SELECT position FROM projector_checkpoints WHERE name = %s"


async def read_checkpoint(
    pool: AsyncConnectionPool, name: str = DEFAULT_CHECKPOINT
) -> int:
    """The position a projector has folded up to (0 before its first batch)."""
    with translate_db_errors():
        async with pool.connection() as conn:
            cur = await conn.execute(_CHECKPOINT_QUERY, (name,))
            row = await cur.fetchone()
    return int(row[0]) if row else 0


async def wait_for_position(
    pool: AsyncConnectionPool,
    position: int,
    timeout: float = 5.0,
    *,
    name: str = DEFAULT_CHECKPOINT,
) -> bool:
    """Wait until the projector has folded `position` (read-your-writes).

    Woken by the projector's NOTIFY on each checkpoint; the checkpoint row is
    read again at a slow pace in case a notification was missed.

    Returns:
        True once the checkpoint reached `position`, False after `timeout`
        seconds without it.
    """
    watcher = _watcher(pool, name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # While the watcher listens, it knows every checkpoint: it read the row
    # when LISTEN began and hears each one since. Read the row only when it
    # does not listen, or when a wait ran out (a notification gone missing).
    poll = not watcher.listening
    while True:
        if poll:
            watcher.note(await read_checkpoint(pool, name))
        if watcher.position >= position:
            return True
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        woken = await watcher.changed(min(remaining, 0.25))
        poll = not (woken and watcher.listening)


class _CheckpointWatcher:
    """The highest checkpoint seen for one (database, checkpoint name), fed
    by LISTEN on a connection of its own; shared by every waiting request."""

    def __init__(self, conninfo: str, name: str) -> None:
        self._conninfo = conninfo
        self._name = name
        self.position = 0
        self.listening = False
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._listen(), name=f"watch-{name}")

    def note(self, position: int) -> None:
        if position > self.position:
            self.position = position
            self._changed.set()
            self._changed = asyncio.Event()

    async def changed(self, timeout: float) -> bool:
        """Wait for a higher checkpoint; False when `timeout` ran out first."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _listen(self) -> None:
        prefix = f"{self._name}:"
        while True:
            try:
                async with await AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {PROJECTED_CHANNEL}")
                    cur = await conn.execute(_CHECKPOINT_QUERY, (self._name,))
                    row = await cur.fetchone()
                    self.note(int(row[0]) if row else 0)
                    self.listening = True
                    async for note in conn.notifies():
                        if note.payload.startswith(prefix):
                            self.note(int(note.payload[len(prefix) :]))
            except Exception as exc:  # noqa: BLE001 - polling still answers
                log.debug("checkpoint_watch_lost", error=repr(exc))
            self.listening = False
            await asyncio.sleep(1.0)


_WATCHERS: dict[tuple[int, str, str], _CheckpointWatcher] = {}


def _watcher(pool: AsyncConnectionPool, name: str) -> _CheckpointWatcher:
    """The watcher of this event loop for `pool`'s database and `name`."""
    key = (id(asyncio.get_running_loop()), pool.conninfo, name)
    watcher = _WATCHERS.get(key)
    if watcher is None or watcher._task.done():
        watcher = _WATCHERS[key] = _CheckpointWatcher(pool.conninfo, name)
    return watcher


async def _ensure_checkpoint(conn: AsyncConnection[Any], name: str) -> None:
    await conn.execute(
        "INSERT INTO projector_checkpoints (name, position) VALUES (%s, 0) "
        "ON CONFLICT (name) DO NOTHING",
        (name,),
    )


async def lock_checkpoint(conn: AsyncConnection[Any], name: str) -> int:
    """Lock a checkpoint row until the transaction ends; return its position.

    The live projector takes this lock at the start of every batch, so
    holding it pauses the projector (replay compares under it).
    """
    await _ensure_checkpoint(conn, name)
    cur = await conn.execute(
        "SELECT position FROM projector_checkpoints WHERE name = %s FOR UPDATE",
        (name,),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _save_checkpoint(
    conn: AsyncConnection[Any], name: str, position: int
) -> None:
    await conn.execute(
        "UPDATE projector_checkpoints SET position = %s WHERE name = %s",
        (position, name),
    )
    await conn.execute(
        "SELECT pg_notify(%s, %s)", (PROJECTED_CHANNEL, f"{name}:{position}")
    )


class ProjectorState(enum.Enum):
    IDLE = "idle"  # not started, or stopped: no task is polling
    RUNNING = "running"  # polling the log and folding batches
    STOPPING = "stopping"  # finishing the current batch, then idle


class ProjectorService:
    """The long-lived projector: polls the log and folds it into `rm`.

    Use as `async with ProjectorService(pool) as projector:` or call
    `start()` and `stop()`. Several instances may share one checkpoint; the
    checkpoint lock lets exactly one of them fold each batch.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        store: EventStore | None = None,
        name: str = DEFAULT_CHECKPOINT,
        schema: str = DEFAULT_SCHEMA,
        batch_size: int = 1000,
        poll_interval: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self._pool = pool
        self._store = store or EventStore(pool)
        self._name = name
        self._projector = Projector(schema)
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._max_backoff = max_backoff
        self._position = 0
        self._state = ProjectorState.IDLE
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._last_error: Exception | None = None

    @property
    def state(self) -> ProjectorState:
        return self._state

    @property
    def position(self) -> int:
        """The last position this instance knows to be folded."""
        return self._position

    @property
    def last_error(self) -> Exception | None:
        """Why the latest batch failed; None once a batch succeeds again."""
        return self._last_error

    async def __aenter__(self) -> ProjectorService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load the checkpoint and start polling (no-op when running)."""
        if self._state is not ProjectorState.IDLE:
            return
        with translate_db_errors():
            async with self._pool.connection() as conn:
                await _ensure_checkpoint(conn, self._name)
        self._position = await read_checkpoint(self._pool, self._name)
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"projector-{self._name}")
        self._listener = asyncio.create_task(
            self._listen(), name=f"projector-listen-{self._name}"
        )
        self._state = ProjectorState.RUNNING
        log.info("projector_started", checkpoint=self._name, position=self._position)

    async def stop(self) -> None:
        """Finish the batch in flight, then stop polling."""
        if self._task is None:
            return
        self._state = ProjectorState.STOPPING
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=30)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self._state = ProjectorState.IDLE
        log.info("projector_stopped", checkpoint=self._name, position=self._position)

    async def run_once(self) -> int:
        """Fold the next batch after the checkpoint; return how many events it had.

        Raises:
            StoreError: the database failed; nothing of the batch was kept.
        """
        events = await self._store.read_all(
            after=self._position, limit=self._batch_size
        )
        if not events:
            return 0
        with translate_db_errors():
            async with self._pool.connection() as conn, conn.transaction():
                checkpoint = await lock_checkpoint(conn, self._name)
                if checkpoint != self._position:
                    # Another instance folded past us (or the checkpoint was
                    # reset): resume from the stored position next time.
                    self._position = checkpoint
                    return 0
                outcome = await self._projector.apply(conn, events)
                await _save_checkpoint(conn, self._name, events[-1].position)
        self._position = events[-1].position
        log.debug(
            "projector_batch_applied",
            checkpoint=self._name,
            first_position=events[0].position,
            position=self._position,
            applied=outcome.applied,
            skipped=len(outcome.skipped),
        )
        return len(events)

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                folded = await self.run_once()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive a batch
                failures += 1
                await self._pause_after_failure(exc, failures)
                continue
            failures = 0
            self._last_error = None
            if folded < self._batch_size:
                await self._sleep(self._poll_interval)

    async def _pause_after_failure(self, exc: Exception, failures: int) -> None:
        self._last_error = exc
        delay = min(self._poll_interval * 2**failures, self._max_backoff)
        log.error(
            "projector_batch_failed",
            checkpoint=self._name,
            position=self._position,
            error=exc.detail if isinstance(exc, AnimusError) else repr(exc),
            retry_in=delay,
            exc_info=not isinstance(exc, AnimusError),
        )
        await self._sleep(delay)

    async def _listen(self) -> None:
        """Wake the loop on every committed append (NOTIFY from the store)."""
        while not self._stopping.is_set():
            try:
                async with await AsyncConnection.connect(
                    self._pool.conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    async for _ in conn.notifies():
                        self._wake.set()
            except Exception as exc:  # noqa: BLE001 - polling still folds
                log.debug("projector_listen_lost", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=1.0)

    async def _sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, ending early on stop or a new append."""
        wake = asyncio.ensure_future(self._wake.wait())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait(
                {wake, stop}, timeout=seconds, return_when="FIRST_COMPLETED"
            )
        finally:
            wake.cancel()
            stop.cancel()
        self._wake.clear()
