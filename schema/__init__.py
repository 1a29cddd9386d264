"""Alembic environment and migrations: event store, chain, read models, and the
database-level immutability of events (triggers and grants)."""
