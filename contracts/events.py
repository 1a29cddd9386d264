"""Domain events: the only things ever written to the event log.

Event type names are past tense. Each class documents its payload; the
envelope around it (position, stream, metadata, chain) lives in
`contracts.envelope`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts._text import Identifier, LongText, ShortText
from contracts.bus import MAX_INT32, MAX_SAFE_INTEGER, ReportKind
from contracts.runs import ArtifactInfo, FailureReason, RunPlan, RunSpec


class DomainEvent(BaseModel):
    """Base class: a frozen payload with a stable type name."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1


class ProjectCreated(DomainEvent):
    event_type = "ProjectCreated"
    project_id: Identifier
    name: ShortText
    description: LongText = ""


class DatasetRegistered(DomainEvent):
    event_type = "DatasetRegistered"
    project_id: Identifier
    dataset_id: Identifier
    name: ShortText
    description: LongText = ""


class DatasetVersionCommitted(DomainEvent):
    """A version whose object is complete in S3 and whose sha256 was checked."""

    event_type = "DatasetVersionCommitted"
    project_id: Identifier
    dataset_id: Identifier
    version: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=1)
    object_key: str
    filename: ShortText = ""
    content_type: ShortText = "application/octet-stream"


class RunSubmitted(DomainEvent):
    event_type = "RunSubmitted"
    project_id: Identifier
    run_id: str
    spec: RunSpec
    spec_hash: str


class RunPlanned(DomainEvent):
    event_type = "RunPlanned"
    project_id: Identifier
    run_id: str
    plan: RunPlan
    plan_hash: str


class RunDispatched(DomainEvent):
    """The run was handed to an executor; the relay publishes its launch."""

    event_type = "RunDispatched"
    project_id: Identifier
    run_id: str
    attempt: int = Field(ge=1)
    executor: str


class RunCancelRequested(DomainEvent):
    event_type = "RunCancelRequested"
    project_id: Identifier
    run_id: str
    attempt: int = Field(ge=1)
    reason: ShortText = "requested by user"


class RunStarted(DomainEvent):
    event_type = "RunStarted"
    project_id: Identifier
    run_id: str
    attempt: int
    report_id: str
    executor_time: str | None = None


class ArtifactRecorded(DomainEvent):
    event_type = "ArtifactRecorded"
    project_id: Identifier
    run_id: str
    attempt: int
    report_id: str
    artifact: ArtifactInfo


class MetricsRecorded(DomainEvent):
    """The numbers of the workload's metrics.json.

    `metrics_error` says why the file, or some of its entries, was refused
    (not JSON, not an object, a value that is not a finite number); the run's
    outcome is still its exit status, and the file is kept as an artifact.
    """

    event_type = "MetricsRecorded"
    project_id: Identifier
    run_id: str
    attempt: int
    report_id: str
    metrics: dict[str, float]
    metrics_error: LongText | None = None


class RunSucceeded(DomainEvent):
    event_type = "RunSucceeded"
    project_id: Identifier
    run_id: str
    attempt: int
    report_id: str
    exit_code: int = 0


class RunFailed(DomainEvent):
    event_type = "RunFailed"
    project_id: Identifier
    run_id: str
    attempt: int
    report_id: str | None = None
    reason: FailureReason
    message: LongText = ""
    exit_code: int | None = None


class RunCanceled(DomainEvent):
    event_type = "RunCanceled"
    project_id: Identifier
    run_id: str
    attempt: int
    report_id: str | None = None
    reason: ShortText = "canceled"


RejectReason = Literal[
    "invalid_report",
    "subject_mismatch",
    "unstorable_report",
    "unappliable_report",
]
"""Why a report was dead-lettered: it does not parse as a RunReport; it names
another run than its subject; its ids or names hold text the event store
cannot keep; or appending its events kept failing with a permanent error."""


class ReportRejected(DomainEvent):
    """A report from the executor that could not be read or stored.

    The raw message was republished to `dead_letter_subject` (see
    `contracts.bus`); only its sha256 and size are recorded here, never its
    bytes, which may hold text the event store cannot keep. `claimed_*` are
    what the message said about itself, where it could be read at all: they
    are not trusted as facts. Recorded on the run's stream while the run is
    open, otherwise on the coordinator's stream (`contracts.streams`), with
    `run_id` naming the run when it exists.
    """

    event_type = "ReportRejected"
    project_id: Identifier | None = None
    run_id: str | None = None
    reason: RejectReason
    detail: LongText = ""
    subject: ShortText
    stream_sequence: int = Field(ge=0, le=MAX_SAFE_INTEGER)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, le=MAX_SAFE_INTEGER)
    dead_letter_subject: ShortText
    claimed_kind: ReportKind | None = None
    claimed_attempt: int | None = Field(default=None, ge=1, le=MAX_INT32)


class SubjectErased(DomainEvent):
    """A data subject's key was destroyed: their sealed fields read as erased.

    Carries the pseudonym and the operator's reason only, never personal
    data (see contracts/personal-data.md).
    """

    event_type = "SubjectErased"
    subject: str = Field(pattern=r"^subj_[0-9a-f]{32}$")
    reason: ShortText = ""


EVENT_TYPES: dict[str, type[DomainEvent]] = {
    cls.event_type: cls
    for cls in (
        ProjectCreated,
        DatasetRegistered,
        DatasetVersionCommitted,
        RunSubmitted,
        RunPlanned,
        RunDispatched,
        RunCancelRequested,
        RunStarted,
        ArtifactRecorded,
        MetricsRecorded,
        RunSucceeded,
        RunFailed,
        RunCanceled,
        ReportRejected,
        SubjectErased,
    )
}

TERMINAL_RUN_EVENTS = frozenset({"RunSucceeded", "RunFailed", "RunCanceled"})

StreamType = Literal["project", "dataset", "run", "coordinator", "subject"]


def decode_event(event_type: str, data: dict[str, Any]) -> DomainEvent:
    """Turn a stored payload back into its model (upcasting lives here)."""
    return EVENT_TYPES[event_type].model_validate(data)
