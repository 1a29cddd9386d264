"""The local executor: runs launches as sandboxed child processes on this machine.

One launch is one attempt of one run, with a workspace of its own:

    <workdir>/<run_id>/<attempt>/
        inputs/        verified inputs, read-only at /inputs/<name>
        outputs/       /outputs; every regular file becomes an artifact
        tmp/           /tmp of an unsandboxed (dev mode) workload
        run.log        stdout and stderr of the workload
        marker.json    written BEFORE the workload starts, then with the
                       supervisor's pid and process start time
        status.json    the exit status, written by the supervisor shim
        kill.json      why the executor killed the workload (timeout, cancel)
        cancel.json    a cancel request for this attempt
        reports.jsonl  every report, journaled before it is published
        outcome.json   the attempt is finished and every report is sent
        launch.json    the launch itself, for recovery at start
        lock           flock held by the process handling the attempt

Redelivery never starts a second workload. A launch whose workspace has an
outcome re-sends the journaled reports (same report ids) and is acked. One
with a marker adopts the supervisor when it is alive (same pid and start
time), finishes from `status.json` when the workload ended while nobody was
watching, and otherwise reports `failed` with reason `lost`. At start the
executor does the same at once for every started, unfinished workspace, so
a crash costs no ack-wait before adoption.

Each workload runs under a supervisor shim (`executors/shim.py`) in a session
of its own: killing the executor leaves it running. Timeout and cancel send
SIGTERM to the workload's processes and SIGKILL after a grace period.
Out-of-memory is recognised from RLIMIT_AS failures (MemoryError, ENOMEM,
bad_alloc in the log tail) or a SIGKILL the executor did not send.

While a workload runs, a `heartbeat` report goes out every
`run_heartbeat_seconds`, paced by the monotonic clock, so a step of the wall
clock neither stops nor bunches them. Terminal reports carry the workload's
exit time from `status.json` as `occurred_at` (metadata for the control
plane; a finish recorded after a restart keeps the time the workload ended).

The launch message stays unacknowledged, its ack extended with in-progress
heartbeats, until every report of the attempt is published; a crash or a
graceful stop therefore leads to redelivery and adoption, not to a rerun.
Reports go to `animus.report.<run_id>` with `Nats-Msg-Id` = report id =
`<run_id>:<attempt>:<seq>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import signal
import stat
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError as PydanticValidationError

from animus.bus import ACK_WAIT_SECONDS, Bus, fetch_batch
from animus.errors import BusError, StorageError
from animus.settings import Settings
from animus.storage import BlobStore, DigestMismatch
from contracts.bus import (
    CONTROL_STREAM,
    LAUNCH_STREAM,
    CancelRequested,
    LaunchRequested,
    RunReport,
    cancel_subject,
    launch_subject,
    report_subject,
)
from contracts.runs import ArtifactInfo, FailureReason
from executors.sandbox import (
    SandboxLayout,
    SandboxMode,
    SandboxUnavailable,
    build_argv,
    choose_policy,
    memory_limit_bytes,
    workload_env,
)

__all__ = ["LocalExecutor", "Workspace", "read_metrics", "report_id"]

log = structlog.get_logger(__name__)

SHIM = Path(__file__).resolve().with_name("shim.py")
LOG_ARTIFACT = "logs/run.log"
METRICS_FILE = "metrics.json"
METRICS_MAX_BYTES = 1024 * 1024
METRICS_REFUSALS_SHOWN = 10
MESSAGE_TAIL_CHARS = 2000
MAX_DELIVERIES_BEFORE_GIVING_UP = 8
DETACH_TIMEOUT = 10.0
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_OOM_SIGNS = (
    "MemoryError",
    "Cannot allocate memory",
    "std::bad_alloc",
    "out of memory",
)


def report_id(run_id: str, attempt: int, seq: int) -> str:
    """Deterministic per run, attempt and seq, so a re-send dedupes."""
    return f"{run_id}:{attempt}:{seq}"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _write_json(path: Path, data: Any) -> None:
    """Atomically replace `path` with JSON, synced to disk."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class LaunchRefused(Exception):
    """A launch that cannot be run at all; carries the failure to report."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason: FailureReason = reason
        self.message = message


class _Detached(Exception):
    """The executor is stopping; the workload is left running for adoption."""


@dataclass(frozen=True)
class Workspace:
    """The folder of one run attempt and the files in it."""

    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def marker(self) -> Path:
        return self.root / "marker.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def kill(self) -> Path:
        return self.root / "kill.json"

    @property
    def cancel(self) -> Path:
        return self.root / "cancel.json"

    @property
    def journal(self) -> Path:
        return self.root / "reports.jsonl"

    @property
    def outcome(self) -> Path:
        return self.root / "outcome.json"

    @property
    def launch(self) -> Path:
        return self.root / "launch.json"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    def load_journal(self) -> dict[int, RunReport]:
        reports: dict[int, RunReport] = {}
        try:
            lines = self.journal.read_text(encoding="utf-8").splitlines()
        except OSError:
            return reports
        for line in lines:
            try:
                report = RunReport.model_validate_json(line)
            except PydanticValidationError:
                continue  # a torn last line after a crash
            reports[report.seq] = report
        return reports

    def append_journal(self, report: RunReport) -> None:
        with self.journal.open("a", encoding="utf-8") as handle:
            handle.write(report.model_dump_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())


@dataclass
class _Workload:
    """The supervisor shim of one workload, our child or adopted."""

    pid: int
    create_time: float
    proc: asyncio.subprocess.Process | None = None

    async def wait(self, timeout: float) -> bool:
        """True once the shim has exited; waits at most `timeout` seconds."""
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                return False
            return True
        await asyncio.sleep(timeout)
        return not process_alive(self.pid, self.create_time)

    def descendants(self) -> list[psutil.Process]:
        try:
            shim = psutil.Process(self.pid)
            if abs(shim.create_time() - self.create_time) > 0.05:
                return []
            return list(shim.children(recursive=True))
        except psutil.Error:
            return []


def process_alive(pid: int, create_time: float) -> bool:
    """Whether `pid` is still the process that started at `create_time`."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.05:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _find_shim(status_path: Path) -> psutil.Process | None:
    """A live shim writing to `status_path` (a crash between spawn and marker)."""
    needle = str(status_path)
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if str(SHIM) in cmdline and needle in cmdline:
            return proc
    return None


