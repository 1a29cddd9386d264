"""How a workload is confined on this machine: the bubblewrap command line.

The sandbox has no network (`--unshare-all`), a read-only system (the host's
/usr, /lib*, /bin, a few files of /etc and the Python prefix that runs the
executor, so the workload's `python` is this venv's python with
scikit-learn), the run's inputs read-only at `/inputs/<name>`, a writable
`/outputs`, a private tmpfs `/tmp`, and its own /proc and /dev. It dies with
its supervisor (`--die-with-parent`) and cannot reach the terminal
(`--new-session`). The memory limit is RLIMIT_AS, set by the supervisor shim
(`executors/shim.py`) just before bubblewrap starts.

Where bubblewrap is missing the executor refuses to run anything, unless
`allow_unsandboxed` is set (never in production); then the command runs as a
plain child process with `/inputs` and `/outputs` in its argv rewritten to the
workspace folders, and every launch logs a warning.

In both modes the command is started through `exec_helper` (inline, as
`python -I -S -c`), which tells the shim when the command could not be
executed at all, so that ends as `exec_failed` rather than as an exit code.
"""

from __future__ import annotations

import enum
import json
import math
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import structlog

from animus.errors import AnimusError
from animus.settings import Settings
from contracts.runs import ParameterValue

log = structlog.get_logger(__name__)

SANDBOX_INPUTS = "/inputs"
SANDBOX_OUTPUTS = "/outputs"
SANDBOX_HOSTNAME = "animus-sandbox"
EXEC_HELPER = Path(__file__).resolve().with_name("exec_helper.py")

# Top-level system folders: bound read-only, or re-created as the same symlink
# where the host has merged /usr.
_SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# The bits of /etc a Python workload needs (dynamic loader, users, time zone).
_ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/alternatives",
    "/etc/mime.types",
)
_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


class SandboxUnavailable(AnimusError):
    """Bubblewrap is missing and unsandboxed runs are not allowed."""

    title = "Sandbox unavailable"


class SandboxMode(enum.Enum):
    BWRAP = "bwrap"
    UNSANDBOXED = "unsandboxed"


@dataclass(frozen=True, kw_only=True)
class SandboxPolicy:
    """Which confinement this executor uses for every launch."""

    mode: SandboxMode
    bwrap: str | None = None


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def choose_policy(settings: Settings, *, bwrap: str | None = None) -> SandboxPolicy:
    """Bubblewrap when present; otherwise unsandboxed only where allowed.

    Raises:
        SandboxUnavailable: bubblewrap is missing and unsandboxed runs are
            refused (the setting is off, or the environment is production).
    """
    path = bwrap if bwrap is not None else find_bwrap()
    if path:
        return SandboxPolicy(mode=SandboxMode.BWRAP, bwrap=path)
    if settings.allow_unsandboxed and settings.environment != "production":
        return SandboxPolicy(mode=SandboxMode.UNSANDBOXED)
    raise SandboxUnavailable(
        "bubblewrap (bwrap) is not installed; install it, or set "
        "ANIMUS_ALLOW_UNSANDBOXED=true outside production for a dev machine"
    )


def memory_limit_bytes(memory_mb: int) -> int:
    return int(memory_mb) * 1024 * 1024


def python_prefixes() -> list[Path]:
    """The prefixes of the Python that runs the executor (venv and base)."""
    seen: list[Path] = []
    for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        path = Path(prefix).resolve()
        if path not in seen and path != Path("/"):
            seen.append(path)
    return seen


def venv_bin() -> Path:
    return Path(sys.prefix) / "bin"


