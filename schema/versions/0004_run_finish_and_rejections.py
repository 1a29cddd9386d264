"""Runs: when the workload finished beside when it was recorded, and how many
of their reports were dead-lettered.

- `finished_at`: the workload's own finish time (its exit in the executor's
  status file, by the executor's clock) when the terminal report carried
  one; otherwise the time the control plane recorded the terminal event.
- `recorded_finished_at`: always the terminal event's `recorded_at`.
- `finished_at_source`: `workload` or `recorded`, saying which one
  `finished_at` is.
- `rejected_reports`: ReportRejected events about the run.

Existing rows were folded by the old rule, so the read models are emptied
and the live projector's checkpoint (`rm`) is reset: it folds the whole log
again on its next batch, and a replay equals the live tables.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

LIVE_CHECKPOINT = "rm"
READ_MODEL_TABLES = (
    "rm.projects",
    "rm.datasets",
    "rm.dataset_versions",
    "rm.runs",
    "rm.run_metrics",
    "rm.run_artifacts",
    "rm.lineage_edges",
)


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE rm.runs
            ADD COLUMN recorded_finished_at timestamptz,
            ADD COLUMN finished_at_source   text
                CHECK (finished_at_source IN ('workload', 'recorded')),
            ADD COLUMN rejected_reports     integer NOT NULL DEFAULT 0
        """
    )
    op.execute(f"TRUNCATE {', '.join(READ_MODEL_TABLES)}")
    op.execute(
        "UPDATE projector_checkpoints SET position = 0 "
        f"WHERE name = '{LIVE_CHECKPOINT}'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE rm.runs SET finished_at = recorded_finished_at "
        "WHERE recorded_finished_at IS NOT NULL"
    )
    op.execute(
        """
        ALTER TABLE rm.runs
            DROP COLUMN recorded_finished_at,
            DROP COLUMN finished_at_source,
            DROP COLUMN rejected_reports
        """
    )
