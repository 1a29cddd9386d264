"""The `animus` command's answers to wrong settings: one plain line naming the
setting, a non-zero exit, no traceback and no credentials."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def animus(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANIMUS_")}
    return subprocess.run(
        [sys.executable, "-m", "animus", *args],
        env={**clean, "ANIMUS_HOME": str(tmp_path), "COLUMNS": "60", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


class TestWrongSettings:
    @pytest.mark.parametrize("process", ["gateway", "relay", "executor"])
    def test_a_malformed_port_names_the_setting(
        self, tmp_path: Path, process: str
    ) -> None:
        done = animus(tmp_path, process, ANIMUS_GATEWAY_PORT="abc")
        assert done.returncode == 2
        assert one_line(done).startswith("animus: ANIMUS_GATEWAY_PORT: ")

    def test_an_unknown_executor_kind_names_the_setting(self, tmp_path: Path) -> None:
        done = animus(tmp_path, "up", ANIMUS_EXECUTOR_KIND="warp-drive")
        assert done.returncode == 2
        assert one_line(done).startswith("animus: ANIMUS_EXECUTOR_KIND: ")

    def test_dev_auth_in_production_names_the_auth_mode(self, tmp_path: Path) -> None:
        done = animus(tmp_path, "up", ANIMUS_ENVIRONMENT="production")
        assert done.returncode == 2
        line = one_line(done)
        assert line.startswith("animus: ANIMUS_AUTH_MODE: ")
        assert "production" in line


    @pytest.mark.parametrize("process", ["gateway", "up", "verify"])
    def test_a_mistyped_variable_is_named_with_the_setting_it_resembles(
        self, tmp_path: Path, process: str
    ) -> None:
        done = animus(tmp_path, process, ANIMUS_NATS_ULR="nats://127.0.0.1:1")
        assert done.returncode == 2
        assert one_line(done) == (
            "animus: ANIMUS_NATS_ULR: not a setting (did you mean ANIMUS_NATS_URL?)"
        )

class TestUnreachableServices:
    def test_an_unreachable_database_is_one_line_without_the_password(
        self, tmp_path: Path
    ) -> None:
        dsn = "postgresql://owner:hunter2-secret@127.0.0.1:1/animus"
        done = animus(tmp_path, "verify", ANIMUS_DATABASE_URL=dsn)
        assert done.returncode == 1
        line = one_line(done)
        assert "127.0.0.1:1" in line and "ANIMUS_DATABASE_URL" in line
        assert "hunter2" not in done.stderr + done.stdout

    def test_no_database_and_no_stack_says_how_to_get_one(
        self, tmp_path: Path
    ) -> None:
        done = animus(tmp_path, "verify")
        assert done.returncode == 1
        assert "animus up" in one_line(done)
