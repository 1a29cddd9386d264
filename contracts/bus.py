"""Messages on the bus between the control plane and the data plane.

Subjects:
- `animus.events.<stream_type>.<event_type>`: every committed event, in order
  (`Nats-Msg-Id` = event id).
- `animus.launch.<executor>`: one launch per dispatched run attempt.
- `animus.control.cancel.<executor>`: cancel requests.
- `animus.report.<run_id>`: what the executor observed (`Nats-Msg-Id` =
  report id).
- `animus.deadletter.report.<run_id>`: a report the coordinator could not
  read or store (a poison message), republished byte for byte so nothing the
  executor said is lost; `Nats-Msg-Id` =
  `dead-letter:<stream>:<sequence>:<sha256>`.
  Headers: `Animus-Original-Subject`, `Animus-Original-Stream`,
  `Animus-Original-Sequence`, `Animus-Reject-Reason` and
  `Animus-Payload-Sha256`. The rejection itself is an event (`ReportRejected`)
  holding the payload's sha256 and size, never its bytes.
- `animus.evidence.checkpoint`: every signed checkpoint (`SignedCheckpoint`),
  in tree-size order, in stream `ANIMUS_EVIDENCE`, kept without a time limit
  so copies of the tree heads live outside the database
  (`Nats-Msg-Id` = `checkpoint:<origin>:<tree_size>`).
- `animus.audit.<project>.<event_type>`: every committed event as a SIEM
  record (`animus-siem/v1`, contracts/siem.md), in position order, in stream
  `ANIMUS_AUDIT` (`Nats-Msg-Id` = event id). `<project>` is the project id,
  or `_platform` for events of no project; subscribers filter with
  `animus.audit.<project>.>` or `animus.audit.*.<event_type>`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.runs import ArtifactInfo, FailureReason, RunPlan

EVENTS_STREAM = "ANIMUS_EVENTS"
LAUNCH_STREAM = "ANIMUS_LAUNCH"
CONTROL_STREAM = "ANIMUS_CONTROL"
REPORT_STREAM = "ANIMUS_REPORTS"
DEAD_LETTER_STREAM = "ANIMUS_DEADLETTER"
EVIDENCE_STREAM = "ANIMUS_EVIDENCE"
AUDIT_STREAM = "ANIMUS_AUDIT"
AUDIT_PREFIX = "animus.audit."
PLATFORM_TOKEN = "_platform"
"""The project token of events that belong to no project."""
CHECKPOINT_SUBJECT = "animus.evidence.checkpoint"

DEAD_LETTER_PREFIX = "animus.deadletter."
DEAD_LETTER_HEADERS = (
    "Animus-Original-Subject",
    "Animus-Original-Stream",
    "Animus-Original-Sequence",
    "Animus-Reject-Reason",
    "Animus-Payload-Sha256",
)
"""Headers of a dead-lettered message, in this order."""

MAX_INT32 = 2**31 - 1
MAX_SAFE_INTEGER = 2**53 - 1
"""The largest integer RFC 8785 (the chain's canonical form) represents exactly."""


def event_subject(stream_type: str, event_type: str) -> str:
    return f"animus.events.{stream_type}.{event_type}"


def subject_token(value: str) -> str:
    """`value` as one subject token: `%XX` for each byte that is not an ASCII
    letter, digit, `_` or `-` (a `.`, `*`, `>`, space or `%` would split the
    token, act as a wildcard or collide); `%` alone for the empty string."""
    if _PLAIN_TOKEN.fullmatch(value):
        return value  # the usual case, and the per-record cost of the SIEM stream
    return "".join(_token_char(c) for c in value) or "%"


_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def _token_char(char: str) -> str:
    if char.isascii() and (char.isalnum() or char in "_-"):
        return char
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))


def audit_subject(project_id: str | None, event_type: str) -> str:
    """`animus.audit.<project>.<event_type>`; `_platform` for no project."""
    project = PLATFORM_TOKEN if project_id is None else subject_token(project_id)
    return f"{AUDIT_PREFIX}{project}.{subject_token(event_type)}"


def audit_filter(project_id: str | None = None, event_type: str | None = None) -> str:
    """The subject filter of a subscriber to one project and/or event type.

    `project_id` may be `_platform` for the events of no project.
    """
    project = "*" if project_id is None else subject_token(project_id)
    kind = "*" if event_type is None else subject_token(event_type)
    return f"{AUDIT_PREFIX}{project}.{kind}"


def launch_subject(executor: str) -> str:
    return f"animus.launch.{executor}"


def cancel_subject(executor: str) -> str:
    return f"animus.control.cancel.{executor}"


def report_subject(run_id: str) -> str:
    return f"animus.report.{run_id}"


def dead_letter_subject(subject: str) -> str:
    """Where a poison message of `subject` is kept:
    `animus.report.<run_id>` -> `animus.deadletter.report.<run_id>`."""
    return DEAD_LETTER_PREFIX + subject.removeprefix("animus.")


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
    """One observation by the executor; `seq` orders reports of one attempt.

    Integers are bounded so that every value fits the chain's canonical form
    and the read models' columns; a report outside the bounds does not parse
    and is dead-lettered like any other poison message.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    report_id: str
    project_id: str
    run_id: str
    attempt: int = Field(ge=1, le=MAX_INT32)
    seq: int = Field(ge=1, le=MAX_SAFE_INTEGER)
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
    exit_code: int | None = Field(default=None, ge=-MAX_INT32 - 1, le=MAX_INT32)
    reason: FailureReason | None = None
    message: str = Field(
        default="",
        description="Free text: a failure's log tail; on a metrics report, why "
        "metrics.json was refused in whole or in part",
    )


class SignedCheckpoint(BaseModel):
    """A signed tree head, as the bus carries it and the API serves it.

    `note` is the C2SP signed note (tlog-checkpoint); the other fields repeat
    what it says, for readers that do not parse notes. Only the note is
    signed: a verifier checks it and trusts nothing else here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tree_size: int = Field(ge=1, description="the tree covers positions 1..tree_size")
    root_hash: str = Field(description="RFC 9162 tree head, 64 hex")
    chain_head: str = Field(description="hash of event tree_size, 64 hex")
    key_id: str = Field(description="8-hex key hash of the signing key")
    origin: str = Field(description="the log's name; the signing key's name")
    signed_at: str = Field(description="RFC 3339 UTC time of signing")
    note: str = Field(description="the signed note text")
