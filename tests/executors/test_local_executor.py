"""The local executor against real NATS JetStream and S3, with real workloads
under bubblewrap: outputs and metrics, the sandbox's walls, failures, limits,
redelivery, cancel, restart and input verification."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
from exectest import (
    Harness,
    make_launch,
    new_id,
    python,
    stored_input,
)

from animus.storage import BlobStore
from executors.local import LOG_ARTIFACT, Workspace, read_metrics, report_id

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed"
)


async def blob_bytes(store: BlobStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.iter_object(key)])


def workspace(harness: Harness, run_id: str, attempt: int = 1) -> Workspace:
    return Workspace(harness.settings.workdir.resolve() / run_id / str(attempt))


async def test_outputs_metrics_and_log_are_reported(harness: Harness) -> None:
    data = b"alpha,beta\n1,2\n"
    wine = await stored_input(harness.store, data, name="wine")
    launch = make_launch(
        python(
            """
            import json, os, pathlib
            data = pathlib.Path("/inputs/wine").read_bytes()
            out = pathlib.Path("/outputs")
            (out / "model.bin").write_bytes(data[::-1])
            (out / "sub").mkdir()
            params = os.environ["ANIMUS_PARAMS"]
            (out / "sub" / "note.txt").write_text("params=" + params)
            (out / "metrics.json").write_text(json.dumps(
                {"accuracy": 0.9, "count": 3, "nested": {"x": 1}, "flag": True,
                 "label": "x"}))
            print("training done", flush=True)
            """
        ),
        inputs={"wine": wine},
        parameters={"seed": 42},
    )
    async with harness.running():
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id)

    kinds = [r.kind for r in reports]
    assert kinds == ["started", *["artifact"] * 4, "metrics", "succeeded"], kinds
    assert [r.seq for r in reports] == list(range(1, len(reports) + 1))
    assert [r.report_id for r in reports] == [
        report_id(launch.run_id, 1, seq) for seq in range(1, len(reports) + 1)
    ]
    artifacts = {r.artifact.name: r.artifact for r in reports if r.artifact}
    assert sorted(artifacts) == [
        LOG_ARTIFACT,
        "metrics.json",
        "model.bin",
        "sub/note.txt",
    ]
    model = artifacts["model.bin"]
    assert model.sha256 == hashlib.sha256(data[::-1]).hexdigest()
    assert model.size == len(data)
    assert model.kind == "output"
    assert await blob_bytes(harness.store, model.object_key) == data[::-1]
    note = await blob_bytes(harness.store, artifacts["sub/note.txt"].object_key)
    assert note == b'params={"seed": 42}'
    log_artifact = artifacts[LOG_ARTIFACT]
    assert log_artifact.kind == "log"
    assert b"training done" in await blob_bytes(harness.store, log_artifact.object_key)
    metrics = next(r for r in reports if r.kind == "metrics")
    assert metrics.metrics == {"accuracy": 0.9, "count": 3.0}
    assert metrics.message == (
        'metrics.json: refused "nested" is an object, not a number; "flag" is a '
        'boolean, not a number; "label" is a string, not a number '
        "(the other 2 were recorded)"
    )
    assert reports[-1].exit_code == 0
    assert all(r.project_id == "proj-exec" and r.attempt == 1 for r in reports)
    ws = workspace(harness, launch.run_id)
    marker = json.loads(ws.marker.read_text())
    assert marker["sandbox"] == "bwrap" and marker["pid"] > 0
    assert ws.outcome.exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "metrics.json is not valid JSON (Expecting value: line 1"),
        ('{"loss": NaN}', 'metrics.json: refused "loss" is nan, not a finite'),
        ("[1, 2]", "metrics.json holds a list, not an object of numbers"),
    ],
)
async def test_a_refused_metrics_file_is_reported_and_kept_as_an_artifact(
    harness: Harness, content: str, problem: str
) -> None:
    """The run's outcome is its exit status; the report says what was wrong."""
    launch = make_launch(
        python(f"open('/outputs/metrics.json', 'w').write({content!r})")
    )
    async with harness.running():
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id)
    assert reports[-1].kind == "succeeded", reports[-1]
    [metrics] = [r for r in reports if r.kind == "metrics"]
    assert metrics.metrics == {}
    assert metrics.message.startswith(problem), metrics.message
    [kept] = [r.artifact for r in reports if r.artifact and r.artifact.kind == "output"]
    assert kept.name == "metrics.json"
    assert await blob_bytes(harness.store, kept.object_key) == content.encode()


