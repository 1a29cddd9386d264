"""The last step before a workload: exec its command, or say why that failed.

The sandbox runs `python -I -S -c <this file's source> ARGV` (the source is
passed inline: this folder is not visible inside the sandbox). It looks the
command up on PATH as execvp(3) does, shell fallback for a script without a
`#!` line included, and replaces itself with it. When no exec succeeds it
writes why to the pipe named by `ANIMUS_EXEC_STATUS_FD` (opened by the
supervisor shim) and to stderr (the run's log), then exits 127; so a
command that could not start is told apart from one that ran and failed.
The pipe is made close-on-exec first, so a command that starts closes it
unwritten, and the variable is taken out of the environment it gets.

Standard library only, and nothing that `-S` leaves unimported.
"""

from __future__ import annotations

import errno
import os
import sys

STATUS_FD_VARIABLE = "ANIMUS_EXEC_STATUS_FD"
EXIT_EXEC_FAILED = 127
_KEEP_LOOKING = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.ESTALE, errno.ENODEV, errno.ETIMEDOUT}
)


def candidates(name: str, path: str) -> list[str]:
    """Where execvp(3) looks for `name`: itself when it has a `/`, else PATH."""
    if not name:
        return []
    if "/" in name:
        return [name]
    return [os.path.join(folder or ".", name) for folder in path.split(":")]


def try_exec(path: str, argv: list[str], env: dict[str, str]) -> int:
    """Replace this process with `path`; the errno when that fails."""
    try:
        os.execve(path, argv, env)
    except OSError as exc:
        if exc.errno != errno.ENOEXEC:
            return exc.errno or errno.EIO
    # no `#!` line: the shell runs it, as execvp(3) does
    try:
        os.execve("/bin/sh", ["/bin/sh", path, *argv[1:]], env)
    except OSError as exc:
        return exc.errno or errno.EIO
    return errno.EIO  # pragma: no cover - execve returns only by raising


def exec_command(argv: list[str], env: dict[str, str]) -> int:
    """Exec `argv` as execvp(3) would; the errno that explains a failure."""
    found = errno.ENOENT
    for path in candidates(argv[0], env.get("PATH", os.defpath)):
        code = try_exec(path, argv, env)
        if code == errno.EACCES:
            found = code
        elif code not in _KEEP_LOOKING:
            return code
    return found


def describe(name: str, code: int) -> str:
    """Why `name` did not start, in a user's words."""
    if code == errno.ENOENT:
        return f"command not found: {name}"
    if code == errno.EACCES:
        return f"command not executable: {name} (permission denied)"
    return f"cannot execute {name}: {os.strerror(code)}"


def _status_fd(env: dict[str, str]) -> int | None:
    """The shim's pipe, made close-on-exec; None when there is none."""
    value = env.pop(STATUS_FD_VARIABLE, "")
    if not value.isdigit():
        return None
    try:
        os.set_inheritable(int(value), False)
    except OSError:
        return None
    return int(value)


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    status_fd = _status_fd(env)
    message = describe(argv[0], exec_command(argv, env)) if argv else "no command"
    data = message.encode("utf-8", "backslashreplace")
    for fd, text in ((status_fd, data), (2, b"animus: " + data + b"\n")):
        if fd is not None:
            try:
                os.write(fd, text)
            except OSError:
                pass
    return EXIT_EXEC_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
