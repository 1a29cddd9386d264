"""Stream naming: one resource, one stream, one spelling everywhere."""

from __future__ import annotations


def project_stream(project_id: str) -> str:
    return f"project-{project_id}"


def dataset_stream(project_id: str, dataset_id: str) -> str:
    return f"dataset-{project_id}-{dataset_id}"


def run_stream(run_id: str) -> str:
    return f"run-{run_id}"


SUBJECT_STREAM_TYPE = "subject"


def subject_stream(subject: str) -> str:
    """The stream of a data subject's erasure (`subject-subj_...`)."""
    return f"subject-{subject}"


COORDINATOR_STREAM_TYPE = "coordinator"
REJECTED_REPORTS_STREAM = "coordinator-rejected-reports"
"""The stream of report rejections that belong to no open run: the run is
unknown, or it already ended (nothing is appended to a run after its
terminal event)."""


RUN_STATUSES = (
    "submitted",
    "planned",
    "dispatched",
    "running",
    "succeeded",
    "failed",
    "canceled",
)
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
