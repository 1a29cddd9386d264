"""Read models: the `rm` schema folded from events, and projector checkpoints.

Every row here is derived from the event log and can be rebuilt by replay;
timestamps are the events' `recorded_at`. Foreign keys state the order the
write side guarantees (a project before its datasets, a run before its
reports), so a fold that breaks it stops instead of drifting.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APP_ROLE = "animus_app"
SCHEMA = "rm"

TABLES = (
    """
    CREATE TABLE rm.projects (
        project_id   text        PRIMARY KEY,
        name         text        NOT NULL,
        description  text        NOT NULL DEFAULT '',
        created_at   timestamptz NOT NULL,
        created_by   text,
        position     bigint      NOT NULL
    )
    """,
    """
    CREATE TABLE rm.datasets (
        project_id      text        NOT NULL REFERENCES rm.projects,
        dataset_id      text        NOT NULL,
        name            text        NOT NULL,
        description     text        NOT NULL DEFAULT '',
        created_at      timestamptz NOT NULL,
        created_by      text,
        latest_version  integer     NOT NULL DEFAULT 0,
        PRIMARY KEY (project_id, dataset_id)
    )
    """,
    """
    CREATE TABLE rm.dataset_versions (
        project_id    text        NOT NULL,
        dataset_id    text        NOT NULL,
        version       integer     NOT NULL CHECK (version > 0),
        sha256        text        NOT NULL,
        size          bigint      NOT NULL CHECK (size >= 0),
        object_key    text        NOT NULL,
        filename      text        NOT NULL DEFAULT '',
        content_type  text        NOT NULL,
        committed_at  timestamptz NOT NULL,
        committed_by  text,
        PRIMARY KEY (project_id, dataset_id, version),
        FOREIGN KEY (project_id, dataset_id) REFERENCES rm.datasets
    )
    """,
    """
    CREATE TABLE rm.runs (
        run_id            text        PRIMARY KEY,
        project_id        text        NOT NULL REFERENCES rm.projects,
        name              text        NOT NULL DEFAULT '',
        status            text        NOT NULL CHECK (status IN (
            'submitted', 'planned', 'dispatched', 'running',
            'succeeded', 'failed', 'canceled')),
        attempt           integer     NOT NULL DEFAULT 0,
        spec              jsonb       NOT NULL,
        spec_hash         text        NOT NULL,
        plan              jsonb,
        plan_hash         text,
        executor          text,
        submitted_by      text,
        submitted_at      timestamptz NOT NULL,
        started_at        timestamptz,
        finished_at       timestamptz,
        failure_reason    text,
        failure_message   text,
        cancel_requested  boolean     NOT NULL DEFAULT false,
        exit_code         integer,
        last_position     bigint      NOT NULL
    )
    """,
    "CREATE INDEX runs_project_submitted ON rm.runs (project_id, submitted_at)",
    "CREATE INDEX runs_project_status ON rm.runs (project_id, status)",
    """
    CREATE TABLE rm.run_metrics (
        run_id  text             NOT NULL REFERENCES rm.runs,
        name    text             NOT NULL,
        value   double precision NOT NULL,
        PRIMARY KEY (run_id, name)
    )
    """,
    """
    CREATE TABLE rm.run_artifacts (
        run_id      text   NOT NULL REFERENCES rm.runs,
        name        text   NOT NULL,
        sha256      text   NOT NULL,
        size        bigint NOT NULL CHECK (size >= 0),
        object_key  text   NOT NULL,
        kind        text   NOT NULL,
        PRIMARY KEY (run_id, name)
    )
    """,
    """
    CREATE TABLE rm.lineage_edges (
        project_id   text NOT NULL,
        source_kind  text NOT NULL
            CHECK (source_kind IN ('dataset_version', 'run', 'artifact')),
        source_id    text NOT NULL,
        target_kind  text NOT NULL
            CHECK (target_kind IN ('dataset_version', 'run', 'artifact')),
        target_id    text NOT NULL,
        relation     text NOT NULL CHECK (relation IN ('input_of', 'produced')),
        PRIMARY KEY (
            project_id, source_kind, source_id, target_kind, target_id, relation
        )
    )
    """,
    "CREATE INDEX lineage_edges_target "
    "ON rm.lineage_edges (project_id, target_kind, target_id)",
)


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA {SCHEMA}")
    for statement in TABLES:
        op.execute(statement)
    op.execute(
        """
        CREATE TABLE projector_checkpoints (
            name      text   PRIMARY KEY,
            position  bigint NOT NULL CHECK (position >= 0)
        )
        """
    )

    op.execute(f"REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC")
    op.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {APP_ROLE}")
    op.execute(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {SCHEMA} "
        f"TO {APP_ROLE}"
    )
    op.execute(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON projector_checkpoints TO {APP_ROLE}"
    )


def downgrade() -> None:
    op.execute("DROP TABLE projector_checkpoints")
    op.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
