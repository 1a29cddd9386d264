"""Personal data: one encryption key per data subject, for crypto-shredding.

Personal fields in events (names, emails, client addresses) are stored
sealed with their subject's key (`animus.personal`). A subject is a random
pseudonym (`subj_` + 32 hex); this table is the only link between it and a
person: `identity_digest` is a keyed digest (HMAC) of the person's stable
identity, so a sign-in finds its subject without the table holding the
identity itself. `profile` keeps the latest display name and email, sealed
with the same key, for answers that show who did something.

Erasure destroys the key: `wrapped_key`, `identity_digest` and `profile`
become NULL and `erased_at` is set, so the sealed fields in the log can no
longer be opened and the pseudonym no longer leads back to anyone, while
the log itself is never touched. The key is stored wrapped (encrypted) with
the key from settings (ANIMUS_PERSONAL_DATA_KEY, named by `kek_id`), so a
copy of this table alone opens nothing.

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
            subject          text        PRIMARY KEY
                             CHECK (subject ~ '^subj_[0-9a-f]{32}$'),
            identity_digest  bytea       UNIQUE,
            wrapped_key      bytea,
            kek_id           text        NOT NULL,
            profile          jsonb,
            created_at       timestamptz NOT NULL DEFAULT now(),
            erased_at        timestamptz,
            CHECK ((wrapped_key IS NULL) = (erased_at IS NOT NULL)),
            CHECK (erased_at IS NULL
                   OR (identity_digest IS NULL AND profile IS NULL))
        )
        """
    )
    op.execute("REVOKE ALL ON subject_keys FROM PUBLIC")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON subject_keys TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE subject_keys")
