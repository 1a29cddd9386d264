"""Replay at a position taken before a run was canceled shows it running; the
diff between then and now shows the cancellation.

A real run of the local executor (a long sleep) is running; the test notes
the head position, cancels it through the API and waits for `canceled`.
Then `animus replay --until <pos> --into s1` shows the run running in
`s1.runs`, `animus replay --diff <pos> head` lists its status change
running -> canceled, and the API answers `as_of=<pos>` with the run running
and the position in its header. The platform is the one of
test_cancel_through_the_api.py (its fixtures, imported)."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
from pathlib import Path

import psycopg
import pytest
from clitest import animus
from test_cancel_through_the_api import (  # noqa: F401 - fixtures
    TOKEN,
    Platform,
    nats_url,
    platform,
    settings,
    until,
)

from animus.settings import Settings
from gateway.asof import AS_OF_HEADER

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed"
)


def _head(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT max(position) FROM events").fetchone()
    assert row is not None
    return int(row[0])


async def test_replay_before_a_cancel_shows_the_run_running_and_the_diff_the_cancel(
    platform: Platform,  # noqa: F811 - the imported fixture
    settings: Settings,  # noqa: F811
    tmp_path: Path,
) -> None:
    client = platform.client
    dsn = settings.database_url
    assert dsn is not None
    project_id = f"p-{secrets.token_hex(4)}"
    answer = await client.post(
        "/projects", json={"project_id": project_id, "name": "pit"}, headers=TOKEN
    )
    assert answer.status_code == 201, answer.text
    answer = await client.post(
        f"/projects/{project_id}/runs",
        json={
            "command": ["python", "-c", "import time; time.sleep(300)"],
            "timeout_seconds": 600,
        },
        headers=TOKEN,
    )
    assert answer.status_code == 201, answer.text
    run_id = answer.json()["run_id"]
    run_url = f"/projects/{project_id}/runs/{run_id}"

    async def status() -> str:
        reply = await client.get(run_url, headers=TOKEN)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["status"])

    async def running() -> bool:
        return await status() == "running"

    async def canceled() -> bool:
        return await status() == "canceled"

    await until(running, f"{run_id} to run")
    position = await asyncio.to_thread(_head, dsn)
    answer = await client.post(f"{run_url}/cancel", headers=TOKEN)
    assert answer.status_code == 202, answer.text
    await until(canceled, f"{run_id} to be canceled")

    try:
        built = await asyncio.to_thread(
            animus,
            tmp_path,
            "replay",
            "--until",
            str(position),
            "--into",
            "s1",
            "--json",
            ANIMUS_DATABASE_URL=dsn,
        )
        assert built.returncode == 0, built.stderr
        assert json.loads(built.stdout)["position"] == position
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT status, cancel_requested FROM s1.runs WHERE run_id = %s",
                (run_id,),
            ).fetchone()
        assert row == ("running", False)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS s1 CASCADE")

    diff = await asyncio.to_thread(
        animus,
        tmp_path,
        "replay",
        "--diff",
        str(position),
        "head",
        "--json",
        ANIMUS_DATABASE_URL=dsn,
    )
    assert diff.returncode == 0, diff.stderr
    changes = json.loads(diff.stdout)["tables"]["runs"]["changed"]
    [mine] = [c for c in changes if c["key"] == {"run_id": run_id}]
    assert mine["columns"]["status"] == {"old": "running", "new": "canceled"}
    assert mine["columns"]["cancel_requested"] == {"old": False, "new": True}

    text = await asyncio.to_thread(
        animus,
        tmp_path,
        "replay",
        "--diff",
        str(position),
        "head",
        ANIMUS_DATABASE_URL=dsn,
    )
    assert text.returncode == 0, text.stderr
    assert any(
        line.startswith(f"  ~ run_id={run_id}: ")
        and "status running -> canceled" in line
        for line in text.stdout.splitlines()
    ), text.stdout

    past = await client.get(run_url, params={"as_of": position}, headers=TOKEN)
    assert past.status_code == 200, past.text
    assert past.json()["status"] == "running"
    assert past.headers[AS_OF_HEADER] == str(position)
    timeline = await client.get(
        f"{run_url}/timeline", params={"as_of": position}, headers=TOKEN
    )
    types = [event["type"] for event in timeline.json()["events"]]
    assert "RunStarted" in types
    assert "RunCancelRequested" not in types and "RunCanceled" not in types