class TestReadMetrics:
    def test_no_file_is_no_metrics_and_no_problem(self, tmp_path: Path) -> None:
        assert read_metrics(tmp_path / "metrics.json") == ({}, "")

    @pytest.mark.parametrize(
        ("content", "metrics", "problem"),
        [
            (b'{"auc": 0.5, "n": 3}', {"auc": 0.5, "n": 3.0}, ""),
            (b"\xff{}", {}, "metrics.json is not UTF-8 (byte 0); no metrics"),
            (b'"fine"', {}, "metrics.json holds a string, not an object of numbers"),
            (
                b'{"auc": 0.5, "big": 1e999, "huge": 1' + b"0" * 400 + b"}",
                {"auc": 0.5},
                'metrics.json: refused "big" is inf, not a finite number; '
                '"huge" is too large for a number (the other 1 were recorded)',
            ),
            (
                b'{"a\\u0000b": 1, "\\ud800": 2}',
                {},
                'metrics.json: refused "a\\u0000b" has a name that cannot be '
                'stored (NUL or a lone surrogate); "\\ud800" has a name',
            ),
        ],
    )
    def test_what_is_refused_is_said(
        self,
        tmp_path: Path,
        content: bytes,
        metrics: dict[str, float],
        problem: str,
    ) -> None:
        path = tmp_path / "metrics.json"
        path.write_bytes(content)
        read, said = read_metrics(path)
        assert read == metrics
        assert said.startswith(problem), said

    def test_a_symlink_is_not_followed(self, tmp_path: Path) -> None:
        (tmp_path / "real.json").write_text('{"a": 1}')
        (tmp_path / "metrics.json").symlink_to(tmp_path / "real.json")
        assert read_metrics(tmp_path / "metrics.json") == (
            {},
            "metrics.json is not a regular file; no metrics were recorded",
        )


async def test_sandbox_has_no_network_and_a_read_only_system(
    harness: Harness, services: Any
) -> None:
    nats_port = urlsplit(services.nats_url).port
    data_in = await stored_input(harness.store, b"input bytes", name="data")
    launch = make_launch(
        python(
            f"""
            import json, os, socket
            probes = {{}}
            def probe(name, fn):
                try:
                    fn()
                    probes[name] = "allowed"
                except OSError as exc:
                    probes[name] = type(exc).__name__
            probe("network", lambda: socket.create_connection(
                ("127.0.0.1", {nats_port}), timeout=2))
            probe("write_usr", lambda: open("/usr/animus-probe", "w"))
            probe("write_venv", lambda: open(os.path.join(
                os.environ["VIRTUAL_ENV"], "probe"), "w"))
            probe("write_input_new", lambda: open("/inputs/x", "w"))
            probe("write_input", lambda: open("/inputs/data", "a"))
            probe("write_tmp", lambda: open("/tmp/ok", "w").write("ok"))
            probes["workdir_visible"] = os.path.exists({str(harness.settings.home)!r})
            probes["secret_env"] = sorted(k for k in os.environ
                                          if "SECRET" in k or "S3" in k)
            probes["input"] = open("/inputs/data").read()
            json.dump(probes, open("/outputs/probes.json", "w"))
            """
        ),
        inputs={"data": data_in},
    )
    async with harness.running():
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id)
    assert reports[-1].kind == "succeeded", reports[-1]
    probes = json.loads(
        (workspace(harness, launch.run_id).outputs / "probes.json").read_text()
    )
    assert probes["network"] != "allowed"
    assert probes["write_usr"] != "allowed"
    assert probes["write_venv"] != "allowed"
    assert probes["write_input_new"] != "allowed"
    assert probes["write_input"] != "allowed"
    assert probes["write_tmp"] == "allowed"
    assert probes["workdir_visible"] is False
    assert probes["secret_env"] == []
    assert probes["input"] == "input bytes"


async def test_nonzero_exit_reports_failed_with_the_code(harness: Harness) -> None:
    launch = make_launch(python("import sys; print('bad things'); sys.exit(3)"))
    async with harness.running():
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id)
    final = reports[-1]
    assert final.kind == "failed"
    assert final.reason == "nonzero_exit"
    assert final.exit_code == 3
    assert "bad things" in final.message
    assert [r.kind for r in reports][:1] == ["started"]
    assert any(r.artifact and r.artifact.name == LOG_ARTIFACT for r in reports)


