"""Snapshots for reads `as_of` a past position: a narrow path for the app role.

The gateway (application role) answers `?as_of=P` from a schema
`rm_asof_<P>` holding the read models folded up to P. The app role may not
create schemas; instead it may call two SECURITY DEFINER functions owned by
the owner role, which can do only this:

- `animus_asof_create(P)` creates `rm_asof_<P>` with an empty copy of every
  `rm` table (LIKE ... INCLUDING ALL) and lets the app role read and fill it.
- `animus_asof_seal(P)` takes INSERT and UPDATE back: a built snapshot is
  read-only for the app role.
- `animus_asof_drop(P)` drops `rm_asof_<P>` and forgets it.

The schema name is built from a bigint, so no caller text reaches SQL.
`asof_snapshots` lists the built snapshots with their last use, for the
least-recently-used eviction (projections/asof.py).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

APP_ROLE = "animus_app"

FUNCTIONS = (
    f"""
    CREATE FUNCTION animus_asof_create(p bigint) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DECLARE
      s text;
      t text;
    BEGIN
      IF p IS NULL OR p < 1 THEN
        RAISE EXCEPTION 'as_of position must be positive' USING ERRCODE = '22023';
      END IF;
      s := 'rm_asof_' || p;
      EXECUTE format('CREATE SCHEMA %I', s);
      EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', s);
      FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'rm' LOOP
        EXECUTE format('CREATE TABLE %I.%I (LIKE rm.%I INCLUDING ALL)', s, t, t);
      END LOOP;
      EXECUTE format('GRANT USAGE ON SCHEMA %I TO {APP_ROLE}', s);
      EXECUTE format(
        'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA %I TO {APP_ROLE}', s);
      RETURN s;
    END $$
    """,
    f"""
    CREATE FUNCTION animus_asof_seal(p bigint) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
      EXECUTE format(
        'REVOKE INSERT, UPDATE ON ALL TABLES IN SCHEMA %I FROM {APP_ROLE}',
        'rm_asof_' || p);
    END $$
    """,
    """
    CREATE FUNCTION animus_asof_drop(p bigint) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
      EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', 'rm_asof_' || p);
      DELETE FROM public.asof_snapshots WHERE position = p;
    END $$
    """,
)
SIGNATURES = (
    "animus_asof_create(bigint)",
    "animus_asof_seal(bigint)",
    "animus_asof_drop(bigint)",
)


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE asof_snapshots (
            position      bigint      PRIMARY KEY CHECK (position > 0),
            events        bigint      NOT NULL,
            built_at      timestamptz NOT NULL DEFAULT now(),
            last_used_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("REVOKE ALL ON asof_snapshots FROM PUBLIC")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON asof_snapshots TO {APP_ROLE}")
    for statement in FUNCTIONS:
        op.execute(statement)
    for signature in SIGNATURES:
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {APP_ROLE}")


def downgrade() -> None:
    op.execute(
        "DO $$ DECLARE s text; BEGIN FOR s IN SELECT nspname FROM pg_namespace "
        "WHERE nspname LIKE 'rm\\_asof\\_%' LOOP "
        "EXECUTE format('DROP SCHEMA %I CASCADE', s); END LOOP; END $$"
    )
    for signature in SIGNATURES:
        op.execute(f"DROP FUNCTION {signature}")
    op.execute("DROP TABLE asof_snapshots")
