"""The run aggregate: the run state machine and how executor reports move it.

States: submitted -> planned -> dispatched -> running -> succeeded | failed |
canceled, plus a `cancel_requested` flag. Submission appends RunSubmitted,
RunPlanned and RunDispatched in one transaction, so a run that exists is
always at least dispatched.

Precedence, applied by `decide_report` in this order (commands/NOTES.md):

1. A report whose report_id was already applied is a duplicate and ignored
   (`duplicate_report`); applied ids are part of the folded state, so a
   redelivered report never yields a second event.
2. FIRST TERMINAL WINS. Once RunSucceeded, RunFailed or RunCanceled is in the
   stream nothing more is appended for the run, whatever the report's kind
   or seq. A terminal report of another outcome is a conflict, logged and
   acknowledged (`terminal_conflict`); anything else is `run_finished`.
3. A report for an attempt other than the current one is ignored
   (`attempt_mismatch`).
4. Reports may arrive out of order. An artifact, metrics or heartbeat report
   before "started" implies the start: RunStarted is appended first, in the
   same append. A "started" after that is ignored (`already_started`). A
   terminal report from a dispatched run is applied directly.
5. A heartbeat of a running run appends nothing (`liveness_only`): liveness
   is the coordinator's watch, on the receiver's clock.
6. Cancel is a request, not a terminal state: RunCancelRequested sets the
   flag once; the executor confirms with a "canceled" report (RunCanceled).
   If "succeeded" or "failed" arrives first it wins by rule 2, and the flag
   stays recorded; a "succeeded" after the confirmation is a conflict.
   Cancelling a finished run is a conflict.
7. A running run whose reports stopped is failed with reason `lost` by the
   coordinator (`decide_lost`); a report that arrives afterwards is late by
   rule 2.
8. A poison report (unreadable, or unstorable) is dead-lettered and recorded
   as ReportRejected (`decide_rejection`), once per bus message. When it
   claims to be the terminal report of the current attempt of an open run,
   the run fails at once with reason `report_rejected`; otherwise the run
   goes on, and rule 7 bounds it if the rejected report was its last word.

Illegal transitions never raise: `decide_report` returns `Ignored(reason)`.
The order of reports on the bus never decides the outcome beyond which
terminal event was appended first; the folded stream does, so a replay gives
the same state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from animus.errors import ConflictError, NotFoundError, ValidationError
from animus.eventstore import RecordedEvent
from contracts.bus import MAX_INT32, MAX_SAFE_INTEGER, ReportKind, RunReport
from contracts.commands import CancelRun
from contracts.events import (
    ArtifactRecorded,
    DomainEvent,
    MetricsRecorded,
    RejectReason,
    ReportRejected,
    RunCanceled,
    RunCancelRequested,
    RunDispatched,
    RunFailed,
    RunPlanned,
    RunStarted,
    RunSubmitted,
    RunSucceeded,
    decode_event,
)
from contracts.runs import FailureReason, RunSpec

STREAM_TYPE = "run"

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""The contracts' StorableText rule: jsonb refuses NUL and lone surrogates."""

_MESSAGE_LIMIT = 10_000
_REASON_LIMIT = 200
_SENT_AT_LIMIT = 64


class RunStatus(StrEnum):
    """The statuses of `contracts.streams.RUN_STATUSES`, in order."""

    SUBMITTED = "submitted"
    PLANNED = "planned"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED})
_TERMINAL_KINDS: dict[str, RunStatus] = {
    "succeeded": RunStatus.SUCCEEDED,
    "failed": RunStatus.FAILED,
    "canceled": RunStatus.CANCELED,
}


class IgnoreReason(StrEnum):
    """Why a report changed nothing; logged as `report_ignored`."""

    UNKNOWN_RUN = "unknown_run"
    PROJECT_MISMATCH = "project_mismatch"
    DUPLICATE_REPORT = "duplicate_report"
    RUN_FINISHED = "run_finished"
    ATTEMPT_MISMATCH = "attempt_mismatch"
    NOT_DISPATCHED = "not_dispatched"
    ALREADY_STARTED = "already_started"
    MISSING_PAYLOAD = "missing_payload"
    UNSTORABLE_REPORT = "unstorable_report"
    TERMINAL_CONFLICT = "terminal_conflict"
    LIVENESS_ONLY = "liveness_only"
    NOT_RUNNING = "not_running"


@dataclass(frozen=True, kw_only=True)
class Applied:
    """The report was turned into events; `position` is the last one's."""

    event_types: tuple[str, ...]
    position: int


@dataclass(frozen=True, kw_only=True)
class Ignored:
    """The report changed nothing, for `reason`."""

    reason: IgnoreReason


Outcome = Applied | Ignored