async def kill_workload(workload: _Workload, *, grace: float) -> None:
    """SIGTERM the workload's processes, then SIGKILL whatever is left.

    The shim itself is spared so that it records the exit status. In the
    sandbox, bubblewrap is signalled last: killing it takes the whole pid
    namespace with it at once, so the workload first gets its grace.
    """
    members = workload.descendants()
    workers = [p for p in members if _name(p) != "bwrap"]
    targets = workers or members
    leaders = [p for p in members if _parent(p) == workload.pid]
    groups = [p.pid for p in leaders]
    soft_groups = [p.pid for p in leaders if _name(p) != "bwrap"]
    for proc in targets:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    for pgid in soft_groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGTERM)
    _, alive = await asyncio.to_thread(psutil.wait_procs, targets, grace)
    for _ in range(5):
        remaining = [p for p in workload.descendants() if _running(p)]
        alive = [p for p in alive if _running(p)]
        if not remaining and not alive:
            return
        for proc in [*alive, *remaining]:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        for pgid in groups:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        _, alive = await asyncio.to_thread(psutil.wait_procs, remaining, 1.0)


def _parent(proc: psutil.Process) -> int:
    try:
        return proc.ppid()
    except psutil.Error:
        return -1


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


@dataclass
class _Outcome:
    kind: str  # succeeded | failed | canceled
    reason: FailureReason | None = None
    exit_code: int | None = None
    message: str = ""
    occurred_at: str | None = None  # the workload's exit, executor clock


@dataclass(kw_only=True)
class _Attempt:
    """One launch being handled: its reports, cancel flag and workspace."""

    launch: LaunchRequested
    workspace: Workspace
    journal: dict[int, RunReport] = field(default_factory=dict)
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def run_id(self) -> str:
        return self.launch.run_id

    @property
    def attempt(self) -> int:
        return self.launch.attempt


