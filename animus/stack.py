"""`animus up`: the whole platform on one machine, and how other commands find it.

Services left unset in settings start embedded from their wheels under
`ANIMUS_HOME` (default `./.animus`); the platform processes then run as
children of this supervisor, which restarts a crashed one and stops them all
on Ctrl-C. While it runs, `stack.json` tells other commands where things are,
including the id of this `animus up`, which its gateway reports in the
`Animus-Instance` header of /healthz: a client checks it talks to the stack
of its own ANIMUS_HOME, not to another one on the same port.

A port another process holds stops `up` at start, naming the setting that
chooses it; what was already started is stopped again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import structlog
from rich.console import Console

from animus.errors import AnimusError, ConfigurationError
from animus.settings import INSTANCE_HEADER, Settings

log = structlog.get_logger(__name__)
out = Console(stderr=True, highlight=False)

PROCESS_ORDER = (
    "projector",
    "relay",
    "checkpointer",
    "coordinator",
    "executor",
    "gateway",
)
RESTART_LIMIT = 5
PORT_SETTINGS = {
    "postgres": "ANIMUS_EMBEDDED_POSTGRES_PORT",
    "nats": "ANIMUS_EMBEDDED_NATS_PORT",
    "s3": "ANIMUS_EMBEDDED_S3_PORT",
    "gateway": "ANIMUS_GATEWAY_PORT",
}


def port_taken(service: str, port: int) -> ConfigurationError:
    return ConfigurationError(
        f"{PORT_SETTINGS[service]}: port {port} is in use "
        "(is another `animus up` running?)"
    )


def stack_file(settings: Settings) -> Path:
    return settings.home.resolve() / "stack.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_stack(settings: Settings) -> dict[str, Any] | None:
    """The running stack's addresses, or None when no `animus up` is alive."""
    path = stack_file(settings)
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if _pid_alive(int(info.get("pid", 0))) else None


def resolve_services(settings: Settings) -> Settings:
    """Fill unset service addresses from a running `animus up`."""
    info = read_stack(settings)
    if info is None:
        return settings
    update = {
        key: info[key]
        for key in ("database_url", "nats_url", "s3_endpoint")
        if getattr(settings, key) is None and info.get(key)
    }
    return settings.model_copy(update=update) if update else settings


def gateway_url(settings: Settings) -> str:
    return f"http://{settings.gateway_host}:{settings.gateway_port}"


def gateway_instance(url: str) -> str | None:
    """The `animus up` instance id the gateway at `url` reports.

    Raises:
        httpx.HTTPError: nothing answers there.
    """
    return httpx.get(url + "/healthz", timeout=2).headers.get(INSTANCE_HEADER)


