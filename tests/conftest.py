"""The backing services every integration test talks to.

`services` starts real PostgreSQL, NATS JetStream and S3 from the wheels named
in DESIGN.md, once per test session, in a temporary folder. A service given in
the environment is used instead of its embedded twin:

- ``ANIMUS_TEST_DATABASE_URL``: a superuser DSN (tests create databases);
- ``ANIMUS_TEST_NATS_URL``: a NATS server with JetStream;
- ``ANIMUS_TEST_S3_ENDPOINT`` with ``ANIMUS_TEST_S3_ACCESS_KEY`` and
  ``ANIMUS_TEST_S3_SECRET_KEY``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from animus.embedded import ServiceName
from animus.migrate import migrate

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, kw_only=True)
class Services:
    """Where the test session's backing services listen."""

    database_url: str  # a superuser DSN
    nats_url: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str

    def settings_env(self, database_url: str) -> dict[str, str]:
        """`ANIMUS_*` variables pointing a process at these services."""
        return {
            "ANIMUS_DATABASE_URL": database_url,
            "ANIMUS_NATS_URL": self.nats_url,
            "ANIMUS_S3_ENDPOINT": self.s3_endpoint,
            "ANIMUS_S3_ACCESS_KEY": self.s3_access_key,
            "ANIMUS_S3_SECRET_KEY": self.s3_secret_key,
        }


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """Real PostgreSQL, NATS and S3 for the whole session."""
    from animus.embedded import EmbeddedStack

    env = os.environ
    given = {
        "postgres": env.get("ANIMUS_TEST_DATABASE_URL"),
        "nats": env.get("ANIMUS_TEST_NATS_URL"),
        "s3": env.get("ANIMUS_TEST_S3_ENDPOINT"),
    }
    wanted: list[ServiceName] = [name for name, url in given.items() if not url]  # type: ignore[misc]
    stack = None
    if wanted:
        # a short path: PostgreSQL's socket path has a length limit
        root = Path(tmp_path_factory.mktemp("stack", numbered=True))
        stack = EmbeddedStack(root, services=wanted)
        stack.start()
    try:
        yield Services(
            database_url=given["postgres"] or stack.postgres.dsn,  # type: ignore[union-attr]
            nats_url=given["nats"] or stack.nats.url,  # type: ignore[union-attr]
            s3_endpoint=given["s3"] or stack.s3.endpoint,  # type: ignore[union-attr]
            s3_access_key=(
                env.get("ANIMUS_TEST_S3_ACCESS_KEY", "")
                if given["s3"]
                else stack.s3.access_key  # type: ignore[union-attr]
            ),
            s3_secret_key=(
                env.get("ANIMUS_TEST_S3_SECRET_KEY", "")
                if given["s3"]
                else stack.s3.secret_key  # type: ignore[union-attr]
            ),
        )
    finally:
        if stack is not None:
            stack.stop()


def with_database(dsn: str, name: str) -> str:
    """The same server, another database."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
def fresh_database(services: Services) -> Iterator[str]:
    """A new database migrated to head, dropped after the module; its owner DSN."""
    name = f"animus_t_{secrets.token_hex(4)}"
    with psycopg.connect(services.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = with_database(services.database_url, name)
    migrate(dsn)
    yield dsn
    with psycopg.connect(services.database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )


@pytest.fixture(autouse=True)
def _structlog_config_kept() -> Iterator[None]:
    """Give each test the logging configuration it found.

    A test that runs `animus.cli.main` in-process configures logging for
    the whole process (an operator tool keeps only warnings), which would
    silence the log lines later tests capture.
    """
    import structlog

    kept = structlog.get_config()
    yield
    structlog.configure(**kept)
