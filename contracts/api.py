"""API payloads: what the HTTP gateway answers.

Request bodies are the command models of `contracts.commands` and
`contracts.runs.RunSpec`; the models here describe responses, so the
published OpenAPI document describes every field once. Read models carry
more columns than they show; unknown keys are dropped, never echoed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from contracts._text import Identifier
from contracts.runs import RunPlan, RunSpec

IDENTIFIER_PATTERN: str = next(
    meta.pattern
    for meta in Identifier.__metadata__
    if isinstance(meta, StringConstraints) and meta.pattern
)
"""The pattern every project and dataset id matches (also in URL paths)."""

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ApiModel(BaseModel):
    """Base of every response body."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class FieldProblem(ApiModel):
    """One refused field of a request body."""

    field: str = Field(description="Dotted location in the body; empty for the root")
    message: str


class Problem(ApiModel):
    """An error, as RFC 9457 problem details (`application/problem+json`)."""

    type: str = Field(description="URI naming the kind of problem")
    title: str
    status: int
    detail: str
    instance: str = Field(description="The request path")
    request_id: str = Field(description="Echo of the X-Request-ID header")
    errors: list[FieldProblem] | None = None


class Health(ApiModel):
    status: Literal["ok"] = "ok"


class Readiness(ApiModel):
    """Every dependency answered."""

    status: Literal["ready"] = "ready"
    checks: dict[str, Literal["ok"]]


ACTOR_DESCRIPTION = (
    "Who did it: a person's display name (`erased` once their personal data "
    "was erased), or a service's id"
)
SUBJECT_DESCRIPTION = "The person's pseudonymous subject id; None for a service"


class Project(ApiModel):
    project_id: Identifier
    name: str
    description: str
    created_at: datetime
    created_by: str | None = Field(default=None, description=ACTOR_DESCRIPTION)
    created_by_subject: str | None = Field(
        default=None, description=SUBJECT_DESCRIPTION
    )
    position: int = Field(description="Log position of the ProjectCreated event")


class ProjectList(ApiModel):
    items: list[Project]
    limit: int
    offset: int


class Dataset(ApiModel):
    project_id: Identifier
    dataset_id: Identifier
    name: str
    description: str
    created_at: datetime
    created_by: str | None = Field(default=None, description=ACTOR_DESCRIPTION)
    created_by_subject: str | None = Field(
        default=None, description=SUBJECT_DESCRIPTION
    )
    latest_version: int = Field(description="Newest committed version; 0 for none")


class DatasetList(ApiModel):
    items: list[Dataset]


class DatasetVersion(ApiModel):
    """A committed version: its object is complete and its sha256 checked."""

    project_id: Identifier
    dataset_id: Identifier
    version: int
    sha256: str = Field(description="Full-content sha256, 64 hex characters")
    size: int
    filename: str
    content_type: str
    committed_at: datetime
    committed_by: str | None = Field(default=None, description=ACTOR_DESCRIPTION)
    committed_by_subject: str | None = Field(
        default=None, description=SUBJECT_DESCRIPTION
    )


class DatasetVersionList(ApiModel):
    items: list[DatasetVersion]


class Artifact(ApiModel):
    name: str = Field(description="Path relative to /outputs, or logs/run.log")
    sha256: str
    size: int
    kind: Literal["output", "log"]


class ArtifactList(ApiModel):
    """A run's artifacts; fetch each from `.../artifacts/{name}`."""

    items: list[Artifact]


