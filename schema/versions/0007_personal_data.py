"""Personal data: one encryption key per data subject, for crypto-shredding.

Personal fields in events (names, emails, client addresses) are stored
sealed with their subject's key. Erasure destroys the key: the row keeps
the subject and when it was erased, `wrapped_key` becomes NULL, and the
sealed fields in the log can no longer be opened, while the log itself is
never touched. The key is stored wrapped (encrypted) with the key from
settings, so a copy of this table alone opens nothing.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

APP_ROLE = "animus_app"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE subject_keys (
            subject      text        PRIMARY KEY,
            wrapped_key  bytea,
            created_at   timestamptz NOT NULL DEFAULT now(),
            erased_at    timestamptz,
            CHECK ((wrapped_key IS NULL) = (erased_at IS NOT NULL))
        )
        """
    )
    op.execute("REVOKE ALL ON subject_keys FROM PUBLIC")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON subject_keys TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE subject_keys")
