"""Event store figures: appends per second with the chain, and verification speed.

Run with `make bench`; prints figures, asserts only that the work was done.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
import uuid

import psycopg
import pytest

from animus.db import open_pool, with_user
from animus.eventstore import EventStore, NewEvent
from animus.migrate import migrate
from animus.verify import verify_chain
from contracts.events import ProjectCreated

VERIFY_EVENTS = int(os.environ.get("ANIMUS_BENCH_VERIFY_EVENTS", "1000000"))


def machine() -> str:
    python = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {python}"


@pytest.fixture(scope="module")
def bench_dsn(services):  # type: ignore[no-untyped-def]
    name = f"animus_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = services.database_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(dsn)
    return dsn


def _event(i: int) -> NewEvent:
    pid = f"p{i}"
    return NewEvent(
        stream_type="project",
        stream_id=f"project-{uuid.uuid4().hex}",
        project_id=pid,
        event=ProjectCreated(project_id=pid, name=f"bench {i}"),
    )


async def _writers(
    store: EventStore, *, writers: int, per_writer: int, batch: int
) -> float:
    async def writer() -> None:
        for _ in range(per_writer):
            await store.append(
                [_event(i) for i in range(batch)], metadata={"actor": "bench"}
            )

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return writers * per_writer * batch / (time.perf_counter() - started)


async def test_append_throughput(bench_dsn: str) -> None:
    pool = await open_pool(with_user(bench_dsn, "animus_app"), max_size=4)
    rows = []
    async with EventStore(pool) as store:
        for label, writers, per_writer, batch in (
            ("1 appender, 1 event/command", 1, 2000, 1),
            ("8 concurrent, 1 event/command", 8, 1000, 1),
            ("32 concurrent, 1 event/command", 32, 500, 1),
            ("8 concurrent, batches of 100", 8, 40, 100),
            ("32 concurrent, batches of 100", 32, 10, 100),
        ):
            rate = await _writers(
                store, writers=writers, per_writer=per_writer, batch=batch
            )
            rows.append((label, rate))
    await pool.close()
    print(f"\nappend throughput with the chain ({machine()}):")
    for label, rate in rows:
        print(f"  {label:<34} {rate:>9,.0f} events/s")
    assert all(rate > 0 for _, rate in rows)


async def test_verify_speed(bench_dsn: str) -> None:
    pool = await open_pool(with_user(bench_dsn, "animus_app"), max_size=4)
    async with EventStore(pool) as store:
        have = await store.head_position()
        missing = max(0, VERIFY_EVENTS - have)
        await _writers(store, writers=8, per_writer=max(1, missing // 800), batch=100)
    await pool.close()
    started = time.perf_counter()
    result = verify_chain(with_user(bench_dsn, "animus_app"))
    elapsed = time.perf_counter() - started
    print(
        f"\nchain verification: {result.events:,} events in {elapsed:.2f} s "
        f"= {result.events / elapsed:,.0f} events/s ({machine()})"
    )
    assert result.verified and result.events >= VERIFY_EVENTS - 800