@dataclass(frozen=True, kw_only=True)
class RunState:
    """What the write side knows about one run, folded from its stream."""

    run_id: str
    version: int = 0
    project_id: str | None = None
    status: RunStatus | None = None
    attempt: int = 0
    executor: str | None = None
    spec_hash: str | None = None
    plan_hash: str | None = None
    cancel_requested: bool = False
    cancel_position: int | None = None
    applied_reports: frozenset[str] = frozenset()
    rejected_messages: frozenset[str] = frozenset()

    @property
    def exists(self) -> bool:
        return self.status is not None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def fold_run(run_id: str, events: Sequence[RecordedEvent]) -> RunState:
    """Fold the run stream into its state."""
    state = RunState(run_id=run_id)
    for recorded in events:
        state = _evolve(state, recorded)
    return state


def _evolve(state: RunState, recorded: RecordedEvent) -> RunState:
    event = decode_event(recorded.type, recorded.data)
    state = replace(state, version=recorded.stream_version)
    if isinstance(event, RunCancelRequested):
        return replace(
            state, cancel_requested=True, cancel_position=recorded.position
        )
    if isinstance(event, ReportRejected):
        key = message_key(event.stream_sequence, event.sha256)
        return replace(state, rejected_messages=state.rejected_messages | {key})
    state = _remember_report(state, event)
    if state.finished:
        # Defensive: the decisions never append after a terminal event.
        return state
    return _advance(state, event)


def _remember_report(state: RunState, event: DomainEvent) -> RunState:
    report_id = getattr(event, "report_id", None)
    if report_id is None:
        return state
    return replace(state, applied_reports=state.applied_reports | {report_id})


def _advance(state: RunState, event: DomainEvent) -> RunState:
    match event:
        case RunSubmitted():
            return replace(
                state,
                project_id=event.project_id,
                status=RunStatus.SUBMITTED,
                spec_hash=event.spec_hash,
            )
        case RunPlanned():
            return replace(state, status=RunStatus.PLANNED, plan_hash=event.plan_hash)
        case RunDispatched():
            return replace(
                state,
                status=RunStatus.DISPATCHED,
                attempt=event.attempt,
                executor=event.executor,
            )
        case RunStarted() | ArtifactRecorded() | MetricsRecorded():
            return replace(state, status=RunStatus.RUNNING)
        case RunSucceeded():
            return replace(state, status=RunStatus.SUCCEEDED)
        case RunFailed():
            return replace(state, status=RunStatus.FAILED)
        case RunCanceled():
            return replace(state, status=RunStatus.CANCELED)
    return state


@dataclass(frozen=True, kw_only=True)
class ExecutorCapabilities:
    """What an executor kind can give a workload beyond a confined process."""

    injects_secrets: bool
    max_gpus: int
    runs_images: bool


EXECUTOR_CAPABILITIES: dict[str, ExecutorCapabilities] = {
    "local": ExecutorCapabilities(
        injects_secrets=False, max_gpus=0, runs_images=False
    ),
}
"""By the executor a plan names (`RunPlan.executor`, the launch subject)."""


def check_executor_supports(spec: RunSpec) -> None:
    """Refuse a spec that its executor would fail at launch or silently ignore.

    Raises:
        ValidationError: the executor cannot run the spec's image, inject
            its secrets or give it the GPUs it asks for.
    """
    capabilities = EXECUTOR_CAPABILITIES.get(spec.executor)
    if capabilities is None:
        return
    if spec.image is not None and not capabilities.runs_images:
        # the plan would name an image the workload never ran in
        raise ValidationError(
            f"the {spec.executor} executor runs the command in its sandbox on "
            "this machine, not in a container image; submit it without image",
            field="image",
        )
    if spec.secret_refs and not capabilities.injects_secrets:
        raise ValidationError(
            f"the {spec.executor} executor cannot inject secrets, so the run "
            "would fail at launch; submit it without secret_refs",
            field="secret_refs",
        )
    gpus, most = spec.resources.gpus, capabilities.max_gpus
    if gpus > most:
        available = "no GPUs" if most == 0 else f"at most {most} GPUs"
        raise ValidationError(
            f"the {spec.executor} executor gives a workload {available}, not "
            f"the {gpus} asked for in resources.gpus, which would be ignored",
            field="resources.gpus",
        )


def decide_cancel(state: RunState, cmd: CancelRun) -> list[DomainEvent]:
    """Record a cancel request once; a repeated request appends nothing.

    Raises:
        NotFoundError: the run does not exist.
        ConflictError: the run already finished.
    """
    if not state.exists or state.project_id is None:
        raise NotFoundError(f"run {state.run_id} does not exist")
    if state.finished:
        raise ConflictError("run already finished")
    if state.cancel_requested:
        return []
    return [
        RunCancelRequested(
            project_id=state.project_id,
            run_id=state.run_id,
            attempt=max(state.attempt, 1),
            reason=cmd.reason,
        )
    ]


