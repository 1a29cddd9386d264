"""Runs: why their metrics.json was refused, in whole or in part.

- `metrics_error`: the `metrics_error` of the run's latest MetricsRecorded
  event; NULL when its metrics were read whole.

Events recorded before this revision carry no such field, so NULL is what a
fold of the log gives for them: the read models stay as they are.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE rm.runs ADD COLUMN metrics_error text")


def downgrade() -> None:
    op.execute("ALTER TABLE rm.runs DROP COLUMN metrics_error")