class LocalExecutor:
    """Consumes launches and cancels for one executor name; runs workloads."""

    def __init__(
        self,
        bus: Bus,
        store: BlobStore,
        settings: Settings,
        *,
        name: str = "local",
        workdir: Path | None = None,
        concurrency: int | None = None,
        cancel_grace: float = 5.0,
        poll_interval: float = 0.1,
        progress_interval: float = ACK_WAIT_SECONDS / 4,
        heartbeat_interval: float | None = None,
        extra_rw_binds: Iterable[tuple[Path, str]] = (),
    ) -> None:
        self._bus = bus
        self._store = store
        self._settings = settings
        self.name = name
        self.workdir = (workdir or settings.workdir).resolve()
        self._concurrency = concurrency or settings.executor_concurrency
        self._grace = cancel_grace
        self._poll = poll_interval
        self._progress_interval = progress_interval
        self._heartbeat = heartbeat_interval or settings.run_heartbeat_seconds
        self._extra_rw_binds = tuple(extra_rw_binds)
        self._active: dict[tuple[str, int], _Attempt] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._detach = asyncio.Event()

    # -- consuming -----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume launches and cancels until `stop` is set.

        Workloads still running at stop are left alive; their launches are
        negatively acknowledged, so the next executor adopts them.
        """
        self._detach = asyncio.Event()
        self.workdir.mkdir(parents=True, exist_ok=True)
        launches = await self._bus.pull_consumer(
            stream=LAUNCH_STREAM,
            durable=f"executor-{self.name}-launch",
            subject=launch_subject(self.name),
        )
        cancels = await self._bus.pull_consumer(
            stream=CONTROL_STREAM,
            durable=f"executor-{self.name}-cancel",
            subject=cancel_subject(self.name),
        )
        log.info("executor_started", executor=self.name, workdir=str(self.workdir))
        self._recover()
        cancel_task = asyncio.create_task(self._cancel_loop(cancels, stop))
        try:
            await self._launch_loop(launches, stop)
        finally:
            stop.set()
            await asyncio.gather(cancel_task, return_exceptions=True)
            # stop pulling before releasing launches, so that a released
            # launch is not delivered again to this executor's last fetch
            for sub in (launches, cancels):
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            self._detach.set()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=DETACH_TIMEOUT)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            log.info("executor_stopped", executor=self.name)

    async def _launch_loop(self, sub: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            free = self._concurrency - len(self._tasks)
            if free <= 0:
                await asyncio.wait(self._tasks, timeout=0.5)
                continue
            try:
                msgs = await fetch_batch(sub, batch=free, timeout=0.5)
            except BusError as exc:
                log.warning("launch_fetch_failed", error=str(exc))
                await _sleep_or_stop(stop, 1.0)
                continue
            for msg in msgs:
                self._spawn(self.handle_launch(msg))

    async def _cancel_loop(self, sub: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                msgs = await fetch_batch(sub, batch=32, timeout=0.5)
            except BusError as exc:
                log.warning("cancel_fetch_failed", error=str(exc))
                await _sleep_or_stop(stop, 1.0)
                continue
            for msg in msgs:
                try:
                    await self.handle_cancel(msg)
                except Exception:
                    log.exception("cancel_handling_failed")
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=2)

    # -- cancels -------------------------------------------------------------

    async def handle_cancel(self, msg: Msg) -> None:
        try:
            cancel = CancelRequested.model_validate_json(msg.data)
        except PydanticValidationError:
            log.error("cancel_malformed", subject=msg.subject)
            await msg.term()
            return
        log.info("cancel_received", run_id=cancel.run_id, attempt=cancel.attempt)
        workspace = self._workspace(cancel.run_id, cancel.attempt)
        if workspace is None or workspace.outcome.exists():
            await msg.ack()
            return
        workspace.root.mkdir(parents=True, exist_ok=True)
        _write_json(workspace.cancel, {"requested_at": _now()})
        active = self._active.get((cancel.run_id, cancel.attempt))
        if active is not None:
            active.cancel_requested.set()
        else:
            await self._cancel_unattended(workspace)
        await msg.ack()

    async def _cancel_unattended(self, workspace: Workspace) -> None:
        """Kill a workload no handler watches; its redelivered launch reports."""
        lock = _lock(workspace)
        if lock is None:
            return  # its handler, in another process, sees cancel.json
        try:
            marker = _read_json(workspace.marker) or {}
            pid, created = marker.get("pid"), marker.get("create_time")
            if pid and created and process_alive(int(pid), float(created)):
                _write_json(workspace.kill, {"reason": "cancel", "at": _now()})
                workload = _Workload(int(pid), float(created))
                await kill_workload(workload, grace=self._grace)
        finally:
            os.close(lock)

    # -- launches ------------------------------------------------------------

    async def handle_launch(self, msg: Msg) -> None:
        try:
            launch = LaunchRequested.model_validate_json(msg.data)
        except PydanticValidationError:
            log.error("launch_malformed", subject=msg.subject)
            await msg.term()
            return
        await self._run_attempt(launch, msg)

    async def _run_attempt(self, launch: LaunchRequested, msg: Msg | None) -> None:
        """Handle one launch; `msg` is None for a workload recovered at start."""
        key = (launch.run_id, launch.attempt)
        if key in self._active:
            log.info(
                "launch_duplicate_in_flight",
                run_id=launch.run_id,
                attempt=launch.attempt,
            )
            if msg is not None:
                await msg.ack()
            return
        workspace = self._workspace(launch.run_id, launch.attempt)
        if workspace is None:
            log.error("launch_unsafe_run_id", run_id=repr(launch.run_id)[:80])
            if msg is not None:
                await msg.term()
            return
        workspace.root.mkdir(parents=True, exist_ok=True)
        lock = _lock(workspace)
        if lock is None:
            # another executor process on this machine handles this attempt
            log.info("launch_held_elsewhere", run_id=launch.run_id)
            if msg is not None:
                await msg.nak(delay=10)
            return
        attempt = _Attempt(launch=launch, workspace=workspace)
        self._active[key] = attempt
        heartbeat = asyncio.create_task(self._keep_alive(msg)) if msg else None
        try:
            with structlog.contextvars.bound_contextvars(
                run_id=launch.run_id, attempt=launch.attempt
            ):
                if not workspace.launch.exists():
                    _write_json(workspace.launch, launch.model_dump(mode="json"))
                await self._handle(attempt, msg)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            del self._active[key]
            os.close(lock)

    async def _handle(self, attempt: _Attempt, msg: Msg | None) -> None:
        try:
            await self._execute(attempt)
        except _Detached:
            log.info("launch_released", detail="the workload keeps running")
            if msg is not None:
                with contextlib.suppress(Exception):
                    await msg.nak()
            return
        except asyncio.CancelledError:
            log.info("launch_released", detail="interrupted by shutdown")
            if msg is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(msg.nak())
            raise
        except Exception as exc:
            deliveries = _deliveries(msg) if msg is not None else 1
            log.exception("launch_handling_failed", deliveries=deliveries)
            if msg is None:
                return  # the launch's redelivery tries again
            if deliveries < MAX_DELIVERIES_BEFORE_GIVING_UP:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=min(30, 2**deliveries))
                return
            with contextlib.suppress(Exception):
                await self._finish(
                    attempt,
                    _Outcome("failed", "internal_error", message=str(exc)[:500]),
                )
        if msg is not None:
            with contextlib.suppress(Exception):
                await msg.ack()

    def _recover(self) -> None:
        """Resume every attempt this machine started and has not finished.

        Runs at start, so workloads that survived a crash of the executor are
        adopted (or found finished, or lost) at once, not only when their
        unacknowledged launch is delivered again after the ack wait.
        """
        for path in sorted(self.workdir.glob("*/*/launch.json")):
            ws = Workspace(path.parent)
            if ws.outcome.exists() or not ws.marker.exists():
                continue
            try:
                launch = LaunchRequested.model_validate_json(path.read_bytes())
            except (OSError, PydanticValidationError):
                log.warning("recover_unreadable_launch", path=str(path))
                continue
            expected = self._workspace(launch.run_id, launch.attempt)
            if expected is None or expected.root != ws.root:
                continue
            log.info("recovering_attempt", run_id=launch.run_id, attempt=launch.attempt)
            self._spawn(self._run_attempt(launch, None))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._progress_interval)
            try:
                await msg.in_progress()
            except Exception as exc:  # the bus may be reconnecting
                log.warning("launch_progress_failed", error=str(exc))

    async def _execute(self, attempt: _Attempt) -> None:
        ws = attempt.workspace
        ws.root.mkdir(parents=True, exist_ok=True)
        attempt.journal = ws.load_journal()
        if ws.outcome.exists():
            log.info("launch_already_finished", reports=len(attempt.journal))
            await self._resend(attempt)
            return
        if attempt.journal:
            await self._resend(attempt)
            if any(r.kind in _TERMINAL for r in attempt.journal.values()):
                _write_json(ws.outcome, {"finished_at": _now()})
                return
        if ws.marker.exists():
            await self._resume(attempt)
            return
        try:
            workload = await self._start(attempt)
        except LaunchRefused as refused:
            log.warning(
                "launch_refused", reason=refused.reason, message=refused.message
            )
            await self._finish(
                attempt, _Outcome("failed", refused.reason, message=refused.message)
            )
            return
        if workload is None:  # canceled before it started
            await self._finish(
                attempt, _Outcome("canceled", message="canceled before start")
            )
            return
        await self._supervise(attempt, workload)

    async def _start(self, attempt: _Attempt) -> _Workload | None:
        launch, ws = attempt.launch, attempt.workspace
        if self._cancelled(attempt):
            return None
        try:
            policy = choose_policy(self._settings)
        except SandboxUnavailable as exc:
            raise LaunchRefused("sandbox_unavailable", exc.detail) from exc
        if policy.mode is SandboxMode.UNSANDBOXED:
            log.warning(
                "launch_unsandboxed",
                detail="bubblewrap is missing; the workload runs WITHOUT a sandbox "
                "(allow_unsandboxed is set)",
            )
        plan = launch.plan
        if plan.secret_refs:
            raise LaunchRefused(
                "exec_failed", "the local executor cannot inject secrets (secret_refs)"
            )
        for path in (ws.inputs, ws.outputs, ws.tmp):
            if path.exists():
                shutil.rmtree(path)  # a launch that never started: start clean
            path.mkdir(parents=True)
        await self._fetch_inputs(attempt)
        if self._cancelled(attempt):
            return None
        unsandboxed = policy.mode is SandboxMode.UNSANDBOXED
        layout = SandboxLayout(
            inputs_dir=ws.inputs,
            outputs_dir=ws.outputs,
            extra_rw_binds=self._extra_rw_binds,
        )
        argv = build_argv(policy, plan.command, layout)
        env = workload_env(
            run_id=launch.run_id,
            attempt=launch.attempt,
            parameters=plan.parameters,
            cpu=plan.resources.cpu,
            **(
                {
                    "inputs_dir": str(ws.inputs),
                    "outputs_dir": str(ws.outputs),
                    "tmp_dir": str(ws.tmp),
                }
                if unsandboxed
                else {}
            ),
        )
        shim_argv = [
            sys.executable,
            "-I",
            str(SHIM),
            str(ws.status),
            str(memory_limit_bytes(plan.resources.memory_mb)),
            "--",
            *argv,
        ]
        _write_json(
            ws.marker,
            {
                "state": "starting",
                "launch_id": launch.launch_id,
                "run_id": launch.run_id,
                "attempt": launch.attempt,
                "sandbox": policy.mode.value,
                "written_at": _now(),
            },
        )
        log_fd = os.open(ws.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                *shim_argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                cwd=str(ws.tmp if unsandboxed else ws.root),
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise LaunchRefused(
                "exec_failed", f"cannot start the supervisor: {exc}"
            ) from exc
        finally:
            os.close(log_fd)
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            created = time.time()
        _write_json(
            ws.marker,
            {
                "state": "running",
                "launch_id": launch.launch_id,
                "run_id": launch.run_id,
                "attempt": launch.attempt,
                "sandbox": policy.mode.value,
                "pid": proc.pid,
                "create_time": created,
                "written_at": _now(),
            },
        )
        log.info("workload_started", pid=proc.pid, sandbox=policy.mode.value)
        await self._report(attempt, "started")
        return _Workload(proc.pid, created, proc)

    async def _fetch_inputs(self, attempt: _Attempt) -> None:
        for name, item in sorted(attempt.launch.plan.inputs.items()):
            if not _SAFE_NAME.match(name):
                raise LaunchRefused(
                    "input_verification_failed", f"bad input name {name!r}"
                )
            target = attempt.workspace.inputs / name
            for tries in range(3):
                try:
                    await self._store.download_verified(
                        item.object_key, target, item.sha256
                    )
                    break
                except DigestMismatch as exc:
                    raise LaunchRefused(
                        "input_verification_failed",
                        f"input {name}: content does not match sha256 {item.sha256}",
                    ) from exc
                except StorageError as exc:
                    if tries == 2:
                        raise LaunchRefused(
                            "input_verification_failed",
                            f"input {name}: cannot fetch it: {exc.detail}",
                        ) from exc
                    await asyncio.sleep(0.5 * (tries + 1))
            target.chmod(0o444)
            log.info("input_verified", input=name, sha256=item.sha256, size=item.size)

    async def _resume(self, attempt: _Attempt) -> None:
        """A launch whose workload was started before: adopt, finish or lose it."""
        ws = attempt.workspace
        marker = _read_json(ws.marker) or {}
        pid, created = marker.get("pid"), marker.get("create_time")
        if ws.status.exists():
            log.info("workload_finished_unattended")
            await self._conclude(attempt, killed_for=self._kill_reason(ws))
            return
        if pid and created and process_alive(int(pid), float(created)):
            log.info("workload_adopted", pid=pid)
            await self._supervise(attempt, _Workload(int(pid), float(created)))
            return
        if not pid:
            shim = _find_shim(ws.status)
            if shim is not None:
                log.info("workload_adopted_by_cmdline", pid=shim.pid)
                await self._supervise(attempt, _Workload(shim.pid, shim.create_time()))
                return
        log.warning("workload_lost", pid=pid)
        if self._kill_reason(ws) == "cancel" or ws.cancel.exists():
            await self._conclude_with(attempt, _Outcome("canceled", message="canceled"))
            return
        await self._conclude_with(
            attempt,
            _Outcome(
                "failed",
                "lost",
                message="the workload disappeared without an exit status "
                "(executor restarted while it ran)",
            ),
        )

    async def _supervise(self, attempt: _Attempt, workload: _Workload) -> None:
        if not any(r.kind == "started" for r in attempt.journal.values()):
            await self._report(attempt, "started")
        ws = attempt.workspace
        deadline = workload.create_time + attempt.launch.plan.timeout_seconds
        killed_for = self._kill_reason(ws)
        next_beat = time.monotonic() + self._heartbeat
        while not await workload.wait(self._poll):
            if self._detach.is_set():
                raise _Detached()
            if time.monotonic() >= next_beat:
                await self._beat(attempt)
                next_beat = time.monotonic() + self._heartbeat
            if killed_for is not None:
                continue
            if self._cancelled(attempt):
                killed_for = "cancel"
            elif time.time() >= deadline:
                killed_for = "timeout"
            else:
                continue
            log.info("workload_killing", because=killed_for)
            _write_json(ws.kill, {"reason": killed_for, "at": _now()})
            await kill_workload(workload, grace=self._grace)
        log.info("workload_exited")
        await self._conclude(attempt, killed_for=killed_for)

    async def _beat(self, attempt: _Attempt) -> None:
        """Say the workload is alive; a bus outage only skips this one."""
        try:
            await self._report(attempt, "heartbeat", tries=1)
        except BusError as exc:
            log.warning("heartbeat_publish_failed", error=exc.detail)

    async def _conclude(self, attempt: _Attempt, *, killed_for: str | None) -> None:
        status = _read_json(attempt.workspace.status)
        outcome = self._outcome(attempt, status, killed_for)
        outcome.occurred_at = _exit_time(status)
        await self._conclude_with(attempt, outcome)

    def _outcome(
        self, attempt: _Attempt, status: dict[str, Any] | None, killed_for: str | None
    ) -> _Outcome:
        exit_code = status.get("exit_code") if isinstance(status, dict) else None
        if killed_for == "cancel":
            return _Outcome(
                "canceled", exit_code=exit_code, message="canceled by request"
            )
        if killed_for == "timeout":
            limit = attempt.launch.plan.timeout_seconds
            return _Outcome(
                "failed",
                "timeout",
                exit_code=exit_code,
                message=f"killed after the {limit} s timeout",
            )
        if not isinstance(status, dict):
            return _Outcome(
                "failed", "lost", message="the workload left no exit status"
            )
        if "exec_error" in status:
            return _Outcome("failed", "exec_failed", message=str(status["exec_error"]))
        if exit_code == 0:
            return _Outcome("succeeded", exit_code=0)
        tail = _log_tail(attempt.workspace.log)
        if (
            any(sign in tail for sign in _OOM_SIGNS)
            or status.get("signal") == 9
            or exit_code == 137
        ):
            limit = attempt.launch.plan.resources.memory_mb
            return _Outcome(
                "failed",
                "out_of_memory",
                exit_code=exit_code,
                message=_with_tail(
                    f"the workload ran out of memory (limit {limit} MB)", tail
                ),
            )
        return _Outcome(
            "failed",
            "nonzero_exit",
            exit_code=exit_code,
            message=_with_tail(f"exit code {exit_code}", tail),
        )

    async def _conclude_with(self, attempt: _Attempt, outcome: _Outcome) -> None:
        """Upload outputs and the log, report metrics, then the outcome."""
        try:
            await self._upload_outputs(attempt)
        except StorageError as exc:
            log.error("output_upload_failed", error=exc.detail)
            if outcome.kind == "succeeded":
                outcome = _Outcome(
                    "failed",
                    "output_upload_failed",
                    exit_code=outcome.exit_code,
                    message=f"outputs could not be stored: {exc.detail}",
                )
        metrics, problem = read_metrics(attempt.workspace.outputs / METRICS_FILE)
        if problem:
            log.warning("metrics_rejected", problem=problem)
        reported = any(r.kind == "metrics" for r in attempt.journal.values())
        if (metrics or problem) and not reported:
            await self._report(attempt, "metrics", metrics=metrics, message=problem)
        await self._finish(attempt, outcome)

    async def _upload_outputs(self, attempt: _Attempt) -> None:
        reported = {
            (r.artifact.kind, r.artifact.name)
            for r in attempt.journal.values()
            if r.artifact is not None
        }
        ws = attempt.workspace
        files = [(name, path, "output") for name, path in _output_files(ws.outputs)]
        if ws.log.is_file():
            files.append((LOG_ARTIFACT, ws.log, "log"))
        for name, path, kind in files:
            if (kind, name) in reported:
                continue
            blob = await self._put_with_retry(path)
            artifact = ArtifactInfo(
                name=name,
                sha256=blob.sha256,
                size=blob.size,
                object_key=blob.key,
                kind=kind,  # type: ignore[arg-type]
            )
            log.info(
                "artifact_stored", artifact=name, sha256=blob.sha256, size=blob.size
            )
            await self._report(attempt, "artifact", artifact=artifact)

    async def _put_with_retry(self, path: Path) -> Any:
        for tries in range(3):
            try:
                return await self._store.put_file(path)
            except StorageError:
                if tries == 2:
                    raise
                await asyncio.sleep(0.5 * (tries + 1))
        raise AssertionError("unreachable")

    async def _finish(self, attempt: _Attempt, outcome: _Outcome) -> None:
        if not any(r.kind in _TERMINAL for r in attempt.journal.values()):
            await self._report(
                attempt,
                outcome.kind,
                exit_code=outcome.exit_code,
                reason=outcome.reason,
                message=outcome.message[-MESSAGE_TAIL_CHARS:],
                occurred_at=outcome.occurred_at,
            )
        _write_json(
            attempt.workspace.outcome,
            {"kind": outcome.kind, "reason": outcome.reason, "finished_at": _now()},
        )
        log.info("launch_finished", outcome=outcome.kind, reason=outcome.reason)

    # -- reports -------------------------------------------------------------

    async def _report(
        self, attempt: _Attempt, kind: str, *, tries: int = 8, **fields: Any
    ) -> RunReport:
        seq = max(attempt.journal, default=0) + 1
        report = RunReport.model_validate(
            {
                "report_id": report_id(attempt.run_id, attempt.attempt, seq),
                "project_id": attempt.launch.project_id,
                "run_id": attempt.run_id,
                "attempt": attempt.attempt,
                "seq": seq,
                "kind": kind,
                "sent_at": _now(),
                **fields,
            }
        )
        attempt.workspace.append_journal(report)
        attempt.journal[seq] = report
        await self._publish(report, tries=tries)
        return report

    async def _resend(self, attempt: _Attempt) -> None:
        """Publish the journal again (same ids); past heartbeats say nothing."""
        for seq in sorted(attempt.journal):
            if attempt.journal[seq].kind != "heartbeat":
                await self._publish(attempt.journal[seq])

    async def _publish(self, report: RunReport, *, tries: int = 8) -> None:
        delay = 0.2
        for tried in range(tries):
            try:
                await self._bus.publish(
                    report_subject(report.run_id),
                    report.model_dump_json().encode(),
                    msg_id=report.report_id,
                )
                return
            except BusError as exc:
                if tried == tries - 1:
                    raise
                log.warning("report_publish_retry", seq=report.seq, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- helpers -------------------------------------------------------------

    def _workspace(self, run_id: str, attempt: int) -> Workspace | None:
        if not _SAFE_NAME.match(run_id) or attempt < 0:
            return None
        return Workspace(self.workdir / run_id / str(attempt))

    def _cancelled(self, attempt: _Attempt) -> bool:
        return attempt.cancel_requested.is_set() or attempt.workspace.cancel.exists()

    @staticmethod
    def _kill_reason(ws: Workspace) -> str | None:
        data = _read_json(ws.kill)
        return data.get("reason") if isinstance(data, dict) else None


_TERMINAL = ("succeeded", "failed", "canceled")


def _lock(ws: Workspace) -> int | None:
    """An exclusive lock on the workspace (released when the fd closes or the
    process dies), or None when another process holds it."""
    fd = os.open(ws.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _output_files(root: Path) -> list[tuple[str, Path]]:
    """Regular files under `root`, never following symlinks, sorted by name."""
    found: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for filename in files:
            path = Path(folder) / filename
            try:
                mode = path.lstat().st_mode
            except OSError:
                continue
            if not stat.S_ISREG(mode):
                log.warning("output_skipped_not_a_file", path=filename[:200])
                continue
            name = path.relative_to(root).as_posix()
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                log.warning("output_skipped_bad_name")
                continue
            found.append((name, path))
    return sorted(found)


def read_metrics(path: Path) -> tuple[dict[str, float], str]:
    """The top-level finite numbers of /outputs/metrics.json, and why the
    file or some of its entries were refused ("" when nothing was).

    No file is no metrics and no problem. The file stays an artifact either
    way; the run's outcome never depends on it.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return {}, ""
    except OSError as exc:
        return {}, f"{METRICS_FILE} could not be read ({exc.strerror})"
    if not stat.S_ISREG(mode):
        return {}, f"{METRICS_FILE} is not a regular file; no metrics were recorded"
    try:
        if path.stat().st_size > METRICS_MAX_BYTES:
            return {}, (
                f"{METRICS_FILE} is larger than {METRICS_MAX_BYTES} bytes; "
                "no metrics were recorded"
            )
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        return {}, f"{METRICS_FILE} could not be read ({exc.strerror})"
    except UnicodeDecodeError as exc:
        return {}, (
            f"{METRICS_FILE} is not UTF-8 (byte {exc.start}); no metrics were recorded"
        )
    except (ValueError, RecursionError) as exc:
        return {}, f"{METRICS_FILE} is not valid JSON ({exc}); no metrics were recorded"
    if not isinstance(data, dict):
        return {}, (
            f"{METRICS_FILE} holds {_json_kind(data)}, not an object of numbers; "
            "no metrics were recorded"
        )
    return _metric_values(data)


