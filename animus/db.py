"""PostgreSQL connections: pools, DSN helpers, and the one place where
psycopg errors become ours."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import AsyncConnectionPool

from animus.errors import StoreError, StreamVersionConflict, TransientStoreError
from animus.settings import APP_ROLE, Settings


def with_user(dsn: str, user: str) -> str:
    """Return `dsn` connecting as `user` (no password)."""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def app_dsn(settings: Settings) -> str:
    """The DSN of the INSERT/SELECT-only application role.

    Raises:
        StoreError: no database is set and no `animus up` runs here.
    """
    if settings.app_database_url:
        return settings.app_database_url
    return with_user(owner_dsn(settings), APP_ROLE)


def owner_dsn(settings: Settings) -> str:
    """The DSN of the owner role (migrations, replay).

    Raises:
        StoreError: no database is set and no `animus up` runs here.
    """
    if not settings.database_url:
        # commands find a running `animus up` through ANIMUS_HOME (./.animus)
        raise StoreError(
            f"no database: no `animus up` runs under {settings.home.resolve()}; "
            "start one, run this in the folder where it runs (or set ANIMUS_HOME "
            "to that folder's .animus), or set ANIMUS_DATABASE_URL"
        )
    return settings.database_url


def sqlalchemy_url(dsn: str) -> str:
    scheme, rest = dsn.split("://", 1)
    return f"postgresql+psycopg://{rest}" if scheme.startswith("postgres") else dsn


async def open_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, name: str = "animus"
) -> AsyncConnectionPool:
    """Open a pool and wait until one connection works."""
    pool = AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        open=False,
        name=name,
        kwargs={"autocommit": True},
    )
    with translate_db_errors():
        await pool.open(wait=True, timeout=30)
    return pool


_TRANSIENT = (
    psycopg.OperationalError,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.AdminShutdown,
)


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """Turn driver errors into the platform's error tree."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise StreamVersionConflict("a concurrent write won the race") from exc
    except _TRANSIENT as exc:
        raise TransientStoreError("database temporarily unavailable") from exc
    except psycopg.Error as exc:
        raise StoreError(f"database error ({type(exc).__name__})") from exc
    except TimeoutError as exc:
        raise TransientStoreError("database connection timed out") from exc
