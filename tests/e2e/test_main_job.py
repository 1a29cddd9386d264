"""The main job end to end: `animus up` runs the five processes against the
session's PostgreSQL, NATS and S3; `animus demo --json` trains the wine model
twice through the HTTP API; the chain verifies and a replay equals the live
read models. Then `animus up` stops on SIGTERM and resumes with all data."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from animus.embedded import free_port

UP_TIMEOUT = 120


@pytest.fixture(scope="module")
def env(services, tmp_path_factory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    name = f"animus_e2e_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = services.database_url.rsplit("/", 1)[0] + f"/{name}"
    home = Path(tmp_path_factory.mktemp("e2e"))
    return {
        **os.environ,
        **services.settings_env(dsn),
        "ANIMUS_HOME": str(home),
        "ANIMUS_GATEWAY_PORT": str(free_port()),
        "ANIMUS_S3_BUCKET": f"e2e-{uuid.uuid4().hex[:8]}",
    }


def animus(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "animus", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def start_up(env: dict[str, str]) -> subprocess.Popen[bytes]:
    home = Path(env["ANIMUS_HOME"])
    process = subprocess.Popen(
        [sys.executable, "-m", "animus", "up"],
        env=env,
        stdout=(home / "up.out").open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{env['ANIMUS_GATEWAY_PORT']}/readyz"
    deadline = time.monotonic() + UP_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, (home / "up.out").read_text()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise AssertionError((home / "up.out").read_text()[-3000:])


def stop_up(
    process: subprocess.Popen[bytes], signum: signal.Signals = signal.SIGTERM
) -> int:
    process.send_signal(signum)
    return process.wait(timeout=90)


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = start_up(env)
    try:
        yield process
    finally:
        if process.poll() is None:
            stop_up(process)


def test_the_main_job_trains_verifies_and_replays(
    env: dict[str, str], stack: subprocess.Popen[bytes]
) -> None:
    result = json.loads(animus(env, "demo", "--json"))
    assert result["status"] == "succeeded"
    assert result["metrics"]["accuracy"] > 0.9
    names = {a["name"] for a in result["artifacts"]}
    assert {"model.pkl", "metrics.json", "logs/run.log"} <= names
    assert result["rerun"]["spec_hash"] == result["spec_hash"]
    assert result["rerun"]["plan_hash"] == result["plan_hash"]
    assert result["rerun"]["model_sha256_equal"] is True
    assert result["chain"]["verified"] is True

    assert "chain verified" in animus(env, "verify")
    replay = json.loads(animus(env, "replay", "--json"))
    assert replay["equal"] is True, replay
    assert replay["tables"]["runs"]["live"] >= 2


def test_the_runs_artifacts_timeline_and_lineage_are_served(
    env: dict[str, str], stack: subprocess.Popen[bytes]
) -> None:
    token = {"Authorization": "Bearer dev-token"}
    base = f"http://127.0.0.1:{env['ANIMUS_GATEWAY_PORT']}/projects/demo/runs"
    runs = httpx.get(base, headers=token).json()["items"]
    run_id = next(r["run_id"] for r in runs if r["status"] == "succeeded")

    listed = httpx.get(f"{base}/{run_id}/artifacts", headers=token).json()["items"]
    assert {a["name"] for a in listed} >= {"model.pkl", "logs/run.log"}
    for artifact in listed:
        body = httpx.get(f"{base}/{run_id}/artifacts/{artifact['name']}", headers=token)
        assert body.status_code == 200
        assert hashlib.sha256(body.content).hexdigest() == artifact["sha256"]
        assert len(body.content) == artifact["size"]

    timeline = httpx.get(f"{base}/{run_id}/timeline", headers=token).json()
    versions = [e["stream_version"] for e in timeline["events"]]
    assert versions == list(range(1, len(versions) + 1))
    types = [e["type"] for e in timeline["events"]]
    assert types[0] == "RunSubmitted" and types[-1] == "RunSucceeded"

    lineage = httpx.get(f"{base}/{run_id}/lineage", headers=token).json()
    assert {i["dataset_id"] for i in lineage["inputs"]} == {"wine", "wine-train-code"}
    outputs = {o["name"]: o["sha256"] for o in lineage["outputs"]}
    assert outputs == {a["name"]: a["sha256"] for a in listed}


def test_up_stops_cleanly_and_resumes_with_all_data(
    env: dict[str, str], stack: subprocess.Popen[bytes]
) -> None:
    token = {"Authorization": "Bearer dev-token"}
    base = f"http://127.0.0.1:{env['ANIMUS_GATEWAY_PORT']}"
    before = httpx.get(f"{base}/projects/demo/runs", headers=token).json()
    assert stop_up(stack) == 0
    again = start_up(env)
    try:
        after = httpx.get(f"{base}/projects/demo/runs", headers=token).json()
        assert after == before
    finally:
        # Ctrl-C stops it as cleanly as SIGTERM
        assert stop_up(again, signal.SIGINT) == 0