async def test_a_silent_nonzero_exit_says_only_the_code(harness: Harness) -> None:
    launch = make_launch(["false"])
    async with harness.running():
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id)
    final = reports[-1]
    assert (final.kind, final.reason, final.exit_code) == ("failed", "nonzero_exit", 1)
    assert final.message == "exit code 1"


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["definitely-not-a-command"], "command not found: definitely-not-a-command"),
        (["/inputs/missing/train"], "command not found: /inputs/missing/train"),
        (["/outputs"], "command not executable: /outputs (permission denied)"),
    ],
)
async def test_a_command_that_cannot_be_executed_fails_with_exec_failed(
    harness: Harness, command: list[str], message: str
) -> None:
    launch = make_launch(command)
    async with harness.running():
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id)
    final = reports[-1]
    assert (final.kind, final.reason) == ("failed", "exec_failed")
    assert final.message == message
    assert final.exit_code is None
    status = json.loads(workspace(harness, launch.run_id).status.read_text())
    assert status["exec_error"] == message
    log = next(r.artifact for r in reports if r.artifact and r.artifact.kind == "log")
    assert await blob_bytes(harness.store, log.object_key) == (
        f"animus: {message}\n".encode()
    )


async def test_the_exec_helper_leaves_no_trace_in_the_workload(
    harness: Harness,
) -> None:
    """The status pipe is closed at exec and its variable removed."""
    launch = make_launch(
        python(
            """
            import json, os
            json.dump({"fds": sorted(os.listdir("/proc/self/fd")),
                       "env": sorted(k for k in os.environ if "EXEC" in k)},
                      open("/outputs/seen.json", "w"))
            """
        )
    )
    async with harness.running():
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id)
    assert reports[-1].kind == "succeeded", reports[-1]
    seen = json.loads(
        (workspace(harness, launch.run_id).outputs / "seen.json").read_text()
    )
    assert seen["env"] == []
    assert seen["fds"] == ["0", "1", "2", "3"]  # stdio and the listing itself


async def test_timeout_kills_and_reports_failed_timeout(harness: Harness) -> None:
    launch = make_launch(python("import time; time.sleep(60)"), timeout_seconds=1)
    async with harness.running():
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id, timeout=15)
    assert reports[-1].kind == "failed"
    assert reports[-1].reason == "timeout"
    ws = workspace(harness, launch.run_id)
    assert json.loads(ws.kill.read_text())["reason"] == "timeout"
    assert json.loads(ws.status.read_text())["exit_code"] != 0  # killed, not done


async def test_memory_hog_over_the_limit_fails(harness: Harness) -> None:
    launch = make_launch(
        python(
            """
            blocks = []
            for _ in range(64):
                blocks.append(bytearray(32 * 1024 * 1024))
            print("survived", flush=True)
            """
        ),
        memory_mb=256,
    )
    async with harness.running():
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id)
    assert reports[-1].kind == "failed"
    assert reports[-1].reason == "out_of_memory"
    assert "survived" not in reports[-1].message


async def test_input_digest_mismatch_fails_without_a_process(harness: Harness) -> None:
    real = await stored_input(harness.store, b"the real bytes", name="data")
    forged = real.model_copy(update={"sha256": hashlib.sha256(b"other").hexdigest()})
    launch = make_launch(python("print('must not run')"), inputs={"data": forged})
    async with harness.running():
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id)
    assert [r.kind for r in reports] == ["failed"]
    assert reports[0].reason == "input_verification_failed"
    ws = workspace(harness, launch.run_id)
    assert not ws.marker.exists()
    assert not ws.status.exists()
    assert not (ws.inputs / "data").exists()