@dataclass(kw_only=True)
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts the embedded services and the processes; stops them in order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.embedded: Any = None
        self.children: dict[str, _Child] = {}
        self.env: dict[str, str] = {}
        self.instance_id = uuid.uuid4().hex
        self._lock: IO[str] | None = None
        self._created: list[Path] = []  # by `acquire`: the lock, a new home
        self._started = False  # something was started, and wrote to the home

    def acquire(self) -> None:
        """Hold the home's lock: one `animus up` per home.

        What it creates (the lock file, the home if new) is removed again by
        `stop` when nothing was started, as after a refused start.
        """
        lock = self.home / "up.lock"
        self._created = _missing(lock)  # the home too, if it is new
        self.home.mkdir(parents=True, exist_ok=True)
        self._lock = lock.open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ConfigurationError(
                f"another `animus up` is already running on {self.home}"
            ) from exc

    def start_services(self) -> Settings:
        """Start what settings leave unset; return settings pointing at all.

        Raises:
            ConfigurationError: a port is taken, naming its setting.
            AnimusError: an embedded service did not start.
        """
        from animus.embedded import (
            EmbeddedPorts,
            EmbeddedServiceError,
            EmbeddedStack,
            PortInUse,
            port_is_free,
        )

        s = self.settings
        if not port_is_free(s.gateway_port, s.gateway_host):
            raise port_taken("gateway", s.gateway_port)
        wanted = [
            name
            for name, given in (
                ("postgres", s.database_url),
                ("nats", s.nats_url),
                ("s3", s.s3_endpoint),
            )
            if not given
        ]
        update: dict[str, Any] = {}
        if wanted:
            ports = EmbeddedPorts(
                postgres=s.embedded_postgres_port,
                nats=s.embedded_nats_port,
                s3=s.embedded_s3_port,
            )
            self.embedded = EmbeddedStack(self.home, ports, services=wanted)
            for service, port in self.embedded.ports_taken():
                raise port_taken(service, port)  # before anything is started
            out.print(f"starting embedded {', '.join(wanted)} under {self.home}")
            self._started = True
            try:
                self.embedded.start()  # stops what it started when one fails
            except PortInUse as exc:
                raise port_taken(exc.service, exc.port) from exc
            except EmbeddedServiceError as exc:
                raise AnimusError(f"embedded {exc}") from exc
            if self.embedded.postgres:
                update["database_url"] = self.embedded.postgres.dsn
            if self.embedded.nats:
                update["nats_url"] = self.embedded.nats.url
            if self.embedded.s3:
                update["s3_endpoint"] = self.embedded.s3.endpoint
        self.settings = s.model_copy(update=update)
        return self.settings

    def prepare(self) -> None:
        """Migrate, and create the bucket and streams every process expects."""
        from animus.evidence.keys import signing_key
        from animus.migrate import migrate

        assert self.settings.database_url
        migrate(self.settings.database_url)
        # one signing key for every process of this home (dev: generated once)
        signing_key(self.settings, create=True)
        asyncio.run(_prepare_bus_and_bucket(self.settings))

    def spawn_all(self) -> None:
        s = self.settings
        self.env = dict(os.environ)
        self.env.update(
            {
                "ANIMUS_DATABASE_URL": str(s.database_url),
                "ANIMUS_NATS_URL": str(s.nats_url),
                "ANIMUS_S3_ENDPOINT": str(s.s3_endpoint),
                "ANIMUS_HOME": str(self.home),
                "ANIMUS_INSTANCE_ID": self.instance_id,
            }
        )
        self._started = True
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        for name in PROCESS_ORDER:
            self.children[name] = self._spawn(name)
        self._write_stack_file()

    def _spawn(self, name: str, restarts: int = 0) -> _Child:
        log_file = (self.home / "logs" / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "animus", name],
            env=self.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return _Child(name=name, process=process, log_file=log_file, restarts=restarts)

    def _write_stack_file(self) -> None:
        s = self.settings
        info = {
            "pid": os.getpid(),
            "instance_id": self.instance_id,
            "database_url": s.database_url,
            "nats_url": s.nats_url,
            "s3_endpoint": s.s3_endpoint,
            "gateway_url": gateway_url(s),
            "processes": {n: c.process.pid for n, c in self.children.items()},
        }
        # it names the embedded database's owner: readable by this user alone,
        # and replaced whole so a reader never sees half of it
        path = stack_file(s)
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(info, indent=2) + "\n")
        os.replace(partial, path)

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait until our gateway (not another) answers /readyz with 200.

        Raises:
            ConfigurationError: another gateway answers on our port, or ours
                did not become ready in time.
        """
        deadline = time.monotonic() + timeout
        url = gateway_url(self.settings)
        while time.monotonic() < deadline:
            self.watch()
            with contextlib.suppress(httpx.HTTPError):
                instance = gateway_instance(url)
                if instance != self.instance_id:
                    raise port_taken("gateway", self.settings.gateway_port)
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise ConfigurationError(
            f"the gateway did not become ready within {timeout:.0f}s; "
            f"see {self.home / 'logs'}"
        )

    def watch(self) -> None:
        """Restart a child that exited, up to RESTART_LIMIT times."""
        for name, child in list(self.children.items()):
            code = child.process.poll()
            if code is None:
                continue
            child.log_file.close()
            if child.restarts >= RESTART_LIMIT:
                raise ConfigurationError(
                    f"the {name} process keeps failing (exit {code}); "
                    f"see {self.home / 'logs' / (name + '.log')}"
                )
            log.warning("process_restarting", process=name, exit_code=code)
            out.print(f"{name} exited with {code}; restarting")
            self.children[name] = self._spawn(name, child.restarts + 1)
            self._write_stack_file()

    def stop(self) -> None:
        """Stop processes (gateway first), then the embedded services."""
        for name in reversed(PROCESS_ORDER):
            child = self.children.pop(name, None)
            if child is None:
                continue
            _terminate(child.process)
            child.log_file.close()
        stack_file(self.settings).unlink(missing_ok=True)
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
        if self._lock is not None:
            if not self._started:
                self._remove_created()  # while still holding the lock
            self._lock.close()
            self._lock = None

    def _remove_created(self) -> None:
        """Remove what `acquire` made: a refused start leaves no `.animus`."""
        for path in reversed(self._created):
            with contextlib.suppress(OSError):  # a folder not empty: kept
                path.rmdir() if path.is_dir() else path.unlink()
        self._created = []


def _missing(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, outermost first."""
    missing: list[Path] = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing[::-1]


def _terminate(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


async def _prepare_bus_and_bucket(settings: Settings) -> None:
    from animus.bus import connect_bus
    from animus.storage import BlobStore

    bus = await connect_bus(
        str(settings.nats_url), name="animus-up", wait=settings.nats_wait_seconds
    )
    try:
        await bus.ensure_streams()
        await bus.ensure_audit_stream(settings.audit_retention_days * 86400)
    finally:
        await bus.close()
    async with BlobStore(
        endpoint=str(settings.s3_endpoint),
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        bucket=settings.s3_bucket,
        region=settings.s3_region,
    ) as blobs:
        await blobs.ensure_bucket()


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def run_up(settings: Settings) -> int:
    """Run the platform until Ctrl-C or SIGTERM."""
    from animus.telemetry import configure_logging

    configure_logging(level=settings.log_level, fmt="console", process="up")
    supervisor = Supervisor(settings)
    supervisor.acquire()
    # both set explicitly: a shell starts background jobs with SIGINT ignored
    previous = {
        signum: signal.signal(signum, _raise_stop)
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    stopping = False
    try:
        supervisor.start_services()
        supervisor.prepare()
        supervisor.spawn_all()
        supervisor.wait_ready()
        url = gateway_url(supervisor.settings)
        out.print(
            f"[bold green]Animus is up[/]: API {url}  docs {url}/docs  "
            f"logs {supervisor.home / 'logs'}  (Ctrl-C stops everything)"
        )
        while True:
            time.sleep(0.5)
            supervisor.watch()
    except (KeyboardInterrupt, _Stop):
        stopping = True
        out.print("stopping…")
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        supervisor.stop()
        if stopping:  # after a failure, quietly: its one line follows
            out.print("stopped")