def workload_env(
    *,
    run_id: str,
    attempt: int,
    parameters: Mapping[str, ParameterValue],
    cpu: float,
    inputs_dir: str = SANDBOX_INPUTS,
    outputs_dir: str = SANDBOX_OUTPUTS,
    tmp_dir: str = "/tmp",
) -> dict[str, str]:
    """The whole environment of a workload: nothing leaks from the executor."""
    threads = str(max(1, math.ceil(cpu)))
    env = {
        "PATH": f"{venv_bin()}:/usr/local/bin:/usr/bin:/bin",
        "HOME": tmp_dir,
        "TMPDIR": tmp_dir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "ANIMUS_RUN_ID": run_id,
        "ANIMUS_ATTEMPT": str(attempt),
        "ANIMUS_INPUTS": inputs_dir,
        "ANIMUS_OUTPUTS": outputs_dir,
        "ANIMUS_PARAMS": json.dumps(dict(parameters), sort_keys=True),
        "VIRTUAL_ENV": sys.prefix,
    }
    for name in _THREAD_VARIABLES:
        env[name] = threads
    return env


@dataclass(frozen=True, kw_only=True)
class SandboxLayout:
    """Host folders of one launch that the sandbox exposes."""

    inputs_dir: Path
    outputs_dir: Path
    extra_ro_binds: Sequence[tuple[Path, str]] = field(default_factory=tuple)
    extra_rw_binds: Sequence[tuple[Path, str]] = field(default_factory=tuple)


def _system_args() -> list[str]:
    args: list[str] = []
    for name in _SYSTEM_DIRS:
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for item in _ETC_FILES:
        args += ["--ro-bind-try", item, item]
    for prefix in python_prefixes():
        args += ["--ro-bind", str(prefix), str(prefix)]
    venv = Path(sys.prefix)
    if venv.resolve() != venv and venv.is_absolute():
        # the venv reached through a symlinked path: bind that spelling too
        args += ["--ro-bind", str(venv.resolve()), str(venv)]
    return args


def bwrap_argv(
    bwrap: str,
    command: Sequence[str],
    layout: SandboxLayout,
) -> list[str]:
    """The full bubblewrap argv for one workload command.

    The environment is passed to the bwrap process itself (the shim gives it
    only the workload's environment), so nothing else crosses over.
    """
    args = [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        SANDBOX_HOSTNAME,
        # the private /tmp comes first: a venv that lives under /tmp (a CI
        # clone, say) is bound on top of it instead of being hidden by it
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        *_system_args(),
        "--ro-bind",
        str(layout.inputs_dir),
        SANDBOX_INPUTS,
        "--bind",
        str(layout.outputs_dir),
        SANDBOX_OUTPUTS,
    ]
    for host, target in layout.extra_ro_binds:
        args += ["--ro-bind", str(host), target]
    for host, target in layout.extra_rw_binds:
        args += ["--bind", str(host), target]
    args += ["--chdir", "/tmp", "--", *command]
    return args


def unsandboxed_argv(command: Sequence[str], layout: SandboxLayout) -> list[str]:
    """Dev mode: the command as is, with /inputs and /outputs pointed home."""

    def rewrite(arg: str) -> str:
        for prefix, host in (
            (SANDBOX_INPUTS, layout.inputs_dir),
            (SANDBOX_OUTPUTS, layout.outputs_dir),
        ):
            if arg == prefix or arg.startswith(prefix + "/"):
                return str(host) + arg[len(prefix) :]
        return arg

    return [rewrite(arg) for arg in command]


@cache
def _exec_helper_source() -> str:
    return EXEC_HELPER.read_text(encoding="utf-8")


def exec_helper_argv(command: Sequence[str]) -> list[str]:
    """`command` started through the exec helper, by this executor's Python."""
    return [sys.executable, "-I", "-S", "-c", _exec_helper_source(), *command]


def build_argv(
    policy: SandboxPolicy, command: Sequence[str], layout: SandboxLayout
) -> list[str]:
    """What the shim starts: the sandbox (or dev mode's bare process) running
    `command` through the exec helper."""
    if policy.mode is SandboxMode.BWRAP:
        assert policy.bwrap is not None
        return bwrap_argv(policy.bwrap, exec_helper_argv(command), layout)
    return exec_helper_argv(unsandboxed_argv(command, layout))
