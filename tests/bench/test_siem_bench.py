"""SIEM stream figures: HTTP NDJSON export throughput from a real gateway
process, and the JetStream publish rate of the audit publisher.

ANIMUS_BENCH_EVENTS events (default 100,000) are appended first, in
batches of 1,000. Run with `make bench`; prints figures, asserts only that
every record arrived.
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from animus.bus import connect_bus
from animus.db import open_pool, with_user
from animus.embedded import free_port
from animus.eventstore import EventStore, NewEvent
from animus.migrate import migrate
from animus.settings import APP_ROLE
from animus.siem.stream import AuditPublisher
from contracts.bus import AUDIT_STREAM
from contracts.events import ProjectCreated

EVENTS = int(os.environ.get("ANIMUS_BENCH_EVENTS", "100000"))
TOKEN = "bench-token"


def machine() -> str:
    python = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {python}"


@pytest.fixture(scope="module")
def bench_db(services):  # type: ignore[no-untyped-def]
    name = f"animus_siem_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = services.database_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(dsn)
    asyncio.run(_fill(dsn, EVENTS))
    return dsn


async def _fill(dsn: str, count: int) -> None:
    pool = await open_pool(with_user(dsn, APP_ROLE), max_size=4, name="bench")
    try:
        async with EventStore(pool) as store:
            for start in range(0, count, 1000):
                await store.append(
                    [
                        NewEvent(
                            stream_type="project",
                            stream_id=f"project-p{i}",
                            project_id=f"p{i % 100}",
                            event=ProjectCreated(project_id=f"p{i}", name=f"p {i}"),
                        )
                        for i in range(start, min(start + 1000, count))
                    ],
                    metadata={"actor": "bench"},
                )
    finally:
        await pool.close()


@pytest.fixture(scope="module")
def gateway(services, bench_db: str, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    home = Path(tmp_path_factory.mktemp("siem-bench"))
    env = {
        **os.environ,
        **services.settings_env(bench_db),
        "ANIMUS_HOME": str(home),
        "ANIMUS_GATEWAY_PORT": str(port),
        "ANIMUS_LOG_LEVEL": "warning",
        "ANIMUS_DEV_TOKENS": f'{{"{TOKEN}": "auditor"}}',
    }
    log = (home / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "animus", "gateway"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError((home / "gateway.log").read_text()[-2000:])
        time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_http_ndjson_export_throughput(gateway: str) -> None:
    records = size = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    started = time.perf_counter()
    with httpx.stream(
        "GET", f"{gateway}/audit/events", headers=headers, timeout=600
    ) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_bytes():
            size += len(chunk)
            records += chunk.count(b"\n")
    elapsed = time.perf_counter() - started
    assert records == EVENTS
    print(
        f"\nSIEM HTTP export ({machine()}): {records:,} records, "
        f"{size / 1e6:.1f} MB in {elapsed:.2f} s: {records / elapsed:,.0f} records/s, "
        f"{size / 1e6 / elapsed:.1f} MB/s"
    )


def test_jetstream_audit_publish_throughput(services, bench_db: str) -> None:  # type: ignore[no-untyped-def]
    async def publish() -> tuple[int, float]:
        pool = await open_pool(with_user(bench_db, APP_ROLE), max_size=4, name="b")
        bus = await connect_bus(services.nats_url, name="siem-bench")
        try:
            await bus.ensure_audit_stream(0)
            await bus.js.purge_stream(AUDIT_STREAM)
            publisher = AuditPublisher(bus, pool, name=f"bench-{uuid.uuid4().hex[:6]}")
            started = time.perf_counter()
            while await publisher.run_once():
                pass
            elapsed = time.perf_counter() - started
            stored = (await bus.js.stream_info(AUDIT_STREAM)).state.messages
            await bus.js.purge_stream(AUDIT_STREAM)
            return stored, elapsed
        finally:
            await bus.close()
            await pool.close()

    stored, elapsed = asyncio.run(publish())
    assert stored == EVENTS
    print(
        f"\nSIEM JetStream publish ({machine()}): {stored:,} records in "
        f"{elapsed:.2f} s: {stored / elapsed:,.0f} records/s"
    )