class RunSummary(ApiModel):
    run_id: str
    project_id: Identifier
    name: str
    status: str = Field(description="submitted, planned, dispatched, running, ...")
    attempt: int
    spec_hash: str
    plan_hash: str | None = None
    executor: str | None = None
    submitted_by: str | None = Field(default=None, description=ACTOR_DESCRIPTION)
    submitted_by_subject: str | None = Field(
        default=None, description=SUBJECT_DESCRIPTION
    )
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = Field(
        default=None,
        description="When the workload finished: its own exit time as the "
        "executor read it from the workload's status (executor clock, for "
        "display only) when reported, else `recorded_finished_at`; see "
        "`finished_at_source`",
    )
    recorded_finished_at: datetime | None = Field(
        default=None,
        description="When the control plane recorded the terminal event "
        "(database clock); later than `finished_at` when the workload ended "
        "while no executor or coordinator was watching",
    )
    finished_at_source: Literal["workload", "recorded"] | None = Field(
        default=None,
        description="`workload`: `finished_at` is the workload's exit time; "
        "`recorded`: none was reported, it is `recorded_finished_at`",
    )
    failure_reason: str | None = None
    failure_message: str | None = None
    cancel_requested: bool = False
    exit_code: int | None = None
    rejected_reports: int = Field(
        default=0,
        description="Reports about this run that could not be read or stored; "
        "each was dead-lettered and recorded as a ReportRejected event",
    )
    last_position: int


class RunList(ApiModel):
    items: list[RunSummary]
    limit: int
    offset: int


class Run(RunSummary):
    """A run with its spec, resolved plan, metrics and artifacts."""

    spec: RunSpec
    plan: RunPlan | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    metrics_error: str | None = Field(
        default=None,
        description="Why /outputs/metrics.json was refused in whole or in part "
        "(not JSON, not an object, a value that is not a finite number); the "
        "run's outcome is still its exit status and the file is an artifact",
    )
    artifacts: list[Artifact] = Field(default_factory=list)


class TimelineEvent(ApiModel):
    position: int
    stream_version: int
    type: str
    recorded_at: datetime
    actor: Any = None
    data: dict[str, Any]


class RunTimeline(ApiModel):
    project_id: Identifier
    run_id: str
    events: list[TimelineEvent]


class LineageInput(ApiModel):
    id: str = Field(description="`<dataset_id>@<version>`")
    dataset_id: Identifier
    version: int
    sha256: str
    size: int


class LineageOutput(ApiModel):
    id: str = Field(description="`<run_id>/<name>`")
    name: str
    sha256: str
    size: int
    kind: Literal["output", "log"]


class LineageEdge(ApiModel):
    source_kind: str
    source_id: str
    target_kind: str
    target_id: str
    relation: str


class RunLineage(ApiModel):
    project_id: Identifier
    run_id: str
    inputs: list[LineageInput]
    outputs: list[LineageOutput]
    edges: list[LineageEdge]


class Receipt(ApiModel):
    """What a command appended; `position` is its last event in the log."""

    position: int


class ProjectReceipt(Receipt):
    project_id: Identifier
    name: str
    description: str


class DatasetReceipt(Receipt):
    project_id: Identifier
    dataset_id: Identifier
    name: str
    description: str


class DatasetVersionReceipt(Receipt):
    project_id: Identifier
    dataset_id: Identifier
    version: int
    sha256: str
    size: int
    filename: str
    content_type: str


class RunReceipt(Receipt):
    project_id: Identifier
    run_id: str
    status: str
    spec_hash: str
    plan_hash: str | None = None


class CancelReceipt(Receipt):
    project_id: Identifier
    run_id: str
    status: str | None = None


class SubjectProfile(ApiModel):
    """A data subject's personal fields, opened at read time."""

    subject: str = Field(description="Pseudonymous subject id (`subj_` + 32 hex)")
    name: str | None = Field(description="Display name, or `erased`")
    email: str | None = Field(description="Email, or `erased`; None if unknown")
    erased: bool
    created_at: datetime
    erased_at: datetime | None = None


class ErasureReceipt(ApiModel):
    """A subject's key is destroyed; `SubjectErased` records it in the log."""

    subject: str
    erased_at: datetime
    already_erased: bool = Field(
        description="True when the subject was erased before this request"
    )
    position: int | None = Field(description="Log position of the SubjectErased event")
    repaired: bool = Field(
        default=False,
        description="This request completed an erasure a failure had left half "
        "done: the SubjectErased event was missing, or the key was still there",
    )
    vacuumed: bool = Field(
        description="subject_keys was rewritten (VACUUM FULL) so the destroyed "
        "key lingers in no dead tuple (on every request, so a retry finishes "
        "an interrupted one); false when the owner role is not configured here"
    )
