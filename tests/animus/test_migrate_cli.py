"""`animus migrate` run alone, as compose and Helm run it: it builds the
event store on an empty database, is idempotent, and leaves the
application role unable to change events."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import psycopg
import pytest

from animus.db import with_user
from animus.settings import APP_ROLE


def migrate(dsn: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIMUS_")}
    return subprocess.run(
        [sys.executable, "-m", "animus", "migrate"],
        env={**env, "ANIMUS_DATABASE_URL": dsn, "ANIMUS_LOG_LEVEL": "warning"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrate_alone_builds_the_store_and_runs_again_harmlessly(
    services: Any,
) -> None:
    name = f"animus_m_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = services.database_url.rsplit("/", 1)[0] + f"/{name}"

    first, second = migrate(dsn), migrate(dsn)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    with psycopg.connect(dsn) as conn:
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert version is not None
    with (
        psycopg.connect(with_user(dsn, APP_ROLE), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("DELETE FROM events")
