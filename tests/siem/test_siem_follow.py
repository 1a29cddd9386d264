"""`animus siem follow` refuses what it cannot use with one plain line and
exit 2, before it connects: a durable name NATS would not take, a negative
--idle-exit or --after; and a cursor beyond the log's head, as the HTTP
export does (it comes from another log), whether the head is read from the
database or, for a subscriber with only the bus, from the stream."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import clitest
import pytest
from clitest import one_line
from siemtest import append_projects
from test_siem_jetstream import published_up_to

from animus.bus import Bus
from animus.errors import ConfigurationError
from animus.eventstore import EventStore
from animus.settings import load_settings
from animus.siem.follow import follow
from animus.siem.stream import AuditPublisher


def animus(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`animus siem follow ARGS`."""
    return clitest.animus(
        tmp_path, "siem", "follow", *args, timeout=60, columns=200, **env
    )


class TestOptions:
    @pytest.mark.parametrize(
        ("args", "line"),
        [
            (
                ["--durable", "bad name!"],
                "animus: --durable: 'bad name!' is not a NATS consumer name: 1 to "
                "255 printable characters without spaces, '.', '*', '>', '/' or "
                "'\\'",
            ),
            (["--durable", "a.b"], None),
            (["--durable", "x" * 256], None),
            (["--durable", ""], None),
            (["--idle-exit", "-1"], "animus: --idle-exit: must be 0 seconds or more"),
            (["--idle-exit", "nan"], "animus: --idle-exit: must be 0 seconds or more"),
            (["--after", "-1"], "animus: --after: must be a position, 0 or more"),
        ],
    )
    def test_a_wrong_option_is_one_line_before_connecting(
        self, tmp_path: Path, args: list[str], line: str | None
    ) -> None:
        # no NATS server at all: the option is refused before any connection
        done = animus(tmp_path, *args, ANIMUS_NATS_URL="nats://127.0.0.1:1")
        assert done.returncode == 2
        said = one_line(done)
        if line is not None:
            assert said == line
        else:
            assert said.startswith("animus: --durable: ")

    def test_from_is_still_taken_for_after(self, tmp_path: Path) -> None:
        done = animus(tmp_path, "--from", "-1", ANIMUS_NATS_URL="nats://127.0.0.1:1")
        assert done.returncode == 2
        assert one_line(done) == "animus: --after: must be a position, 0 or more"


async def follow_after(settings: Any, after: int) -> tuple[int, str]:
    out = io.StringIO()
    code = await follow(
        settings,
        after=after,
        project_id=None,
        event_type=None,
        durable=None,
        idle_seconds=1.0,
        out=out,
        err=io.StringIO(),
    )
    return code, out.getvalue()


class TestCursorBeyondTheHead:
    @pytest.mark.parametrize("source", ["stream", "database"])
    async def test_a_cursor_beyond_the_head_is_refused_as_by_the_export(
        self,
        store: EventStore,
        bus: Bus,
        publisher: AuditPublisher,
        services: Any,
        fresh_database: str,
        source: str,
    ) -> None:
        events = await append_projects(store, 3)
        head = events[-1].position
        await published_up_to(publisher, head)
        settings = load_settings(
            nats_url=services.nats_url,
            database_url=fresh_database if source == "database" else None,
            app_database_url=None,
            environment="test",
        )

        with pytest.raises(ConfigurationError) as refused:
            await follow_after(settings, head + 99999)
        assert refused.value.detail == (
            f"--after {head + 99999} is beyond the log's head (position {head}); "
            "this cursor comes from another log"
        )
        # at the head: nothing yet, and no refusal
        assert await follow_after(settings, head) == (0, "")

    def test_the_command_refuses_it_with_one_line(
        self,
        tmp_path: Path,
        services: Any,
        fresh_database: str,
        publisher: AuditPublisher,
    ) -> None:
        done = animus(
            tmp_path,
            "--after",
            "99999",
            "--idle-exit",
            "1",
            ANIMUS_NATS_URL=services.nats_url,
            ANIMUS_DATABASE_URL=fresh_database,
        )
        assert done.returncode == 2
        assert one_line(done).startswith(
            "animus: --after 99999 is beyond the log's head (position "
        )
        assert done.stdout == ""
