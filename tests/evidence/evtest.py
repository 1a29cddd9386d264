"""Helpers shared by the evidence tests: events to fill a log, and the leaf
hashes of what is stored, computed the reference way (animus/merkle.py)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection, sql

from animus import merkle
from animus.eventstore import EventStore, NewEvent
from animus.migrate import migrate
from contracts.events import ProjectCreated
from tests.conftest import with_database

if TYPE_CHECKING:
    from tests.conftest import Services


def project_events(count: int) -> list[NewEvent]:
    events = []
    for _ in range(count):
        project_id = f"p{uuid.uuid4().hex[:12]}"
        events.append(
            NewEvent(
                stream_type="project",
                stream_id=f"project-{project_id}",
                project_id=project_id,
                event=ProjectCreated(project_id=project_id, name=project_id),
            )
        )
    return events


async def fill(store: EventStore, count: int, *, batch: int = 100) -> None:
    """Append `count` events in commands of up to `batch` events."""
    while count > 0:
        await store.append(project_events(min(batch, count)))
        count -= batch


async def stored_leaves(conn: AsyncConnection[Any]) -> list[bytes]:
    """Every event's leaf hash, in position order, from its canonical text."""
    cur = await conn.execute("SELECT textsend(canonical) FROM events ORDER BY position")
    return [merkle.leaf_hash(bytes(row[0])) for row in await cur.fetchall()]


@asynccontextmanager
async def new_database(services: Services) -> AsyncIterator[str]:
    """A new database migrated to head for one test; its owner DSN."""
    name = f"animus_t_{secrets.token_hex(4)}"
    async with await AsyncConnection.connect(
        services.database_url, autocommit=True
    ) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = with_database(services.database_url, name)
    await asyncio.to_thread(migrate, dsn)
    try:
        yield dsn
    finally:
        async with await AsyncConnection.connect(
            services.database_url, autocommit=True
        ) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )
