"""`animus demo`, the main job: a real model trained on real data, on the record.

Uses the stack that `animus up` runs under ANIMUS_HOME, or starts one when
none runs; creates project `demo`, registers the UCI Wine data that
scikit-learn ships and the training script as datasets, submits a training
run, follows it, prints what it produced with digests and lineage, verifies
the chain, then runs the same spec again to show equal spec and plan hashes
and an identical model. Everything goes through the public HTTP API, as any
client would.

The platform is chosen before anything is sent: the gateway must be the one
of this home's stack (it reports the stack's instance id), or, when
ANIMUS_DATABASE_URL names an outside platform, whatever answers at
ANIMUS_GATEWAY_HOST:ANIMUS_GATEWAY_PORT. A gateway of another folder's stack
is refused, as the demo would write to one platform and verify another.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from animus.errors import AnimusError, ConfigurationError
from animus.settings import Settings

PROJECT = "demo"
TERMINAL = {"succeeded", "failed", "canceled"}
RUN_TIMEOUT = 600.0
START_TIMEOUT = 240.0


class DemoError(AnimusError):
    title = "Demo failed"


def wine_data_file() -> Path:
    """The UCI Wine data file inside the installed scikit-learn package."""
    path = Path(str(resources.files("sklearn.datasets") / "data" / "wine_data.csv"))
    if not path.is_file():
        raise DemoError(f"scikit-learn's wine data file is missing at {path}")
    return path


def training_script() -> Path:
    here = Path(__file__).resolve().parent.parent / "examples" / "wine" / "train.py"
    if not here.is_file():
        raise DemoError(f"training script not found at {here}")
    return here


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _problem_text(response: httpx.Response) -> str:
    """A problem-details answer as one line: its detail and first field error."""
    try:
        problem = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if not isinstance(problem, dict):
        return str(problem)[:200]
    detail = str(problem.get("detail", ""))
    errors = problem.get("errors") or []
    if errors and isinstance(errors[0], dict):
        first = errors[0]
        detail += f" ({first.get('field', '')}: {first.get('message', '')})"
    return detail


@dataclass
class Api:
    """A thin client of the gateway that turns problem details into DemoError."""

    client: httpx.Client

    def call(
        self, method: str, path: str, ok: tuple[int, ...] = (200,), **kw: Any
    ) -> Any:
        try:
            response = self.client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise DemoError(f"{method} {path}: {exc}") from exc
        if response.status_code not in ok:
            detail = _problem_text(response)
            raise DemoError(
                f"{method} {path} answered {response.status_code}: {detail}"
            )
        return response.json() if response.content else None


class DemoJob:
    def __init__(self, api: Api, console: Console, *, quiet: bool) -> None:
        self.api = api
        self.console = console
        self.quiet = quiet

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def ensure_project(self) -> None:
        self.api.call(
            "POST",
            "/projects",
            ok=(201, 409),
            json={"project_id": PROJECT, "name": "Demo", "description": "animus demo"},
        )

    def ensure_dataset(self, dataset_id: str, name: str, source: Path) -> int:
        """Register a dataset and upload `source` unless its latest version has it."""
        self.api.call(
            "POST",
            f"/projects/{PROJECT}/datasets",
            ok=(201, 409),
            json={"dataset_id": dataset_id, "name": name},
        )
        digest = _sha256(source)
        versions = self.api.call(
            "GET", f"/projects/{PROJECT}/datasets/{dataset_id}/versions"
        )
        items = versions["items"] if isinstance(versions, dict) else versions
        for item in sorted(items, key=lambda v: v["version"], reverse=True):
            if item["sha256"] == digest:
                self.say(
                    f"dataset {dataset_id} v{item['version']} "
                    f"already holds {source.name}"
                )
                return int(item["version"])
        with source.open("rb") as body:
            version = self.api.call(
                "POST",
                f"/projects/{PROJECT}/datasets/{dataset_id}/versions",
                ok=(201,),
                content=body,
                headers={
                    "Content-Type": "application/octet-stream",
                    "X-Filename": source.name,
                    "X-Content-SHA256": digest,
                },
            )
        self.say(
            f"uploaded {source.name} as {dataset_id} v{version['version']} "
            f"sha256 {digest}"
        )
        return int(version["version"])

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        run: dict[str, Any] = self.api.call(
            "POST", f"/projects/{PROJECT}/runs", ok=(201,), json=spec
        )
        return run

    def follow(self, run_id: str) -> dict[str, Any]:
        """Poll the run until it is terminal, showing its status."""
        deadline = time.monotonic() + RUN_TIMEOUT
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=self.quiet,
        ) as progress:
            task = progress.add_task(f"run {run_id[:12]}: submitted")
            while time.monotonic() < deadline:
                run = self.api.call(
                    "GET", f"/projects/{PROJECT}/runs/{run_id}", ok=(200, 404)
                )
                status = run.get("status") if run and "status" in run else "submitted"
                progress.update(task, description=f"run {run_id[:12]}: {status}")
                if status in TERMINAL:
                    return dict(run)
                time.sleep(0.5)
        raise DemoError(f"run {run_id} did not finish within {RUN_TIMEOUT:.0f}s")


def _spec(wine_version: int, code_version: int) -> dict[str, Any]:
    return {
        "name": "wine-random-forest",
        "command": ["python", "/inputs/code", "/inputs/wine", "/outputs"],
        "inputs": {
            "wine": {"dataset": "wine", "version": wine_version},
            "code": {"dataset": "wine-train-code", "version": code_version},
        },
        "parameters": {"seed": 42, "test_size": 0.25, "n_estimators": 200},
        "resources": {"cpu": 1, "memory_mb": 2048},
        "timeout_seconds": 600,
    }


def _artifact(run: dict[str, Any], name: str) -> dict[str, Any] | None:
    for item in run.get("artifacts", []):
        if item["name"] == name:
            return dict(item)
    return None


def _verify_chain(settings: Settings) -> dict[str, Any]:
    from animus.db import app_dsn
    from animus.stack import resolve_services
    from animus.verify import verify_chain

    result = verify_chain(app_dsn(resolve_services(settings)))
    brk = result.first_break
    return {
        "verified": result.verified,
        "events": result.events,
        "head": result.head_hash.hex(),
        "first_break": None
        if brk is None
        else {"position": brk.position, "reason": brk.reason},
    }


def run_job(
    api: Api, console: Console, settings: Settings, *, quiet: bool
) -> dict[str, Any]:
    job = DemoJob(api, console, quiet=quiet)
    job.ensure_project()
    wine = job.ensure_dataset("wine", "UCI Wine", wine_data_file())
    code = job.ensure_dataset(
        "wine-train-code", "Wine training script", training_script()
    )
    spec = _spec(wine, code)

    first = job.submit(spec)
    job.say(f"submitted run {first['run_id']} (spec {first['spec_hash'][:16]}…)")
    run = job.follow(first["run_id"])
    lineage = api.call("GET", f"/projects/{PROJECT}/runs/{first['run_id']}/lineage")
    if run["status"] != "succeeded":
        reason = run.get("failure_reason") or run["status"]
        raise DemoError(f"run {first['run_id']} ended {run['status']}: {reason}")
    _show_run(console, run, lineage, quiet=quiet)

    second = job.submit(spec)
    job.say(f"submitted the same spec again as run {second['run_id']}")
    rerun = job.follow(second["run_id"])
    if rerun["status"] != "succeeded":
        raise DemoError(f"rerun {second['run_id']} ended {rerun['status']}")
    model_a, model_b = _artifact(run, "model.pkl"), _artifact(rerun, "model.pkl")
    chain = _verify_chain(settings)
    return {
        "run_id": first["run_id"],
        "status": run["status"],
        "metrics": run.get("metrics", {}),
        "artifacts": [
            {"name": a["name"], "sha256": a["sha256"], "size": a["size"]}
            for a in run.get("artifacts", [])
        ],
        "spec_hash": first["spec_hash"],
        "plan_hash": first["plan_hash"],
        "lineage": lineage,
        "rerun": {
            "run_id": second["run_id"],
            "spec_hash": second["spec_hash"],
            "plan_hash": second["plan_hash"],
            "model_sha256_equal": bool(
                model_a and model_b and model_a["sha256"] == model_b["sha256"]
            ),
        },
        "chain": {"verified": chain["verified"], "events": chain["events"]},
    }


def _show_run(
    console: Console, run: dict[str, Any], lineage: Any, *, quiet: bool
) -> None:
    if quiet:
        return
    console.print(
        f"\n[bold]run {run['run_id']}[/]  status [bold green]{run['status']}[/]"
    )
    metrics = Table("metric", "value", title="metrics")
    for name, value in sorted(run.get("metrics", {}).items()):
        metrics.add_row(name, f"{value:.4f}")
    console.print(metrics)
    artifacts = Table("artifact", "size", "sha256", title="artifacts")
    for item in run.get("artifacts", []):
        artifacts.add_row(item["name"], str(item["size"]), item["sha256"])
    console.print(artifacts)
    console.print(_lineage_tree(run["run_id"], lineage))


def _lineage_tree(run_id: str, lineage: Any) -> Tree:
    """Inputs, with their digests, flowing through the run into its outputs."""
    tree = Tree("[bold]lineage[/]")
    lineage = lineage if isinstance(lineage, dict) else {}
    inputs = tree.add("inputs")
    for item in lineage.get("inputs", []):
        inputs.add(f"dataset {item['id']}  sha256 {item['sha256'][:16]}…")
    run = tree.add(f"run {run_id}")
    for item in lineage.get("outputs", []):
        run.add(f"{item['kind']} {item['name']}  sha256 {item['sha256'][:16]}…")
    return tree


def _report(console: Console, result: dict[str, Any]) -> None:
    rerun = result["rerun"]
    model = "identical" if rerun["model_sha256_equal"] else "DIFFERENT"
    console.print(
        f"\nrerun {rerun['run_id']}: {_hashes(result, rerun)}, model sha256 {model}"
    )
    chain = result["chain"]
    mark = "[green]verified[/]" if chain["verified"] else "[red]BROKEN[/]"
    console.print(f"hash chain: {chain['events']} events {mark}")


def _hashes(first: dict[str, Any], rerun: dict[str, Any]) -> str:
    """How the rerun's spec and plan hashes compare with the first run's."""
    spec, plan = first["spec_hash"], first["plan_hash"]
    if rerun["spec_hash"] == spec and rerun["plan_hash"] == plan:
        return f"spec and plan hashes equal (spec {spec[:16]}…, plan {plan[:16]}…)"
    return ", ".join(
        f"{name} hash {'equal' if rerun[key] == first[key] else 'DIFFERENT'} "
        f"({first[key][:16]}…, then {rerun[key][:16]}…)"
        for name, key in (("spec", "spec_hash"), ("plan", "plan_hash"))
    )


def _healthy(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    return False


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(url + "/healthz", timeout=2)
        return True
    return False


def _platform(
    settings: Settings, console: Console, *, quiet: bool
) -> tuple[str, subprocess.Popen[bytes] | None]:
    """The gateway to use, and the `animus up` the demo started, if it did.

    Raises:
        ConfigurationError: a gateway answers that is not this home's stack.
        DemoError: the stack did not start or become ready.
    """
    from animus.stack import gateway_url, read_stack

    info = read_stack(settings)
    if info is not None:  # this home's stack, perhaps still starting
        url = str(info.get("gateway_url") or gateway_url(settings))
        _await_ready(settings, url, info.get("instance_id"), None)
        return url, None
    url = gateway_url(settings)
    if not _answers(url):
        return url, _start_stack(settings, console, quiet=quiet)
    if settings.database_url:  # an outside platform named by settings
        return url, None
    raise ConfigurationError(
        f"ANIMUS_HOME: a platform answers at {url}, but no `animus up` runs "
        f"under {settings.home.resolve()}; run the demo in the folder where "
        "`animus up` runs, or set ANIMUS_HOME to that folder's .animus"
    )


def _await_ready(
    settings: Settings,
    url: str,
    instance: str | None,
    process: subprocess.Popen[bytes] | None,
) -> None:
    """Wait until the gateway of this home's stack is ready.

    With `process` (an `animus up` the demo started), its instance id is
    learnt from the stack file once it has written one.
    """
    from animus.stack import gateway_instance, read_stack

    log = settings.home.resolve() / "logs" / "up.log"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                raise DemoError(
                    f"`animus up` exited with {process.returncode}: {_why(log)}"
                )
            info = read_stack(settings)
            if info is None or info.get("pid") != process.pid:
                time.sleep(0.5)
                continue
            instance = info.get("instance_id")
        with contextlib.suppress(httpx.HTTPError):
            answering = gateway_instance(url)
            if instance is not None and answering != instance:
                raise ConfigurationError(
                    f"ANIMUS_GATEWAY_PORT: the gateway at {url} is not the one "
                    f"of the `animus up` under {settings.home.resolve()}"
                )
            if _healthy(url):
                return
        time.sleep(0.5)
    raise DemoError(
        f"the platform did not become ready in {START_TIMEOUT:.0f}s; see {log.parent}"
    )


def _why(log: Path) -> str:
    """The one line `animus up` ended with, or where to look."""
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").strip().splitlines()
        if lines and lines[-1].startswith("animus: "):
            return lines[-1].removeprefix("animus: ")
    return f"see {log}"


def _start_stack(
    settings: Settings, console: Console, *, quiet: bool
) -> subprocess.Popen[bytes]:
    from animus.stack import gateway_url

    logs = settings.home.resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = (logs / "up.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "animus", "up"],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ),
    )
    try:
        with (
            console.status("starting the platform (PostgreSQL, NATS, S3, 5 processes)…")
            if not quiet
            else contextlib.nullcontext()
        ):
            _await_ready(settings, gateway_url(settings), None, process)
    except BaseException:
        _stop_stack(process)
        raise
    return process


def _stop_stack(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _console(*, stderr: bool) -> Console:
    """A console that never breaks a line of its own: a digest stays whole.

    Outside a terminal (a file, a pipe) there is no width to keep to, so
    tables get room for full digests too.
    """
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def run_demo(settings: Settings, *, as_json: bool) -> int:
    """Run the main job; return the process exit code."""
    from animus.telemetry import configure_logging

    configure_logging(level="warning", fmt="console")
    console = _console(stderr=as_json)
    url, stack = _platform(settings, console, quiet=as_json)
    token = next(iter(settings.dev_tokens))
    try:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as client:
            result = run_job(Api(client), console, settings, quiet=as_json)
        if as_json:
            result.pop("lineage", None)
            print(json.dumps(result, sort_keys=True))
        else:
            _report(console, result)
    finally:
        if stack is not None:  # after the summary: the platform is done with
            if not as_json:
                console.print("stopping the platform that the demo started…")
            _stop_stack(stack)
    if stack is not None:  # on stderr with --json, beside the JSON
        console.print(
            f"To explore, keep one running: `animus up`, then the API at {url} "
            f"and its docs at {url}/docs"
        )
    ok = (
        result["status"] == "succeeded"
        and result["rerun"]["model_sha256_equal"]
        and result["chain"]["verified"]
    )
    return 0 if ok else 1