def decide_report(state: RunState, report: RunReport) -> list[DomainEvent] | Ignored:
    """Turn one executor report into events, or say why it changes nothing."""
    reason = _check_report(state, report)
    if reason is not None:
        return Ignored(reason=reason)
    return _events_for(state, report)


def _check_report(state: RunState, report: RunReport) -> IgnoreReason | None:
    if not state.exists:
        return IgnoreReason.UNKNOWN_RUN
    if report.project_id != state.project_id:
        return IgnoreReason.PROJECT_MISMATCH
    if report.report_id in state.applied_reports:
        return IgnoreReason.DUPLICATE_REPORT
    if state.finished:
        return _late_reason(state, report)
    if report.attempt != state.attempt:
        return IgnoreReason.ATTEMPT_MISMATCH
    return _check_transition(state, report)


def _late_reason(state: RunState, report: RunReport) -> IgnoreReason:
    """A report after the terminal event: a conflict when it says otherwise."""
    outcome = _TERMINAL_KINDS.get(report.kind)
    if outcome is not None and outcome is not state.status:
        return IgnoreReason.TERMINAL_CONFLICT
    return IgnoreReason.RUN_FINISHED


def _check_transition(state: RunState, report: RunReport) -> IgnoreReason | None:
    if state.status not in (RunStatus.DISPATCHED, RunStatus.RUNNING):
        return IgnoreReason.NOT_DISPATCHED
    if report.kind == "started" and state.status is RunStatus.RUNNING:
        return IgnoreReason.ALREADY_STARTED
    if report.kind == "heartbeat" and state.status is RunStatus.RUNNING:
        return IgnoreReason.LIVENESS_ONLY
    if report.kind == "artifact" and report.artifact is None:
        return IgnoreReason.MISSING_PAYLOAD
    if report.kind == "metrics" and report.metrics is None:
        return IgnoreReason.MISSING_PAYLOAD
    return None


def screen_report(report: RunReport) -> Ignored | None:
    """Refuse a report whose ids or payload the event store cannot keep.

    Free text (message, sent_at) is made storable instead, so a terminal
    report with a NUL in its log tail still finishes the run.
    """
    texts = [report.report_id, report.project_id, report.run_id]
    if report.artifact is not None:
        texts += [report.artifact.name, report.artifact.object_key]
    metrics = report.metrics or {}
    texts += list(metrics)
    if any(_UNSTORABLE.search(text) for text in texts):
        return Ignored(reason=IgnoreReason.UNSTORABLE_REPORT)
    if not all(math.isfinite(value) for value in metrics.values()):
        return Ignored(reason=IgnoreReason.UNSTORABLE_REPORT)
    if report.artifact is not None and report.artifact.size > MAX_SAFE_INTEGER:
        return Ignored(reason=IgnoreReason.UNSTORABLE_REPORT)
    return None


def storable_text(value: str, limit: int) -> str:
    """Replace NUL and lone surrogates with U+FFFD and cut to `limit`."""
    return _UNSTORABLE.sub("\ufffd", value)[:limit]


def _events_for(state: RunState, report: RunReport) -> list[DomainEvent]:
    common: dict[str, object] = {
        "project_id": report.project_id,
        "run_id": report.run_id,
        "attempt": report.attempt,
        "report_id": report.report_id,
    }
    if report.kind == "started":
        sent_at = storable_text(report.sent_at, _SENT_AT_LIMIT)
        return [RunStarted.model_validate({**common, "executor_time": sent_at})]
    if report.kind == "artifact":
        artifact = {**common, "artifact": report.artifact}
        recorded = ArtifactRecorded.model_validate(artifact)
        return [*_implied_start(state, common), recorded]
    if report.kind == "metrics":
        error = storable_text(report.message, _MESSAGE_LIMIT) or None
        metrics = {**common, "metrics": report.metrics, "metrics_error": error}
        return [*_implied_start(state, common), MetricsRecorded.model_validate(metrics)]
    if report.kind == "heartbeat":
        return _implied_start(state, common)
    return [_terminal_event(report, common)]


def _implied_start(state: RunState, common: dict[str, object]) -> list[DomainEvent]:
    """An artifact or metrics report before "started" implies the start."""
    if state.status is RunStatus.RUNNING:
        return []
    return [RunStarted.model_validate(common)]


def _terminal_event(report: RunReport, common: dict[str, object]) -> DomainEvent:
    if report.kind == "succeeded":
        exit_code = report.exit_code or 0
        return RunSucceeded.model_validate({**common, "exit_code": exit_code})
    if report.kind == "canceled":
        reason = storable_text(report.message, _REASON_LIMIT) or "canceled"
        return RunCanceled.model_validate({**common, "reason": reason})
    return RunFailed.model_validate(
        {
            **common,
            "reason": _failure_reason(report),
            "message": storable_text(report.message, _MESSAGE_LIMIT),
            "exit_code": report.exit_code,
        }
    )


