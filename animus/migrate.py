"""Apply the alembic migrations in `schema/` as the owner role."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config

from animus.db import sqlalchemy_url
from animus.errors import ConfigurationError, StoreError

log = structlog.get_logger(__name__)


def _schema_dir() -> Path:
    spec = importlib.util.find_spec("schema")
    if spec is None or spec.origin is None:
        raise ConfigurationError("the schema package is not installed")
    return Path(spec.origin).parent


def migrate(database_url: str) -> None:
    """Bring the database to the newest revision (idempotent).

    Raises:
        StoreError: the database refused a migration or cannot be reached.
    """
    folder = _schema_dir()
    config = Config(str(folder / "alembic.ini"))
    config.set_main_option("script_location", str(folder))
    config.set_main_option("version_locations", str(folder / "versions"))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url))
    try:
        command.upgrade(config, "head")
    except Exception as exc:
        raise StoreError(f"migration failed: {type(exc).__name__}: {exc}") from exc
    log.info("migrated", revision="head")
