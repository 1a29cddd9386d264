"""The local executor under failure, with the control plane behind it (event
store, coordinator, projector): SIGKILL mid-run (C04, dev mode), heartbeats,
and a poison log tail in a terminal report (C13)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from exectest import ControlPlane, Harness, make_launch, python

from animus.eventstore import RecordedEvent
from animus.storage import BlobStore
from contracts.events import TERMINAL_RUN_EVENTS
from executors.local import LOG_ARTIFACT, Workspace

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed"
)

TERMINAL = tuple(TERMINAL_RUN_EVENTS)
LONG = """
import time
open("/shared/count", "a").write("long\\n")
time.sleep(6)
open("/outputs/long", "w").write("long")
"""
SHORT = """
import time
open("/shared/count", "a").write("short\\n")
time.sleep(0.5)
open("/outputs/short", "w").write("short")
"""


def workspace(harness: Harness, run_id: str) -> Workspace:
    return Workspace(harness.settings.workdir.resolve() / run_id / "1")


def shared_counter(harness: Harness, tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    shared.mkdir()
    harness.extra_rw_binds = ((shared, "/shared"),)
    return shared / "count"


async def spawn_executor(
    harness: Harness, services: Any, shared: Path
) -> asyncio.subprocess.Process:
    """The executor as a process of its own, so SIGKILL hits only it."""
    env = {
        **os.environ,
        "ANIMUS_HOME": str(harness.settings.home),
        "ANIMUS_ENVIRONMENT": "test",
        "ANIMUS_NATS_URL": services.nats_url,
        "ANIMUS_S3_ENDPOINT": services.s3_endpoint,
        "ANIMUS_S3_ACCESS_KEY": services.s3_access_key,
        "ANIMUS_S3_SECRET_KEY": services.s3_secret_key,
        "ANIMUS_S3_BUCKET": harness.store.bucket,
        "ANIMUS_RUN_HEARTBEAT_SECONDS": "0.3",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    script = Path(__file__).with_name("run_executor.py")
    return await asyncio.create_subprocess_exec(
        sys.executable, str(script), harness.name, f"{shared}:/shared", env=env
    )


async def file_appears(path: Path, *, tries: int = 150) -> bool:
    """Whether `path` exists within `tries` looks, 0.1 s apart."""
    for _ in range(tries):
        if path.exists():
            return True
        await asyncio.sleep(0.1)
    return path.exists()


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def versions(events: list[RecordedEvent]) -> list[int]:
    return [event.stream_version for event in events]


def count(events: list[RecordedEvent], event_type: str) -> int:
    return sum(event.type == event_type for event in events)


async def blob_bytes(store: BlobStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.iter_object(key)])


class TestExecutorKilledMidRun:
    async def test_workloads_are_adopted_and_recorded_never_started_again(
        self,
        harness: Harness,
        tmp_path: Path,
        services: Any,
        control_plane: ControlPlane,
    ) -> None:
        """C04 dev mode: SIGKILL only the executor while A (long) and B
        (short) run; B ends while it is down; a new executor adopts A and
        records B with the time B ended, which GET run shows as its
        `finished_at`, and nothing runs twice."""
        counter = shared_counter(harness, tmp_path)
        long, short = make_launch(python(LONG)), make_launch(python(SHORT))
        for launch in (long, short):
            await control_plane.dispatched(launch)
        first = await spawn_executor(harness, services, counter.parent)
        try:
            await harness.launch(long)
            await harness.launch(short)
            for launch in (long, short):
                await control_plane.until(launch.run_id, ["RunStarted"])
        finally:
            first.send_signal(signal.SIGKILL)
            await first.wait()
        ws_long, ws_short = workspace(harness, long.run_id), workspace(
            harness, short.run_id
        )
        assert await file_appears(ws_short.status), "B did not end while down"
        long_pid = json.loads(ws_long.marker.read_text())["pid"]
        assert psutil.pid_exists(long_pid), "A died with the executor"
        assert not ws_long.status.exists()
        short_ended = json.loads(ws_short.status.read_text())["finished_at"]
        restarted_at = datetime.now(UTC)

        async with harness.running(heartbeat_interval=0.3):
            finished = {
                launch.run_id: await control_plane.until(launch.run_id, TERMINAL)
                for launch in (long, short)
            }
            beats = [
                report
                for report in ws_long.load_journal().values()
                if report.kind == "heartbeat"
                and parse_time(report.sent_at) > restarted_at
            ]

        assert sorted(counter.read_text().splitlines()) == ["long", "short"]
        for events in finished.values():
            assert events[-1].type == "RunSucceeded"
            assert versions(events) == list(range(1, len(events) + 1))
            assert count(events, "RunDispatched") == count(events, "RunStarted") == 1
            assert sum(event.type in TERMINAL for event in events) == 1
        short_done = finished[short.run_id][-1]
        workload_time = parse_time(short_done.metadata["workload_time"])
        assert workload_time == datetime.fromtimestamp(short_ended, UTC)
        assert workload_time < restarted_at < short_done.recorded_at
        assert beats, "A sent no heartbeat after the restart"
        for launch in (long, short):
            run = await control_plane.get_run(launch.run_id)
            assert (run["status"], run["finished_at_source"]) == (
                "succeeded",
                "workload",
            )
        # GET run: B finished when its workload ended, before the restart;
        # the control plane recorded it after
        run = await control_plane.get_run(short.run_id)
        finished_at = parse_time(run["finished_at"])
        recorded_finished_at = parse_time(run["recorded_finished_at"])
        assert finished_at == datetime.fromtimestamp(short_ended, UTC)
        assert recorded_finished_at == short_done.recorded_at
        assert finished_at < restarted_at < recorded_finished_at


class TestHeartbeats:
    async def test_a_running_workload_reports_heartbeats_until_it_ends(
        self, harness: Harness
    ) -> None:
        launch = make_launch(python("import time; time.sleep(2)"))

        async with harness.running(heartbeat_interval=0.25):
            await harness.launch(launch)
            reports = await harness.reports(launch.run_id)

        kinds = [report.kind for report in reports]
        beats = [i for i, kind in enumerate(kinds) if kind == "heartbeat"]
        assert kinds[0] == "started" and kinds[-1] == "succeeded"
        assert len(beats) >= 3
        assert beats == list(range(1, len(beats) + 1))  # then artifacts, outcome
        assert [report.seq for report in reports] == list(range(1, len(kinds) + 1))


class TestPoisonLogTail:
    async def test_a_nul_in_the_terminal_log_tail_still_finishes_the_run(
        self, harness: Harness, control_plane: ControlPlane
    ) -> None:
        """C13, executor side: the tail holds a NUL and a UTF-8-encoded lone
        surrogate; the run still ends failed, the stored message has U+FFFD
        in their place, and the log artifact keeps the exact bytes."""
        poison = b"col\x00umn \xed\xa0\x80 end\n"
        launch = make_launch(
            python(
                f"""
                import sys
                sys.stdout.buffer.write({poison!r})
                sys.stdout.flush()
                sys.exit(3)
                """
            )
        )
        await control_plane.dispatched(launch)

        async with harness.running():
            await harness.launch(launch)
            events = await control_plane.until(launch.run_id, TERMINAL)

        failed = events[-1]
        assert failed.type == "RunFailed"
        assert failed.data["reason"] == "nonzero_exit"
        assert "col\ufffdumn" in failed.data["message"]
        run = await control_plane.get_run(launch.run_id)
        assert (run["status"], run["exit_code"]) == ("failed", 3)
        assert "col\ufffdumn" in run["failure_message"]
        artifacts = [e.data["artifact"] for e in events if e.type == "ArtifactRecorded"]
        log_artifact = next(a for a in artifacts if a["name"] == LOG_ARTIFACT)
        assert await blob_bytes(harness.store, log_artifact["object_key"]) == poison
