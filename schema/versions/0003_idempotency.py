"""Idempotency keys: one row per (principal, key) for the gateway's POST routes.

A row is claimed `in_progress` by the first request and becomes `done` with
the stored status and response body; a failed request deletes its row so a
retry can run. Keys are not events: they hold no state of the platform.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

APP_ROLE = "animus_app"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE idempotency_keys (
            principal      text        NOT NULL,
            key            text        NOT NULL,
            method         text        NOT NULL,
            path           text        NOT NULL,
            fingerprint    text        NOT NULL,
            state          text        NOT NULL
                CHECK (state IN ('in_progress', 'done')),
            status_code    integer,
            response_body  bytea,
            created_at     timestamptz NOT NULL DEFAULT now(),
            completed_at   timestamptz,
            PRIMARY KEY (principal, key),
            CHECK (state = 'in_progress' OR status_code IS NOT NULL)
        )
        """
    )
    op.execute("CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at)")
    op.execute(f"REVOKE ALL ON idempotency_keys FROM PUBLIC, {APP_ROLE}")
    op.execute(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO {APP_ROLE}"
    )


def downgrade() -> None:
    op.execute("DROP TABLE idempotency_keys")
