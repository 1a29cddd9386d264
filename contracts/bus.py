"""Messages on the bus between the control plane and the data plane.

Subjects:
- `animus.events.<stream_type>.<event_type>`: every committed event, in order
  (`Nats-Msg-Id` = event id).
- `animus.launch.<executor>`: one launch per dispatched run attempt.
- `animus.control.cancel.<executor>`: cancel requests.
- `animus.report.<run_id>`: what the executor observed (`Nats-Msg-Id` =
  report id).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.runs import ArtifactInfo, FailureReason, RunPlan

EVENTS_STREAM = "ANIMUS_EVENTS"
LAUNCH_STREAM = "ANIMUS_LAUNCH"
CONTROL_STREAM = "ANIMUS_CONTROL"
REPORT_STREAM = "ANIMUS_REPORTS"


def event_subject(stream_type: str, event_type: str) -> str:
    return f"animus.events.{stream_type}.{event_type}"


def launch_subject(executor: str) -> str:
    return f"animus.launch.{executor}"


def cancel_subject(executor: str) -> str:
    return f"animus.control.cancel.{executor}"


def report_subject(run_id: str) -> str:
    return f"animus.report.{run_id}"


class LaunchRequested(BaseModel):
    """Start one attempt of a run. Redelivery must never start a second one."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    launch_id: str
    project_id: str
    run_id: str
    attempt: int
    plan: RunPlan
    plan_hash: str


class CancelRequested(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    project_id: str
    run_id: str
    attempt: int


ReportKind = Literal[
    "started", "heartbeat", "artifact", "metrics", "succeeded", "failed", "canceled"
]
"""`heartbeat`: the workload is alive; it appends nothing, it only feeds the
coordinator's liveness watch (counted on the receiver's clock)."""


class RunReport(BaseModel):
    """One observation by the executor; `seq` orders reports of one attempt."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    report_id: str
    project_id: str
    run_id: str
    attempt: int
    seq: int = Field(ge=1)
    kind: ReportKind
    sent_at: str = Field(description="Executor clock; metadata only")
    occurred_at: str | None = Field(
        default=None,
        description="When the workload did this (its exit, from the supervisor's "
        "status file), by the executor's clock; metadata only, never used for "
        "order or liveness",
    )
    artifact: ArtifactInfo | None = None
    metrics: dict[str, float] | None = None
    exit_code: int | None = None
    reason: FailureReason | None = None
    message: str = ""
