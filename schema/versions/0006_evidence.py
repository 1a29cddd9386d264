"""Evidence: the Merkle tree's stored nodes and the signed checkpoints.

- `merkle_nodes`: the hash of every complete subtree of the RFC 9162 tree
  over the event order; (level, idx) covers leaves [idx * 2^level,
  (idx + 1) * 2^level). Derived data, rebuilt from `events` at will: a
  wrong node yields a proof that fails against the signed tree head, never
  a proof that passes. How far it is built is `relay_checkpoints` row
  `merkle`.
- `checkpoints`: every signed tree head, as published (the signed note).
  Append-only like the events: the app role may only read and insert, and
  triggers refuse UPDATE, DELETE and TRUNCATE.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

APP_ROLE = "animus_app"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE merkle_nodes (
            level  smallint NOT NULL CHECK (level BETWEEN 0 AND 62),
            idx    bigint   NOT NULL CHECK (idx >= 0),
            hash   bytea    NOT NULL CHECK (length(hash) = 32),
            PRIMARY KEY (level, idx)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE checkpoints (
            tree_size   bigint      PRIMARY KEY CHECK (tree_size > 0),
            root_hash   bytea       NOT NULL CHECK (length(root_hash) = 32),
            chain_head  bytea       NOT NULL CHECK (length(chain_head) = 32),
            key_id      text        NOT NULL,
            signed_at   timestamptz NOT NULL,
            note        text        NOT NULL
        )
        """
    )
    op.execute(
        "CREATE TRIGGER checkpoints_no_update_delete BEFORE UPDATE OR DELETE "
        "ON checkpoints FOR EACH ROW EXECUTE FUNCTION events_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints "
        "FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change()"
    )
    op.execute("REVOKE ALL ON merkle_nodes, checkpoints FROM PUBLIC")
    op.execute(f"GRANT SELECT, INSERT ON merkle_nodes, checkpoints TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE checkpoints")
    op.execute("DROP TABLE merkle_nodes")
