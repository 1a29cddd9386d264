"""`animus replay --until/--into` and `--diff` on the command line: what they
print, and the one plain line (exit 2) for what they refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from clitest import animus, one_line

if TYPE_CHECKING:
    from tests.projections.conftest import Database, Workload


@pytest.fixture(scope="module")
async def events(
    database: Database, store: object, new_workload: type[Workload]
) -> int:
    """A project with a dataset and one committed version: the log's head."""
    from animus.eventstore import EventStore

    assert isinstance(store, EventStore)
    recorded = await store.append(new_workload().setup({"train": 1}))
    return recorded[-1].position


def _drop(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class TestUntil:
    def test_json_says_the_position_reached_and_rows_per_table(
        self, tmp_path: Path, database: Database, events: int
    ) -> None:
        dsn = database.owner_dsn
        try:
            done = animus(
                tmp_path,
                "replay",
                "--until",
                "2",
                "--into",
                "cli_s1",
                "--json",
                ANIMUS_DATABASE_URL=dsn,
            )
            assert done.returncode == 0, done.stderr
            assert done.stderr == ""
            answer = json.loads(done.stdout)
            assert answer["schema"] == "cli_s1"
            assert answer["position"] == 2
            assert answer["events"] == 2
            assert answer["rows"]["projects"] == 1
            assert answer["rows"]["datasets"] == 1
            assert answer["rows"]["dataset_versions"] == 0

            again = animus(
                tmp_path,
                "replay",
                "--until",
                "2",
                "--into",
                "cli_s1",
                ANIMUS_DATABASE_URL=dsn,
            )
            assert again.returncode == 2
            assert one_line(again) == (
                "animus: replay: --into: schema cli_s1 exists; pass --replace to "
                "rebuild it"
            )
            assert again.stdout == ""

            replaced = animus(
                tmp_path,
                "replay",
                "--until",
                str(events),
                "--into",
                "cli_s1",
                "--replace",
                ANIMUS_DATABASE_URL=dsn,
            )
            assert replaced.returncode == 0, replaced.stderr
            first = replaced.stdout.splitlines()[0]
            assert first.startswith(
                f"replaced schema cli_s1 as of position {events} ({events} events"
            )
            assert any(
                line.split() == ["dataset_versions", "1", "rows"]
                for line in replaced.stdout.splitlines()
            ), replaced.stdout
        finally:
            _drop(dsn, "cli_s1")

    def test_a_schema_of_the_users_is_refused_up_front_not_sent_to_replace(
        self, tmp_path: Path, database: Database, events: int
    ) -> None:
        dsn = database.owner_dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA cli_mine")
            conn.execute("CREATE TABLE cli_mine.keep (x int)")
        try:
            for extra in ([], ["--replace"]):
                done = animus(
                    tmp_path,
                    "replay",
                    "--until",
                    "1",
                    "--into",
                    "cli_mine",
                    *extra,
                    ANIMUS_DATABASE_URL=dsn,
                )
                assert done.returncode == 2
                assert one_line(done) == (
                    "animus: replay: --into: schema cli_mine exists and was not "
                    "built by animus replay, so it will not be replaced; choose "
                    "another name"
                )
                assert done.stdout == ""
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT * FROM cli_mine.keep").fetchall() == []
        finally:
            _drop(dsn, "cli_mine")

    @pytest.mark.parametrize(
        ("args", "line"),
        [
            (
                ["--until", "1", "--into", "rm"],
                "animus: replay: --into: rm is a schema of the platform; "
                "choose another name",
            ),
            (
                ["--until", "1", "--into", "Not-Plain"],
                "animus: replay: --into: 'Not-Plain' is not a plain identifier "
                "(lower-case letters, digits and _, not starting with a digit, "
                "at most 63)",
            ),
            (
                ["--until", "soon", "--into", "cli_x"],
                "animus: replay: --until: 'soon' is neither a position nor an "
                "RFC 3339 timestamp (e.g. 42 or 2025-01-31T12:00:00Z)",
            ),
            (
                ["--until", "-1", "--into", "cli_x"],
                "animus: replay: --until: position -1 is negative (positions "
                "start at 1)",
            ),
            (
                ["--diff", "-1", "2"],
                "animus: replay: A: position -1 is negative (positions start at 1)",
            ),
            (
                ["--until", "999999", "--into", "cli_x"],
                "animus: replay: --until: position 999999 is beyond the head of "
                "the log",
            ),
            (["--until", "1"], "animus: replay: --until and --into go together"),
            (
                ["--diff", "1", "2", "--into", "cli_x"],
                "animus: replay: --diff goes without --until and --into",
            ),
        ],
    )
    def test_what_replay_refuses_is_one_line(
        self,
        tmp_path: Path,
        database: Database,
        events: int,
        args: list[str],
        line: str,
    ) -> None:
        done = animus(tmp_path, "replay", *args, ANIMUS_DATABASE_URL=database.owner_dsn)

        assert done.returncode == 2
        assert one_line(done).startswith(line)
        assert done.stdout == ""
        with psycopg.connect(database.owner_dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'cli_x'"
            ).fetchone()
        assert row == (0,)


class TestDiff:
    def test_the_diff_lists_rows_added_per_table(
        self, tmp_path: Path, database: Database, events: int
    ) -> None:
        done = animus(
            tmp_path,
            "replay",
            "--diff",
            "1",
            "head",
            "--json",
            ANIMUS_DATABASE_URL=database.owner_dsn,
        )

        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["from"]["position"] == 1
        assert answer["to"]["position"] >= events
        added = answer["tables"]["dataset_versions"]["added"]
        assert [row["key"]["version"] for row in added] == [1]
        datasets = answer["tables"]["datasets"]
        assert datasets["key"] == ["project_id", "dataset_id"]
        assert len(datasets["added"]) == 1
        assert datasets["changed"] == []
        assert answer["tables"]["projects"] == {
            "key": ["project_id"],
            "added": [],
            "removed": [],
            "changed": [],
        }
        with psycopg.connect(database.owner_dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rm\\_diff\\_%'"
            ).fetchone()
        assert row == (0,)

        text = animus(
            tmp_path,
            "replay",
            "--diff",
            "1",
            "now",
            ANIMUS_DATABASE_URL=database.owner_dsn,
        )
        assert text.returncode == 0, text.stderr
        assert text.stdout.splitlines()[0].startswith("from position 1 to position")
        assert any(
            line.startswith("dataset_versions: 1 added, 0 removed, 0 changed")
            for line in text.stdout.splitlines()
        ), text.stdout
