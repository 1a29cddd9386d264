"""The supervisor of one workload: `python -I shim.py STATUS MEMORY_BYTES -- ARGV`.

The executor starts this shim in a session of its own, so the workload
survives a restart of the executor and can be adopted. The shim starts ARGV
(bubblewrap, or the bare command in dev mode) with RLIMIT_AS set, waits for
it, and writes STATUS (JSON: exit code, signal, or why it could not start)
atomically. Bubblewrap's `--die-with-parent` binds the sandbox to the shim.

The workload's command is started by `exec_helper.py` (see `sandbox`); the
shim hands it the write end of a pipe in `ANIMUS_EXEC_STATUS_FD`, and what
the helper writes there, why the command could not be executed, becomes
`exec_error` in STATUS. A command that starts closes the pipe unwritten.

Standard library only: it runs by path, before anything else is imported.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time

EXEC_STATUS_FD = "ANIMUS_EXEC_STATUS_FD"  # read by exec_helper.py
EXEC_ERROR_MAX_BYTES = 4096


def _write_status(path: str, status: dict[str, object]) -> None:
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(status, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(partial, path)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: shim.py STATUS MEMORY_BYTES -- ARGV...", file=sys.stderr)
        return 2
    status_path, memory, command = argv[0], int(argv[1]), argv[3:]
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)

    def limit() -> None:
        os.setpgid(0, 0)  # a group of its own: the executor signals it whole
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        if memory > 0:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    started = time.time()
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(
            command,
            preexec_fn=limit,
            close_fds=True,
            pass_fds=(write_end,),
            env={**os.environ, EXEC_STATUS_FD: str(write_end)},
        )
    except OSError as exc:
        _write_status(
            status_path,
            {"exec_error": f"{type(exc).__name__}: {exc}", "started_at": started},
        )
        return 127
    finally:
        os.close(write_end)
    code = child.wait()
    status: dict[str, object] = {"started_at": started, "finished_at": time.time()}
    if code < 0:
        status["signal"] = -code
        status["exit_code"] = 128 - code
    else:
        status["exit_code"] = code
    exec_error = _read_exec_error(read_end)
    if exec_error:
        status["exec_error"] = exec_error
    _write_status(status_path, status)
    return 0


def _read_exec_error(fd: int) -> str:
    """What the exec helper wrote before exiting; "" once the command ran.

    Read without blocking: a process of the sandbox may still hold the pipe
    open, but the helper wrote before it exited, and the child has exited.
    """
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, EXEC_ERROR_MAX_BYTES)
    except BlockingIOError:
        data = b""
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").strip()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
