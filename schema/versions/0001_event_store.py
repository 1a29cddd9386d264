"""Event store: the events table, its immutability, and the application role.

`canonical` holds the exact RFC 8785 text that is hashed; `data` and
`metadata` are generated from it, so the queryable payload cannot drift from
the hashed one without a schema change that `animus verify` detects.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APP_ROLE = "animus_app"


def upgrade() -> None:
    op.execute(
        f"""
        DO $$ BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
            CREATE ROLE {APP_ROLE} LOGIN;
          END IF;
        END $$;
        """
    )
    op.execute(
        """
        CREATE TABLE events (
            position        bigint      PRIMARY KEY CHECK (position > 0),
            event_id        uuid        NOT NULL UNIQUE,
            stream_type     text        NOT NULL,
            stream_id       text        NOT NULL,
            stream_version  integer     NOT NULL CHECK (stream_version > 0),
            project_id      text,
            type            text        NOT NULL,
            schema_version  integer     NOT NULL,
            recorded_at     timestamptz NOT NULL,
            canonical       text        NOT NULL,
            data            jsonb       NOT NULL
                GENERATED ALWAYS AS ((canonical::jsonb) -> 'data') STORED,
            metadata        jsonb       NOT NULL
                GENERATED ALWAYS AS ((canonical::jsonb) -> 'metadata') STORED,
            prev_hash       bytea       NOT NULL CHECK (length(prev_hash) = 32),
            hash            bytea       NOT NULL CHECK (length(hash) = 32),
            UNIQUE (stream_id, stream_version)
        )
        """
    )
    op.execute("CREATE INDEX events_project_position ON events (project_id, position)")
    op.execute(
        """
        CREATE FUNCTION events_refuse_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION 'events are immutable: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events "
        "FOR EACH ROW EXECUTE FUNCTION events_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change()"
    )
    op.execute(
        """
        CREATE TABLE relay_checkpoints (
            name      text   PRIMARY KEY,
            position  bigint NOT NULL
        )
        """
    )
    op.execute(f"REVOKE ALL ON events FROM PUBLIC, {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON events TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON relay_checkpoints TO {APP_ROLE}")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")


def downgrade() -> None:
    raise RuntimeError("the event store is never downgraded")