def _metric_values(data: dict[str, Any]) -> tuple[dict[str, float], str]:
    metrics: dict[str, float] = {}
    refused: list[str] = []
    for key, value in data.items():
        number, why = _metric_value(key, value)
        if number is None:
            refused.append(f"{_quoted(key)} {why}")
        else:
            metrics[key] = number
    if not refused:
        return metrics, ""
    shown = "; ".join(refused[:METRICS_REFUSALS_SHOWN])
    if len(refused) > METRICS_REFUSALS_SHOWN:
        shown += f"; and {len(refused) - METRICS_REFUSALS_SHOWN} more"
    kept = f"the other {len(metrics)} were recorded" if metrics else "none recorded"
    return metrics, f"{METRICS_FILE}: refused {shown} ({kept})"


def _metric_value(key: str, value: Any) -> tuple[float | None, str]:
    """One entry of metrics.json as a metric, or why it is not one."""
    if _UNSTORABLE.search(key):
        return None, "has a name that cannot be stored (NUL or a lone surrogate)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"is {_json_kind(value)}, not a number"
    try:
        number = float(value)
    except OverflowError:
        return None, "is too large for a number"
    if not math.isfinite(number):
        return None, f"is {value}, not a finite number"
    return number, ""


def _json_kind(value: Any) -> str:
    kinds = {bool: "a boolean", str: "a string", dict: "an object", list: "a list"}
    for kind, noun in kinds.items():
        if isinstance(value, kind):
            return noun
    return "null" if value is None else "a number"


def _quoted(key: str) -> str:
    """A metric's name for a message: quoted, cut, NUL and surrogates escaped."""
    quoted = json.dumps(key[:100], ensure_ascii=False)
    return quoted.encode("utf-8", "backslashreplace").decode("utf-8")


def _exit_time(status: dict[str, Any] | None) -> str | None:
    """The workload's exit time recorded by the shim, as ISO 8601 UTC."""
    finished = status.get("finished_at") if isinstance(status, dict) else None
    if not isinstance(finished, int | float) or not math.isfinite(finished):
        return None
    stamp = datetime.fromtimestamp(finished, UTC)
    return stamp.isoformat().replace("+00:00", "Z")


def _with_tail(headline: str, tail: str) -> str:
    """`headline`, then the log's tail on the next lines when there is one."""
    tail = tail.strip()
    return f"{headline}\n{tail}" if tail else headline


def _log_tail(path: Path, limit: int = MESSAGE_TAIL_CHARS) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
