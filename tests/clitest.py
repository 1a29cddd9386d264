"""Running the `animus` command in tests as a user would: a fresh process,
none of the caller's ANIMUS_ settings, its own home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def animus(
    home: Path, *args: str, timeout: float = 120, columns: int = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """`animus ARGS` with ANIMUS_HOME=`home` and only the settings in `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANIMUS_")}
    return subprocess.run(
        [sys.executable, "-m", "animus", *args],
        env={**clean, "ANIMUS_HOME": str(home), "COLUMNS": str(columns), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one plain line a refused command prints on stderr."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "internal error" not in done.stderr
    return lines[0]