def counter_harness(harness: Harness, tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    shared.mkdir()
    harness.extra_rw_binds = ((shared, "/shared"),)
    return shared / "count"


COUNTING = python(
    """
    import time
    with open("/shared/count", "a") as handle:
        handle.write("started\\n")
    time.sleep(1.5)
    open("/outputs/done", "w").write("done")
    """
)


async def test_a_launch_delivered_twice_starts_one_workload(
    harness: Harness, tmp_path: Path
) -> None:
    counter = counter_harness(harness, tmp_path)
    launch = make_launch(COUNTING)
    async with harness.running():
        await harness.launch(launch, msg_id=new_id("a"))
        await harness.launch(launch, msg_id=new_id("b"))
        reports = await harness.reports(launch.run_id, settle=1.0)
        # once finished, a third delivery only re-sends the same reports
        await harness.launch(launch, msg_id=new_id("c"))
        again = await harness.reports(launch.run_id, settle=1.5)
    assert counter.read_text().splitlines() == ["started"]
    kinds = [r.kind for r in reports]
    assert kinds.count("started") == 1 and kinds.count("succeeded") == 1
    assert len({r.report_id for r in reports}) == len(reports)
    assert [r.report_id for r in again] == [r.report_id for r in reports]
    assert counter.read_text().splitlines() == ["started"]


async def test_cancel_kills_the_process_group(harness: Harness) -> None:
    token = f"animus-cancel-probe-{new_id()}"
    launch = make_launch(
        python(
            f"""
            import subprocess, sys, time
            subprocess.Popen([sys.executable, "-c",
                              "import time; time.sleep(300)", {token!r}])
            print("spawned", flush=True)
            time.sleep(300)
            """
        )
    )

    def probes() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if token in (proc.info.get("cmdline") or []):
                try:
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        found.append(proc)
                except psutil.Error:
                    pass
        return found

    async with harness.running():
        await harness.launch(launch)
        await harness.reports(launch.run_id, until=("started",))
        for _ in range(100):
            if probes():
                break
            await asyncio.sleep(0.05)
        assert probes(), "the workload's child never appeared"
        ws = workspace(harness, launch.run_id)
        shim_pid = json.loads(ws.marker.read_text())["pid"]
        tree = psutil.Process(shim_pid).children(recursive=True)
        await harness.cancel(launch)
        reports = await harness.reports(launch.run_id, timeout=20)
    assert reports[-1].kind == "canceled"
    assert probes() == []
    for proc in tree:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


async def test_a_cancel_before_the_launch_means_no_process(harness: Harness) -> None:
    launch = make_launch(python("open('/outputs/ran', 'w')"))
    async with harness.running():
        await harness.cancel(launch)
        await asyncio.sleep(1.0)  # let the cancel land first
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id)
    assert [r.kind for r in reports] == ["canceled"]
    assert not workspace(harness, launch.run_id).marker.exists()


async def test_restart_adopts_a_live_workload(harness: Harness, tmp_path: Path) -> None:
    counter = counter_harness(harness, tmp_path)
    launch = make_launch(COUNTING)
    async with harness.running():
        await harness.launch(launch)
        await harness.reports(launch.run_id, until=("started",))
    # the executor stopped; its workload keeps running
    ws = workspace(harness, launch.run_id)
    marker = json.loads(ws.marker.read_text())
    assert psutil.pid_exists(marker["pid"])
    async with harness.running():
        reports = await harness.reports(launch.run_id)
    assert counter.read_text().splitlines() == ["started"]
    kinds = [r.kind for r in reports]
    assert kinds.count("started") == 1
    assert kinds[-1] == "succeeded"
    assert any(r.artifact and r.artifact.name == "done" for r in reports)


async def test_a_workload_gone_while_the_executor_was_down_is_lost(
    harness: Harness, tmp_path: Path
) -> None:
    counter = counter_harness(harness, tmp_path)
    launch = make_launch(
        python("import time; open('/shared/count','a').write('x\\n'); time.sleep(60)")
    )
    async with harness.running():
        await harness.launch(launch)
        await harness.reports(launch.run_id, until=("started",))
    ws = workspace(harness, launch.run_id)
    pid = json.loads(ws.marker.read_text())["pid"]
    os.kill(pid, signal.SIGKILL)  # the supervisor dies; the sandbox with it
    await asyncio.sleep(0.5)
    async with harness.running():
        reports = await harness.reports(launch.run_id)
    assert reports[-1].kind == "failed"
    assert reports[-1].reason == "lost"
    assert counter.read_text().splitlines() == ["x"]


