"""The dataset aggregate: registration and its committed versions.

State is folded from the dataset stream (`contracts.streams.dataset_stream`).
A version exists only as a `DatasetVersionCommitted` event, written after its
object is complete in S3 and its sha256 was checked; version ordinals are
gap-free from 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from pydantic import ValidationError as PydanticValidationError

from animus.errors import AlreadyExistsError, NotFoundError, ValidationError
from animus.eventstore import RecordedEvent
from contracts.commands import RegisterDataset
from contracts.events import (
    DatasetRegistered,
    DatasetVersionCommitted,
    DomainEvent,
    decode_event,
)

STREAM_TYPE = "dataset"


@dataclass(frozen=True, kw_only=True)
class CommittedVersion:
    """One immutable version: its ordinal and the digest of its object."""

    version: int
    sha256: str
    size: int
    object_key: str


@dataclass(frozen=True, kw_only=True)
class DatasetState:
    """What the write side knows about one dataset."""

    project_id: str
    dataset_id: str
    version: int = 0
    name: str | None = None
    versions: Mapping[int, CommittedVersion] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @property
    def registered(self) -> bool:
        return self.name is not None

    @property
    def last_version(self) -> int:
        return max(self.versions, default=0)


def fold_dataset(
    project_id: str, dataset_id: str, events: Sequence[RecordedEvent]
) -> DatasetState:
    """Fold the dataset stream into its state."""
    state = DatasetState(project_id=project_id, dataset_id=dataset_id)
    for recorded in events:
        state = _evolve(state, recorded)
    return state


def _evolve(state: DatasetState, recorded: RecordedEvent) -> DatasetState:
    event = decode_event(recorded.type, recorded.data)
    state = replace(state, version=recorded.stream_version)
    if isinstance(event, DatasetRegistered):
        return replace(state, name=event.name)
    if isinstance(event, DatasetVersionCommitted):
        committed = CommittedVersion(
            version=event.version,
            sha256=event.sha256,
            size=event.size,
            object_key=event.object_key,
        )
        versions = {**state.versions, event.version: committed}
        return replace(state, versions=MappingProxyType(versions))
    return state


def check_dataset_registered(state: DatasetState) -> None:
    """Refuse to act on a dataset that was never registered.

    Raises:
        NotFoundError: the dataset does not exist.
    """
    if not state.registered:
        raise NotFoundError(
            f"dataset {state.dataset_id} does not exist "
            f"in project {state.project_id}"
        )


def decide_register_dataset(
    state: DatasetState, cmd: RegisterDataset
) -> list[DomainEvent]:
    """Register the dataset once.

    Raises:
        AlreadyExistsError: the dataset exists.
    """
    if state.registered:
        raise AlreadyExistsError(f"dataset {cmd.dataset_id} already exists")
    return [
        DatasetRegistered(
            project_id=state.project_id,
            dataset_id=state.dataset_id,
            name=cmd.name,
            description=cmd.description,
        )
    ]


def decide_commit_version(
    state: DatasetState,
    *,
    sha256: str,
    size: int,
    object_key: str,
    filename: str,
    content_type: str,
) -> DatasetVersionCommitted:
    """Commit the next version ordinal for a verified object.

    Raises:
        NotFoundError: the dataset does not exist.
        ValidationError: a field cannot be stored (digest, size, file name).
    """
    check_dataset_registered(state)
    try:
        return DatasetVersionCommitted(
            project_id=state.project_id,
            dataset_id=state.dataset_id,
            version=state.last_version + 1,
            sha256=sha256,
            size=size,
            object_key=object_key,
            filename=filename,
            content_type=content_type,
        )
    except PydanticValidationError as exc:
        fields = sorted({str(error["loc"][0]) for error in exc.errors()})
        raise ValidationError(
            f"dataset version refused, invalid: {', '.join(fields)}"
        ) from exc


def resolve_version(state: DatasetState, version: int) -> CommittedVersion:
    """The committed version a run input refers to.

    Raises:
        ValidationError: the dataset or the version does not exist (or is not
            committed, which is the same thing in the log).
    """
    if not state.registered:
        raise ValidationError(
            f"dataset {state.dataset_id} does not exist "
            f"in project {state.project_id}"
        )
    committed = state.versions.get(version)
    if committed is None:
        raise ValidationError(
            f"dataset {state.dataset_id} has no committed version {version}"
        )
    return committed