def decide_lost(state: RunState, *, silent_for: float) -> list[DomainEvent] | Ignored:
    """Fail a running run that nothing was heard from for `silent_for` seconds.

    `silent_for` is measured on the coordinator's clock from the arrival of
    the run's last report; the executor's timestamps play no part.
    """
    if not state.exists or state.project_id is None:
        return Ignored(reason=IgnoreReason.UNKNOWN_RUN)
    if state.finished:
        return Ignored(reason=IgnoreReason.RUN_FINISHED)
    if state.status is not RunStatus.RUNNING:
        return Ignored(reason=IgnoreReason.NOT_RUNNING)
    message = (
        f"no report from the executor for {math.floor(silent_for)} s "
        "(heartbeats stopped); the workload is presumed gone"
    )
    return [
        RunFailed(
            project_id=state.project_id,
            run_id=state.run_id,
            attempt=state.attempt,
            reason="lost",
            message=message,
        )
    ]


def message_key(stream_sequence: int, sha256: str) -> str:
    """What identifies one bus message across its redeliveries."""
    return f"{stream_sequence}:{sha256}"


@dataclass(frozen=True, kw_only=True)
class Rejection:
    """A poison report: what is known of the bus message, never its bytes.

    `run_id` is the run its subject names; `claimed_*` is what the payload
    says of itself, where it could be read at all.
    """

    reason: RejectReason
    detail: str
    subject: str
    stream_sequence: int
    sha256: str
    size: int
    dead_letter_subject: str
    run_id: str | None = None
    claimed_run_id: str | None = None
    claimed_kind: ReportKind | None = None
    claimed_attempt: int | None = None

    @property
    def key(self) -> str:
        return message_key(self.stream_sequence, self.sha256)

    def event(self, *, project_id: str | None, run_id: str | None) -> ReportRejected:
        """The event recording this rejection (free text made storable)."""
        return ReportRejected(
            project_id=project_id,
            run_id=run_id,
            reason=self.reason,
            detail=storable_text(self.detail, _REASON_LIMIT),
            subject=storable_text(self.subject, _REASON_LIMIT),
            stream_sequence=self.stream_sequence,
            sha256=self.sha256,
            size=self.size,
            dead_letter_subject=storable_text(self.dead_letter_subject, _REASON_LIMIT),
            claimed_kind=self.claimed_kind,
            claimed_attempt=self.claimed_attempt,
        )


def decide_rejection(
    state: RunState, rejection: Rejection
) -> list[DomainEvent] | Ignored:
    """Record a poison report on an open run; end the run if it was its end.

    A message already recorded (a redelivery) appends nothing. The run fails
    with reason `report_rejected` only when the payload claims to be the
    terminal report of the run's current attempt (rule 8); its content is
    never trusted beyond that.
    """
    if not state.exists or state.project_id is None:
        return Ignored(reason=IgnoreReason.UNKNOWN_RUN)
    if rejection.key in state.rejected_messages:
        return Ignored(reason=IgnoreReason.DUPLICATE_REPORT)
    if state.finished:
        return Ignored(reason=IgnoreReason.RUN_FINISHED)
    recorded = rejection.event(project_id=state.project_id, run_id=state.run_id)
    if not _ends_the_run(state, rejection):
        return [recorded]
    message = (
        f"the executor's {rejection.claimed_kind} report could not be "
        f"{'read' if rejection.reason == 'invalid_report' else 'stored'} "
        f"({rejection.reason}); it was dead-lettered to "
        f"{recorded.dead_letter_subject} (sha256 {rejection.sha256})"
    )
    failed = RunFailed(
        project_id=state.project_id,
        run_id=state.run_id,
        attempt=state.attempt,
        reason="report_rejected",
        message=storable_text(message, _MESSAGE_LIMIT),
    )
    return [recorded, failed]


def _ends_the_run(state: RunState, rejection: Rejection) -> bool:
    return (
        rejection.claimed_kind in _TERMINAL_KINDS
        and rejection.claimed_attempt == state.attempt
        and rejection.claimed_run_id in (None, state.run_id)
        and state.status in (RunStatus.DISPATCHED, RunStatus.RUNNING)
    )


def claimed_attempt(value: object) -> int | None:
    """An attempt number as a payload claims it, if it is a plausible one."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 <= value <= MAX_INT32 else None


def _failure_reason(report: RunReport) -> FailureReason:
    if report.reason is not None:
        return report.reason
    if report.exit_code not in (None, 0):
        return "nonzero_exit"
    return "internal_error"