async def test_a_workload_that_finished_while_down_is_recorded(
    harness: Harness, tmp_path: Path
) -> None:
    counter = counter_harness(harness, tmp_path)
    launch = make_launch(COUNTING)
    async with harness.running():
        await harness.launch(launch)
        await harness.reports(launch.run_id, until=("started",))
    ws = workspace(harness, launch.run_id)
    for _ in range(100):
        if ws.status.exists():
            break
        await asyncio.sleep(0.1)
    assert ws.status.exists()
    async with harness.running():
        reports = await harness.reports(launch.run_id)
    assert reports[-1].kind == "succeeded"
    assert counter.read_text().splitlines() == ["started"]


async def test_a_killed_executor_leaves_workloads_that_a_new_one_adopts(
    harness: Harness, tmp_path: Path, services: Any
) -> None:
    """C04, dev mode: SIGKILL the executor only; its children survive. The
    next executor adopts the live one and records the one that finished while
    nothing watched, at once (not after the ack wait), without a rerun."""
    counter = counter_harness(harness, tmp_path)
    slow = make_launch(
        python(
            """
            import time
            open("/shared/count", "a").write("slow\\n")
            time.sleep(4)
            open("/outputs/slow", "w").write("slow")
            """
        )
    )
    quick = make_launch(
        python(
            """
            import time
            open("/shared/count", "a").write("quick\\n")
            time.sleep(0.5)
            open("/outputs/quick", "w").write("quick")
            """
        )
    )
    env = {
        **os.environ,
        "ANIMUS_HOME": str(harness.settings.home),
        "ANIMUS_ENVIRONMENT": "test",
        "ANIMUS_NATS_URL": services.nats_url,
        "ANIMUS_S3_ENDPOINT": services.s3_endpoint,
        "ANIMUS_S3_ACCESS_KEY": services.s3_access_key,
        "ANIMUS_S3_SECRET_KEY": services.s3_secret_key,
        "ANIMUS_S3_BUCKET": harness.store.bucket,
        # the repository first: an editable install made before `executors`
        # existed does not map it
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    script = Path(__file__).with_name("run_executor.py")
    first = await asyncio.create_subprocess_exec(
        sys.executable, str(script), harness.name, f"{counter.parent}:/shared", env=env
    )
    try:
        await harness.launch(slow)
        await harness.launch(quick)
        await harness.reports(slow.run_id, until=("started",), timeout=20)
        await harness.reports(quick.run_id, until=("started",), timeout=20)
    finally:
        first.kill()
        await first.wait()
    ws_slow, ws_quick = (
        workspace(harness, slow.run_id),
        workspace(harness, quick.run_id),
    )
    slow_pid = json.loads(ws_slow.marker.read_text())["pid"]
    assert psutil.pid_exists(slow_pid), "the workload died with the executor"
    for _ in range(50):
        if ws_quick.status.exists():
            break
        await asyncio.sleep(0.1)
    assert ws_quick.status.exists() and not ws_slow.status.exists()
    async with harness.running():
        # 20 s is well inside the 60 s ack wait: recovery at start adopts them
        quick_reports = await harness.reports(quick.run_id, timeout=20)
        slow_reports = await harness.reports(slow.run_id, timeout=20)
    assert quick_reports[-1].kind == "succeeded"
    assert slow_reports[-1].kind == "succeeded"
    for reports in (quick_reports, slow_reports):
        assert [r.kind for r in reports].count("started") == 1
    assert sorted(counter.read_text().splitlines()) == ["quick", "slow"]


async def test_the_wine_example_trains_in_the_sandbox(harness: Harness) -> None:
    """The demo's workload: the venv's python with scikit-learn, in bwrap,
    under the memory limit the demo asks for."""
    from animus.demo import training_script, wine_data_file

    wine = await stored_input(harness.store, wine_data_file().read_bytes(), name="wine")
    code = await stored_input(
        harness.store, training_script().read_bytes(), name="code"
    )
    launch = make_launch(
        ["python", "/inputs/code", "/inputs/wine", "/outputs"],
        inputs={"wine": wine, "code": code},
        parameters={"seed": 42, "test_size": 0.25, "n_estimators": 10},
        memory_mb=2048,
    )
    async with harness.running():
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id, timeout=60)
    assert reports[-1].kind == "succeeded", reports[-1].message
    names = {r.artifact.name for r in reports if r.artifact}
    assert {"model.pkl", "metrics.json", LOG_ARTIFACT} <= names
    metrics = next(r for r in reports if r.kind == "metrics").metrics or {}
    assert 0.8 <= metrics["accuracy"] <= 1.0
