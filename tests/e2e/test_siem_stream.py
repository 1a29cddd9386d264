"""The SIEM stream end to end, as a security team receives it: `animus up`
(which declares JetStream ANIMUS_AUDIT on the NATS server it embeds, and
runs the audit publisher inside its relay process), two projects with a
dataset each created over the API, then `animus siem follow` as a
subprocess that finds the stack's NATS by itself. The records arrive in
position order from the genesis hash, each hashing to its `hash` and
linking to the one before, the new projects' ProjectCreated among them;
the auditor's HTTP export `GET /audit/events?after=0` answers the same
records."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from animus.chain import GENESIS_HASH
from animus.embedded import free_port

UP_TIMEOUT = 120
ARRIVAL_TIMEOUT = 60
IDLE_EXIT = "2"
TOKEN = "siem-e2e-token"


@pytest.fixture(scope="module")
def env(services: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    name = f"animus_siem_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = services.database_url.rsplit("/", 1)[0] + f"/{name}"
    home = Path(tmp_path_factory.mktemp("siem"))
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("ANIMUS_")},
        **services.settings_env(dsn),
        # empty: `animus up` embeds a NATS of this module's own, so the
        # stream holds this log's records only; `siem follow` finds it
        # through the stack file, as an operator's would
        "ANIMUS_NATS_URL": "",
        "ANIMUS_EMBEDDED_NATS_PORT": str(free_port()),
        "ANIMUS_HOME": str(home),
        "ANIMUS_GATEWAY_PORT": str(free_port()),
        "ANIMUS_S3_BUCKET": f"siem-{uuid.uuid4().hex[:8]}",
        "ANIMUS_DEV_TOKENS": json.dumps({TOKEN: "alice"}),
    }


@pytest.fixture(scope="module")
def base_url(env: dict[str, str]) -> Iterator[str]:
    """`animus up` for this module, ready when /readyz answers 200."""
    home = Path(env["ANIMUS_HOME"])
    out = home / "up.out"
    process = subprocess.Popen(
        [sys.executable, "-m", "animus", "up"],
        env=env,
        stdout=out.open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{env['ANIMUS_GATEWAY_PORT']}"
    try:
        deadline = time.monotonic() + UP_TIMEOUT
        while True:
            assert process.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=90)


@pytest.fixture(scope="module")
def projects(base_url: str) -> list[dict[str, Any]]:
    """Two projects created over the API, a dataset registered in each: the
    projects' receipts (with positions)."""
    receipts = []
    for _ in range(2):
        project_id = f"siem-{uuid.uuid4().hex[:8]}"
        receipts.append(
            post(base_url, "/projects", project_id=project_id, name=project_id)
        )
        post(
            base_url,
            f"/projects/{project_id}/datasets",
            dataset_id="wine",
            name="Wine",
        )
    return receipts


def post(base_url: str, path: str, **body: str) -> dict[str, Any]:
    answer = httpx.post(
        base_url + path,
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def follow(env: dict[str, str], *args: str) -> tuple[list[dict[str, Any]], str]:
    """One `animus siem follow` run until idle: its records and its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "animus", "siem", "follow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def follow_until(
    env: dict[str, str], last: int, *args: str
) -> tuple[list[dict[str, Any]], str]:
    """Follow again until position `last` arrived (the publisher runs apart)."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while True:
        records, stderr = follow(env, *args, "--idle-exit", IDLE_EXIT)
        if records and records[-1]["position"] >= last:
            return records, stderr
        assert time.monotonic() < deadline, f"position {last} never arrived"


@pytest.fixture(scope="module")
def followed(
    env: dict[str, str], projects: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], str]:
    return follow_until(env, projects[-1]["position"] + 1, "--from", "0")


def exported(base_url: str, after: int) -> list[dict[str, Any]]:
    answer = httpx.get(
        base_url + "/audit/events",
        params={"after": after},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in answer.text.splitlines() if line]


def assert_chained(records: list[dict[str, Any]], prev_hash: bytes) -> None:
    """In position order, each hashing to its hash and linking to the last."""
    first = records[0]["position"]
    assert [r["position"] for r in records] == list(range(first, first + len(records)))
    for record in records:
        assert record["prev_hash"] == prev_hash.hex(), record["position"]
        prev_hash = hashlib.sha256(prev_hash + record["canonical"].encode()).digest()
        assert record["hash"] == prev_hash.hex(), record["position"]


class TestSiemStream:
    def test_follow_receives_the_whole_chain_in_order(
        self,
        followed: tuple[list[dict[str, Any]], str],
        projects: list[dict[str, Any]],
    ) -> None:
        records, stderr = followed
        assert stderr == ""  # no gap, no changed record
        assert records[0]["position"] == 1
        assert len(records) >= 4
        assert_chained(records, GENESIS_HASH)
        created = {r["position"]: r for r in records if r["type"] == "ProjectCreated"}
        for receipt in projects:
            record = created[receipt["position"]]
            assert record["format"] == "animus-siem/v1"
            assert record["project_id"] == receipt["project_id"]
            assert record["data"]["name"] == receipt["name"]
            assert json.loads(record["canonical"])["data"] == record["data"]

    def test_the_http_export_answers_the_same_records(
        self, base_url: str, followed: tuple[list[dict[str, Any]], str]
    ) -> None:
        records, _ = followed
        over_http = exported(base_url, 0)
        assert over_http[: len(records)] == records

    def test_follow_from_a_position_starts_after_it(
        self,
        env: dict[str, str],
        base_url: str,
        projects: list[dict[str, Any]],
        followed: tuple[list[dict[str, Any]], str],
    ) -> None:
        after = projects[0]["position"]
        records, stderr = follow_until(
            env, projects[-1]["position"] + 1, "--from", str(after)
        )
        assert stderr == ""
        assert records[0]["position"] == after + 1
        before = {r["position"]: r for r in followed[0]}[after]
        assert_chained(records, bytes.fromhex(before["hash"]))
        assert exported(base_url, after)[: len(records)] == records


def test_the_stack_file_is_readable_by_its_owner_alone(
    base_url: str, env: dict[str, str]
) -> None:
    """It names the embedded database's owner role: no one else may read it."""
    home = Path(env["ANIMUS_HOME"])
    stack = home / "stack.json"
    assert json.loads(stack.read_text())["gateway_url"] == base_url
    assert stack.stat().st_mode & 0o777 == 0o600
    assert not list(home.glob("stack.json.partial"))
