"""Evidence figures: building the Merkle tree, proofs at a million events,
checking the signed checkpoints, and what signing costs the appends.

Run with `make bench`; ANIMUS_BENCH_EVENTS sets the log size (default
1,000,000). Prints figures, asserts only that the work was done.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg_pool import AsyncConnectionPool

from animus import merkle
from animus.db import open_pool, with_user
from animus.eventstore import EventStore
from animus.evidence import tree
from animus.evidence.audit import Copy, _stored_notes, check_checkpoints
from animus.evidence.checkpointer import Checkpointer
from animus.evidence.note import parse_vkey, vkey_of
from animus.migrate import migrate
from tests.bench.test_eventstore_bench import _writers, machine

EVENTS = int(os.environ.get("ANIMUS_BENCH_EVENTS", "1000000"))
PROOFS = 2000
ORIGIN = "bench.local/log"
KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def bench_dsn(services):  # type: ignore[no-untyped-def]
    name = f"animus_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = services.database_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(dsn)
    return dsn


@pytest.fixture(scope="module")
async def pool(bench_dsn: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = await open_pool(with_user(bench_dsn, "animus_app"), max_size=8)
    async with EventStore(pool) as store:
        started = time.perf_counter()
        await _writers(store, writers=8, per_writer=max(1, EVENTS // 800), batch=100)
        took = time.perf_counter() - started
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT max(position) FROM events")
        row = await cur.fetchone()
    print(
        f"\nlog filled: {row[0] if row else 0:,} events in {took:.1f} s ({machine()})"
    )
    yield pool
    await pool.close()


def checkpointer(pool: AsyncConnectionPool, **options: object) -> Checkpointer:
    values: dict[str, object] = {
        "every_events": 1000,
        "interval_seconds": 3600.0,
        "idle_interval": 0.05,
    }
    return Checkpointer(pool, None, key=KEY, origin=ORIGIN, **(values | options))  # type: ignore[arg-type]


async def built_to(running: Checkpointer, size: int) -> None:
    while True:
        if running.built_size >= size:
            return
        await asyncio.sleep(0.05)


async def build(pool: AsyncConnectionPool, size: int) -> float:
    """Run a checkpointer until the tree holds `size` leaves; seconds taken."""
    started = time.perf_counter()
    async with checkpointer(pool) as running:
        await built_to(running, size)
    return time.perf_counter() - started


async def table_size(pool: AsyncConnectionPool) -> tuple[int, int]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*), pg_total_relation_size('merkle_nodes') FROM merkle_nodes"
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def proof_times(
    pool: AsyncConnectionPool, size: int, count: int = PROOFS
) -> tuple[float, float]:
    """p50 and p99 in ms of inclusion proofs of random leaves at `size`."""
    chooser = random.Random(1)
    took = []
    async with pool.connection() as conn:
        for _ in range(count):
            index = chooser.randrange(size)
            started = time.perf_counter()
            await tree.inclusion_proof(conn, index, size)
            took.append((time.perf_counter() - started) * 1000)
    took.sort()
    return statistics.median(took), took[int(len(took) * 0.99) - 1]


async def test_tree_build_proofs_and_checkpoint_checks(
    pool: AsyncConnectionPool, bench_dsn: str
) -> None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT max(position) FROM events")
        row = await cur.fetchone()
    size = int(row[0]) if row and row[0] else 0
    lines = [f"evidence at {size:,} events ({machine()}):"]

    # level 0 stored as well, for comparison; then wiped (as the owner)
    tree.STORED_FROM_LEVEL = 0
    try:
        built = await build(pool, size)
        rows, space = await table_size(pool)
        p50, p99 = await proof_times(pool, size, count=PROOFS // 4)
        lines.append(
            f"  with leaves stored:    build {built:6.1f} s ({size / built:,.0f} "
            f"leaves/s), {rows:,} nodes, {space / 2**20:,.0f} MiB, inclusion "
            f"proof p50 {p50:.2f} ms p99 {p99:.2f} ms"
        )
    finally:
        tree.STORED_FROM_LEVEL = 1
    with psycopg.connect(bench_dsn, autocommit=True) as owner:
        owner.execute("SET session_replication_role = replica")
        owner.execute("DELETE FROM merkle_nodes")
        owner.execute("DELETE FROM checkpoints")
        owner.execute("DELETE FROM relay_checkpoints WHERE name = 'merkle'")
        owner.execute("VACUUM FULL merkle_nodes")

    built = await build(pool, size)
    rows, space = await table_size(pool)
    p50, p99 = await proof_times(pool, size)
    lines.append(
        f"  leaves from events:    build {built:6.1f} s ({size / built:,.0f} "
        f"leaves/s), {rows:,} nodes, {space / 2**20:,.0f} MiB, inclusion "
        f"proof p50 {p50:.2f} ms p99 {p99:.2f} ms ({PROOFS} random leaves)"
    )

    chooser = random.Random(2)
    took = []
    async with pool.connection() as conn:
        for _ in range(200):
            first = chooser.randrange(1, size)
            started = time.perf_counter()
            proof = await tree.consistency_proof(conn, first, size)
            took.append((time.perf_counter() - started) * 1000)
        old, new = await tree.root(conn, first), await tree.root(conn, size)
    assert merkle.verify_consistency(first, size, old, new, proof)
    took.sort()
    lines.append(
        f"  consistency proof to {size:,}: p50 {statistics.median(took):.2f} ms, "
        f"p99 {took[197]:.2f} ms (200 random first sizes)"
    )

    vkey = parse_vkey(vkey_of(KEY.public_key(), ORIGIN))
    started = time.perf_counter()
    async with pool.connection() as conn:
        copies: list[Copy] = await _stored_notes(conn)
        report = await check_checkpoints(conn, vkey, copies)
    checked = time.perf_counter() - started
    assert report.first_break is None and report.checked == len(copies)
    lines.append(
        f"  checkpoint check of animus verify: {len(copies):,} checkpoints "
        f"(signature, chain head, root) in {checked:.2f} s"
    )
    print("\n" + "\n".join(lines))


async def caught_up(store: EventStore, running: Checkpointer) -> None:
    await built_to(running, await store.head_position())


async def test_signing_overhead_on_appends(pool: AsyncConnectionPool) -> None:
    """Append throughput with the checkpointer following (every 1,000 events)
    and without it, alternating so both see the same table sizes."""
    rows = []
    for writers, per_writer, batch in ((8, 50, 100), (32, 150, 1)):
        label = f"{writers} concurrent, {batch} event(s)/command"
        async with EventStore(pool) as store:
            alone = await _writers(
                store, writers=writers, per_writer=per_writer, batch=batch
            )
            async with checkpointer(pool, idle_interval=0.1) as running:
                await caught_up(store, running)
                followed = await _writers(
                    store, writers=writers, per_writer=per_writer, batch=batch
                )
                await caught_up(store, running)
        rows.append((label, alone, followed))
    print(f"\ncheckpoint signing overhead on appends ({machine()}):")
    for label, alone, followed in rows:
        print(
            f"  {label:<34} without {alone:>8,.0f} events/s, with the "
            f"checkpointer {followed:>8,.0f} events/s "
            f"({(followed - alone) / alone:+.0%})"
        )
    assert all(alone > 0 and followed > 0 for _, alone, followed in rows)
