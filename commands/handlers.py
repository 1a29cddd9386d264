"""Command handlers: load streams, fold, decide, append.

Every handler reads the streams it decides on with `EventStore.read_stream`,
folds them with the aggregate modules (`commands.project`, `.dataset`,
`.run`), asks their pure deciders for events and appends those with the
stream versions it read as expected versions. A handler that loses the race
on a stream (`StreamVersionConflict`) decides again on fresh state, at most
`MAX_ATTEMPTS` times; a decision that no longer holds then raises its own
error (already exists, run finished), and a race lost every time answers 409.

Each appended event carries the caller's `CommandContext` as metadata:
actor, request id, client address, trace id and the command's name. A
person's actor is their pseudonymous subject with name and email sealed,
and their client address is sealed too (`animus.personal`); services are
named in plain text (`executor:local`).

Runs are planned here, deterministically: the spec is validated, each input
resolves to a committed dataset version with its sha256 and object key, and
`spec_hash` and `plan_hash` are the sha256 of the RFC 8785 canonical JSON of
the spec and of the plan. The same spec over the same versions gives the same
hashes on any machine. RunSubmitted, RunPlanned and RunDispatched are
appended in one append, so a run that exists is at least dispatched.

Every handler answers a dict with `position` (the global position of its
last appended event) and the fields of its receipt in `contracts.api`.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import rfc8785
import structlog
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from animus.errors import NotFoundError, StreamVersionConflict, ValidationError
from animus.eventstore import EventStore, NewEvent, RecordedEvent
from commands import dataset, project, run
from contracts.commands import CancelRun, CreateProject, RegisterDataset
from contracts.events import (
    DomainEvent,
    RunDispatched,
    RunPlanned,
    RunSubmitted,
)
from contracts.runs import ResolvedInput, RunPlan, RunSpec
from contracts.streams import dataset_stream, project_stream, run_stream

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 3
"""How often a command decides again after losing a stream version race."""

FIRST_ATTEMPT = 1

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class CommandContext:
    """Who asks, from where, under which request and trace.

    `actor` is a service's name, or a person's sealed actor object
    (`animus.personal.sealed_actor`); `client_address` is sealed for a
    person. Neither holds a person's data in plain text.
    """

    actor: str | Mapping[str, Any] | None
    request_id: str | None = None
    client_address: str | Mapping[str, Any] | None = None
    trace_id: str | None = None

    def metadata(self, command: str) -> dict[str, Any]:
        """The metadata of every event appended for `command`."""
        values = {
            "actor": self.actor,
            "request_id": self.request_id,
            "client_address": self.client_address,
            "trace_id": self.trace_id,
            "command": command,
        }
        return {key: value for key, value in values.items() if value is not None}


def new_run_id() -> str:
    """A lowercase ULID: 48 bits of milliseconds, then 80 random bits.

    Sortable by creation time, 26 characters of `[0-9a-z]`, so it fits
    subjects, Kubernetes names and the gateway's run id pattern.
    """
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def canonical_sha256(model: BaseModel) -> str:
    """sha256 (hex) of the RFC 8785 canonical JSON of a model.

    Raises:
        ValidationError: a value has no canonical JSON form (an integer
            beyond 2**53, a non-finite float).
    """
    try:
        canonical = rfc8785.dumps(model.model_dump(mode="json"))
    except rfc8785.CanonicalizationError as exc:
        raise ValidationError(f"value has no canonical JSON form: {exc}") from exc
    return hashlib.sha256(canonical).hexdigest()


def build_plan(
    spec: RunSpec, spec_hash: str, inputs: Mapping[str, dataset.CommittedVersion]
) -> RunPlan:
    """The spec with every input resolved to its committed version."""
    resolved = {
        name: ResolvedInput(
            dataset=spec.inputs[name].dataset,
            version=committed.version,
            sha256=committed.sha256,
            size=committed.size,
            object_key=committed.object_key,
        )
        for name, committed in inputs.items()
    }
    return RunPlan(
        spec_hash=spec_hash,
        command=list(spec.command),
        image=spec.image,
        inputs=resolved,
        parameters=dict(spec.parameters),
        resources=spec.resources,
        timeout_seconds=spec.timeout_seconds,
        secret_refs=list(spec.secret_refs),
        executor=spec.executor,
    )


class CommandHandlers:
    """The write side's entry points, over one event store."""

    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def create_project(
        self, ctx: CommandContext, data: CreateProject
    ) -> dict[str, Any]:
        """Create a project once.

        Raises:
            AlreadyExistsError: the project exists.
        """

        async def attempt() -> dict[str, Any]:
            stream_id = project_stream(data.project_id)
            state = project.fold_project(
                data.project_id, await self._store.read_stream(stream_id)
            )
            events = project.decide_create_project(state, data)
            recorded = await self._append(
                ctx,
                "CreateProject",
                [
                    self._new(project.STREAM_TYPE, stream_id, data.project_id, e)
                    for e in events
                ],
                {stream_id: state.version},
            )
            return {"position": recorded[-1].position, "project_id": data.project_id}

        return await self._retrying("CreateProject", attempt)

    async def register_dataset(
        self, ctx: CommandContext, project_id: str, data: RegisterDataset
    ) -> dict[str, Any]:
        """Register a dataset in an existing project.

        Raises:
            NotFoundError: the project does not exist.
            AlreadyExistsError: the dataset exists.
        """
        await self._check_project(project_id)

        async def attempt() -> dict[str, Any]:
            stream_id = dataset_stream(project_id, data.dataset_id)
            state = dataset.fold_dataset(
                project_id, data.dataset_id, await self._store.read_stream(stream_id)
            )
            events = dataset.decide_register_dataset(state, data)
            recorded = await self._append(
                ctx,
                "RegisterDataset",
                [
                    self._new(dataset.STREAM_TYPE, stream_id, project_id, e)
                    for e in events
                ],
                {stream_id: state.version},
            )
            return {
                "position": recorded[-1].position,
                "project_id": project_id,
                "dataset_id": data.dataset_id,
            }

        return await self._retrying("RegisterDataset", attempt)

    async def check_dataset_writable(self, project_id: str, dataset_id: str) -> None:
        """Refuse an upload before any byte reaches storage.

        Raises:
            NotFoundError: the project or the dataset does not exist.
        """
        await self._check_project(project_id)
        state = await self._dataset(project_id, dataset_id)
        dataset.check_dataset_registered(state)

    async def commit_dataset_version(
        self,
        ctx: CommandContext,
        project_id: str,
        dataset_id: str,
        *,
        sha256: str,
        size: int,
        object_key: str,
        filename: str,
        content_type: str,
    ) -> dict[str, Any]:
        """Commit the next version for an object that is complete and verified.

        A lost race takes the next ordinal on fresh state; versions stay
        gap-free.

        Raises:
            NotFoundError: the project or the dataset does not exist.
            ValidationError: a field cannot be stored.
        """
        await self._check_project(project_id)

        async def attempt() -> dict[str, Any]:
            stream_id = dataset_stream(project_id, dataset_id)
            state = await self._dataset(project_id, dataset_id)
            event = dataset.decide_commit_version(
                state,
                sha256=sha256,
                size=size,
                object_key=object_key,
                filename=filename,
                content_type=content_type,
            )
            recorded = await self._append(
                ctx,
                "UploadDatasetVersion",
                [self._new(dataset.STREAM_TYPE, stream_id, project_id, event)],
                {stream_id: state.version},
            )
            return {
                "position": recorded[-1].position,
                "project_id": project_id,
                "dataset_id": dataset_id,
                "version": event.version,
                "sha256": event.sha256,
                "size": event.size,
                "object_key": event.object_key,
                "filename": event.filename,
                "content_type": event.content_type,
            }

        return await self._retrying("UploadDatasetVersion", attempt)

    async def submit_run(
        self,
        ctx: CommandContext,
        project_id: str,
        data: RunSpec | Mapping[str, Any],
    ) -> dict[str, Any]:
        """Plan a run and dispatch it: three events in one append.

        Raises:
            NotFoundError: the project does not exist.
            ValidationError: the spec is invalid, asks for what its executor
                cannot give (secrets, GPUs), or an input names a dataset or
                version that is not committed.
        """
        spec = _validated_spec(data)
        run.check_executor_supports(spec)
        await self._check_project(project_id)
        inputs = await self._resolve_inputs(project_id, spec)
        spec_hash = canonical_sha256(spec)
        plan = build_plan(spec, spec_hash, inputs)
        plan_hash = canonical_sha256(plan)

        async def attempt() -> dict[str, Any]:
            run_id = new_run_id()
            stream_id = run_stream(run_id)
            events: list[DomainEvent] = [
                RunSubmitted(
                    project_id=project_id,
                    run_id=run_id,
                    spec=spec,
                    spec_hash=spec_hash,
                ),
                RunPlanned(
                    project_id=project_id, run_id=run_id, plan=plan, plan_hash=plan_hash
                ),
                RunDispatched(
                    project_id=project_id,
                    run_id=run_id,
                    attempt=1,
                    executor=spec.executor,
                ),
            ]
            recorded = await self._append(
                ctx,
                "SubmitRun",
                [self._new(run.STREAM_TYPE, stream_id, project_id, e) for e in events],
                {stream_id: 0},
            )
            log.info(
                "run_submitted",
                run_id=run_id,
                project_id=project_id,
                spec_hash=spec_hash,
                plan_hash=plan_hash,
                position=recorded[-1].position,
            )
            return {
                "position": recorded[-1].position,
                "project_id": project_id,
                "run_id": run_id,
                "status": run.RunStatus.DISPATCHED.value,
                "attempt": 1,
                "executor": spec.executor,
                "spec_hash": spec_hash,
                "plan_hash": plan_hash,
            }

        return await self._retrying("SubmitRun", attempt)

    async def cancel_run(
        self, ctx: CommandContext, project_id: str, run_id: str, command: CancelRun
    ) -> dict[str, Any]:
        """Ask for a run to stop; a repeated request appends nothing.

        Raises:
            NotFoundError: the run does not exist in this project.
            ConflictError: the run already finished.
        """

        async def attempt() -> dict[str, Any]:
            stream_id = run_stream(run_id)
            events = await self._store.read_stream(stream_id)
            state = run.fold_run(run_id, events)
            if state.project_id != project_id:
                raise NotFoundError(
                    f"run {run_id} does not exist in project {project_id}"
                )
            decided = run.decide_cancel(state, command)
            if not decided:
                position = state.cancel_position or events[-1].position
                return _cancel_answer(project_id, run_id, position, state.status)
            recorded = await self._append(
                ctx,
                "CancelRun",
                [self._new(run.STREAM_TYPE, stream_id, project_id, e) for e in decided],
                {stream_id: state.version},
            )
            return _cancel_answer(
                project_id, run_id, recorded[-1].position, state.status
            )

        return await self._retrying("CancelRun", attempt)

    async def _check_project(self, project_id: str) -> None:
        state = project.fold_project(
            project_id, await self._store.read_stream(project_stream(project_id))
        )
        project.check_project_exists(state)

    async def _dataset(self, project_id: str, dataset_id: str) -> dataset.DatasetState:
        events = await self._store.read_stream(dataset_stream(project_id, dataset_id))
        return dataset.fold_dataset(project_id, dataset_id, events)

    async def _resolve_inputs(
        self, project_id: str, spec: RunSpec
    ) -> dict[str, dataset.CommittedVersion]:
        """Each input's committed version, read from its dataset stream.

        Raises:
            ValidationError: a dataset or version is unknown or not committed.
        """
        resolved = {}
        for name, ref in sorted(spec.inputs.items()):
            state = await self._dataset(project_id, ref.dataset)
            try:
                resolved[name] = dataset.resolve_version(state, ref.version)
            except ValidationError as exc:
                raise ValidationError(f"input {name}: {exc.detail}") from exc
        return resolved

    @staticmethod
    def _new(
        stream_type: str, stream_id: str, project_id: str, event: DomainEvent
    ) -> NewEvent:
        return NewEvent(
            stream_type=stream_type,
            stream_id=stream_id,
            project_id=project_id,
            event=event,
        )

    async def _append(
        self,
        ctx: CommandContext,
        command: str,
        events: Sequence[NewEvent],
        expected_versions: Mapping[str, int],
    ) -> list[RecordedEvent]:
        return await self._store.append(
            events,
            expected_versions=expected_versions,
            metadata=ctx.metadata(command),
        )

    async def _retrying(self, command: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt`; decide again on fresh state after a lost race."""
        for number in range(FIRST_ATTEMPT, MAX_ATTEMPTS + 1):
            try:
                return await attempt()
            except StreamVersionConflict:
                if number == MAX_ATTEMPTS:
                    raise
                log.info("command_retried", command=command, attempt=number)
        raise AssertionError("unreachable")  # pragma: no cover


def _validated_spec(data: RunSpec | Mapping[str, Any]) -> RunSpec:
    """The spec as a model, checked again when it arrives as a mapping.

    Raises:
        ValidationError: the spec does not validate.
    """
    if isinstance(data, RunSpec):
        return data
    try:
        return RunSpec.model_validate(data)
    except PydanticValidationError as exc:
        fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})
        raise ValidationError(
            f"run spec refused, invalid: {', '.join(fields)}"
        ) from exc


def _cancel_answer(
    project_id: str, run_id: str, position: int, status: run.RunStatus | None
) -> dict[str, Any]:
    return {
        "position": position,
        "project_id": project_id,
        "run_id": run_id,
        "status": status.value if status is not None else None,
        "cancel_requested": True,
    }
