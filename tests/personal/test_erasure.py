"""Crypto-shredding end to end: after erasure of a test user, their email is
unreadable everywhere (log, read models, bus, logs, API answers) and
`animus verify` still passes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats.js.errors
import psycopg
from pdtest import (
    CLIENT,
    EMAIL,
    ERIN,
    NAME,
    OLAF,
    OPERATOR,
    OTHER_EMAIL,
    READER_EMAIL,
    READER_NAME,
    RITA,
    SUFFIX,
)
from psycopg import sql
from structlog.testing import capture_logs

from animus.bus import Bus
from animus.eventstore import NewEvent
from animus.personal import (
    ACTOR_EMAIL,
    CLIENT_ADDRESS,
    ERASED,
    erase_subject_key,
    is_subject,
)
from animus.relay import Relay
from contracts.events import SubjectErased
from contracts.streams import SUBJECT_STREAM_TYPE, subject_stream
from gateway.services import GatewayServices

Client = httpx.AsyncClient
UNKNOWN = "subj_" + "0" * 32


async def wait_for_relay(relay: Relay, services: GatewayServices) -> None:
    head = await services.store.head_position()
    async with asyncio.timeout(15):
        while relay.position < head:  # noqa: ASYNC110 - a plain attribute
            await asyncio.sleep(0.05)


def tables_holding(dsn: str, needle: str) -> list[str]:
    """Every table (any schema) with a row whose text holds `needle`."""
    found = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN "
            "('pg_catalog', 'information_schema')"
        ).fetchall()
        assert {"events", "projects", "subject_keys"} <= {t for _, t in tables}
        for schema, table in tables:
            query = sql.SQL("SELECT count(*) FROM {}.{} AS t WHERE t::text ILIKE %s")
            row = conn.execute(
                query.format(sql.Identifier(schema), sql.Identifier(table)),
                (f"%{needle}%",),
            ).fetchone()
            if row and row[0]:
                found.append(f"{schema}.{table}")
    return found


async def bus_messages(bus: Bus) -> list[bytes]:
    """Every message kept in every JetStream stream, headers and data."""
    messages = []
    for info in await bus.js.streams_info():
        state = info.state
        if not state.messages:
            continue
        for seq in range(max(state.first_seq, 1), state.last_seq + 1):
            try:
                msg = await bus.js.get_msg(info.config.name, seq)
            except nats.js.errors.NotFoundError:
                continue
            messages.append(repr(msg.headers).encode() + b"\n" + (msg.data or b""))
    return messages


async def get(client: Client, path: str, answers: list[str]) -> Any:
    answer = await client.get(path, headers=OPERATOR)
    assert answer.status_code == 200, answer.text
    answers.append(answer.text)
    return answer.json()


async def erin_makes_a_project(client: Client) -> tuple[str, str]:
    project_id, dataset_id = f"p-{SUFFIX}", f"d-{SUFFIX}"
    made = await client.post(
        "/projects", json={"project_id": project_id, "name": "P"}, headers=ERIN
    )
    assert made.status_code == 201, made.text
    made = await client.post(
        f"/projects/{project_id}/datasets",
        json={"dataset_id": dataset_id, "name": "D"},
        headers=ERIN,
    )
    assert made.status_code == 201, made.text
    content = b"a,b\n1,2\n"
    made = await client.post(
        f"/projects/{project_id}/datasets/{dataset_id}/versions",
        content=content,
        headers={
            **ERIN,
            "Content-Type": "text/csv",
            "X-Content-SHA256": hashlib.sha256(content).hexdigest(),
        },
    )
    assert made.status_code == 201, made.text
    return project_id, dataset_id


def animus(
    home: Path, database_url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIMUS_")}
    env.update({"ANIMUS_HOME": str(home), "ANIMUS_DATABASE_URL": database_url})
    return subprocess.run(
        [sys.executable, "-m", "animus", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestErasure:
    async def test_an_erased_users_email_is_unreadable_everywhere_verify_passes(
        self,
        client: Client,
        gateway_services: GatewayServices,
        running: Relay,
        fresh_database: str,
        home: Path,
    ) -> None:
        services = gateway_services
        assert services.bus is not None
        with capture_logs() as logs:
            project_id, dataset_id = await erin_makes_a_project(client)
            paths = [
                "/projects",
                f"/projects/{project_id}",
                f"/projects/{project_id}/datasets",
                f"/projects/{project_id}/datasets/{dataset_id}",
                f"/projects/{project_id}/datasets/{dataset_id}/versions",
                f"/projects/{project_id}/datasets/{dataset_id}/versions/1",
            ]

            # before: an authorized reader sees the name and the email
            before: list[str] = []
            project = await get(client, paths[1], before)
            subject = project["created_by_subject"]
            assert is_subject(subject)
            assert project["created_by"] == NAME
            version = await get(client, paths[-1], before)
            assert (version["committed_by"], version["committed_by_subject"]) == (
                NAME,
                subject,
            )
            profile = await get(client, f"/personal-data/subjects/{subject}", before)
            assert (profile["name"], profile["email"]) == (NAME, EMAIL)
            assert profile["erased"] is False

            # the log holds them sealed, and they open before erasure
            events = await services.store.read_all(after=0, limit=10_000)
            erins = [e for e in events if _subject_of(e.metadata) == subject]
            assert len(erins) >= 3
            sealed_email = erins[0].metadata["actor"]["email"]
            sealed_address = erins[0].metadata["client_address"]
            assert await services.subjects.open(sealed_email, ACTOR_EMAIL) == EMAIL
            opened = await services.subjects.open(sealed_address, CLIENT_ADDRESS)
            assert opened == CLIENT[0]

            erased = await client.post(
                f"/personal-data/subjects/{subject}/erasure",
                json={"reason": "erasure request #1"},
                headers=OPERATOR,
            )
            assert erased.status_code == 200, erased.text
            receipt = erased.json()
            assert receipt["already_erased"] is False and receipt["vacuumed"] is True
            assert isinstance(receipt["position"], int)

            after: list[str] = []
            for path in paths:
                await get(client, path, after)
            project = await get(client, paths[1], after)
            assert project["created_by"] == "erased"
            assert project["created_by_subject"] == subject
            profile = await get(client, f"/personal-data/subjects/{subject}", after)
            assert profile["name"] == profile["email"] == "erased"
            assert profile["erased"] is True and profile["erased_at"]
            await wait_for_relay(running, services)

        # the sealed fields are still in the log, and read as erased now
        assert await services.subjects.open(sealed_email, ACTOR_EMAIL) is ERASED
        assert await services.subjects.open(sealed_address, CLIENT_ADDRESS) is ERASED
        recorded = await services.store.read_stream(subject_stream(subject))
        assert [(e.type, e.data, e.position) for e in recorded] == [
            (
                "SubjectErased",
                {"subject": subject, "reason": "erasure request #1"},
                receipt["position"],
            )
        ]

        # the email, the name and the address: in plain text nowhere
        messages = await bus_messages(services.bus)
        assert any(subject.encode() in m for m in messages)  # the search works
        assert subject in repr(logs)
        assert tables_holding(fresh_database, subject)
        assert NAME in before[-1] and EMAIL in before[-1]
        for needle in (EMAIL, NAME, CLIENT[0]):
            assert tables_holding(fresh_database, needle) == []
            assert not [m for m in messages if needle.encode() in m]
            assert needle not in repr(logs)
            assert not [text for text in after if needle in text]

        # and the chain, with the erasure in it, still verifies
        verified = animus(home, fresh_database, "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "chain verified" in verified.stdout

    async def test_erasing_twice_says_so_and_records_one_event(
        self, client: Client, gateway_services: GatewayServices
    ) -> None:
        subject = await _subject_of_caller(client, OLAF, "twice")
        first = await client.post(
            f"/personal-data/subjects/{subject}/erasure", headers=OPERATOR
        )
        again = await client.post(
            f"/personal-data/subjects/{subject}/erasure", headers=OPERATOR
        )
        assert first.status_code == again.status_code == 200, again.text
        assert (first.json()["already_erased"], again.json()["already_erased"]) == (
            False,
            True,
        )
        assert again.json()["position"] == first.json()["position"]
        assert again.json()["erased_at"] == first.json()["erased_at"]
        stream = await gateway_services.store.read_stream(subject_stream(subject))
        assert len(stream) == 1

    async def test_a_user_signing_in_after_erasure_is_a_new_subject(
        self, client: Client
    ) -> None:
        erased = await _subject_of_caller(client, OLAF, "before")
        answer = await client.post(
            f"/personal-data/subjects/{erased}/erasure", headers=OPERATOR
        )
        assert answer.status_code == 200
        fresh = await _subject_of_caller(client, OLAF, "after")
        assert fresh != erased
        profile = await client.get(f"/personal-data/subjects/{fresh}", headers=OLAF)
        assert profile.json()["email"] == OTHER_EMAIL

    async def test_an_unknown_subject_answers_404(self, client: Client) -> None:
        answer = await client.post(
            f"/personal-data/subjects/{UNKNOWN}/erasure", headers=OPERATOR
        )
        assert answer.status_code == 404
        assert answer.json()["detail"] == f"subject {UNKNOWN} does not exist"
        read = await client.get(f"/personal-data/subjects/{UNKNOWN}", headers=OPERATOR)
        assert read.status_code == 404

    async def test_a_malformed_subject_id_is_no_such_subject_on_get_and_post(
        self, client: Client
    ) -> None:
        answers = [
            await client.get("/personal-data/subjects/nope", headers=OPERATOR),
            await client.post("/personal-data/subjects/nope/erasure", headers=OPERATOR),
            await client.post(
                "/personal-data/subjects/nope/erasure",
                json={"reason": "r"},
                headers=OPERATOR,
            ),
            await client.post(
                f"/personal-data/subjects/{UNKNOWN.upper()}/erasure", headers=OPERATOR
            ),
        ]
        problems = [
            (a.status_code, a.headers["content-type"], a.json()) for a in answers
        ]
        for status, media_type, problem in problems:
            assert (status, media_type) == (404, "application/problem+json")
            assert problem["type"].endswith(":not-found")
            assert problem["detail"].startswith("no such subject")
        assert len({(p["type"], p["title"], p["detail"]) for *_, p in problems}) == 1

    async def test_a_refused_reason_changes_nothing_on_the_api(
        self, client: Client, gateway_services: GatewayServices
    ) -> None:
        subject = await _subject_of_caller(client, OLAF, "api-reason")
        answer = await client.post(
            f"/personal-data/subjects/{subject}/erasure",
            json={"reason": "x" * 201},
            headers=OPERATOR,
        )
        assert answer.status_code == 422, answer.text
        assert [e["field"] for e in answer.json()["errors"]] == ["reason"]
        await _assert_untouched(client, gateway_services, subject)

    async def test_a_retry_completes_an_erasure_recorded_before_its_key_went(
        self, client: Client, gateway_services: GatewayServices, fresh_database: str
    ) -> None:
        # a crash between the two steps: the event is in the log, the key lives
        subject = await _subject_of_caller(client, OLAF, "recorded-first")
        recorded = await gateway_services.store.append(
            [
                NewEvent(
                    stream_type=SUBJECT_STREAM_TYPE,
                    stream_id=subject_stream(subject),
                    project_id=None,
                    event=SubjectErased(subject=subject, reason="crashed"),
                )
            ],
            expected_versions={subject_stream(subject): 0},
            metadata={"actor": "test"},
        )
        filenode = relation_filenode(fresh_database)
        answer = await client.post(
            f"/personal-data/subjects/{subject}/erasure", headers=OPERATOR
        )
        assert answer.status_code == 200, answer.text
        receipt = answer.json()
        assert receipt["position"] == recorded[0].position
        assert (receipt["already_erased"], receipt["repaired"]) == (False, True)
        assert receipt["vacuumed"] is True
        assert relation_filenode(fresh_database) != filenode  # rewritten
        profile = await client.get(
            f"/personal-data/subjects/{subject}", headers=OPERATOR
        )
        assert profile.json()["email"] == "erased"
        stream = await gateway_services.store.read_stream(subject_stream(subject))
        assert [e.position for e in stream] == [recorded[0].position]


class TestLazySubjects:
    async def test_reads_make_no_subject_and_store_no_personal_data(
        self, client: Client, fresh_database: str
    ) -> None:
        # a person who only reads: no subject row (its sealed profile is what
        # would hold the name and email), and nothing in plain text either
        rows = subject_key_rows(fresh_database)
        read = await client.get("/projects", headers=RITA)
        assert read.status_code == 200, read.text
        assert subject_key_rows(fresh_database) == rows
        for needle in (READER_NAME, READER_EMAIL):
            assert tables_holding(fresh_database, needle) == []

        # their first command makes the subject
        subject = await _subject_of_caller(client, RITA, "rita")
        assert subject_key_rows(fresh_database) == rows + 1
        assert tables_holding(fresh_database, subject)
        erased = await client.post(
            f"/personal-data/subjects/{subject}/erasure", headers=OPERATOR
        )
        assert erased.status_code == 200, erased.text

        # reading again after the erasure stores nothing of them again
        rows = subject_key_rows(fresh_database)
        for path in ("/projects", f"/projects/p-rita-{SUFFIX}"):
            again = await client.get(path, headers=RITA)
            assert again.status_code == 200, again.text
        assert subject_key_rows(fresh_database) == rows
        for needle in (READER_NAME, READER_EMAIL):
            assert tables_holding(fresh_database, needle) == []


class TestEraseSubjectCommand:
    async def test_the_command_erases_once_and_refuses_unknown_subjects(
        self, client: Client, fresh_database: str, home: Path
    ) -> None:
        subject = await _subject_of_caller(client, OLAF, "cli")

        done = await asyncio.to_thread(
            animus, home, fresh_database, "erase-subject", subject, "--reason", "r"
        )
        assert done.returncode == 0, done.stderr
        line = done.stdout.strip()
        assert line.startswith(f"subject {subject} erased at ")
        assert "SubjectErased at position" in line and "subject_keys vacuumed" in line

        again = await asyncio.to_thread(
            animus, home, fresh_database, "erase-subject", subject
        )
        assert again.returncode == 0
        assert again.stdout.startswith(f"subject {subject} was already erased at ")

        unknown = await asyncio.to_thread(
            animus, home, fresh_database, "erase-subject", UNKNOWN
        )
        assert unknown.returncode == 1
        assert unknown.stderr.strip() == f"animus: subject {UNKNOWN} does not exist"

        malformed = await asyncio.to_thread(
            animus, home, fresh_database, "erase-subject", "alice"
        )
        assert malformed.returncode == 2
        assert malformed.stderr.strip().startswith("animus: SUBJECT: 'alice' is not")

        answer = await client.get(f"/personal-data/subjects/{subject}", headers=OLAF)
        assert answer.json()["email"] == "erased"

    async def test_a_refused_reason_changes_nothing(
        self,
        client: Client,
        gateway_services: GatewayServices,
        fresh_database: str,
        home: Path,
    ) -> None:
        subject = await _subject_of_caller(client, OLAF, "cli-reason")
        refused = await asyncio.to_thread(
            animus,
            home,
            fresh_database,
            "erase-subject",
            subject,
            "--reason",
            "x" * 201,
        )
        assert refused.returncode == 2, refused.stderr
        assert refused.stdout == ""
        assert refused.stderr.strip() == (
            "animus: --reason: at most 200 characters (this one has 201); "
            "it is kept in the log for ever"
        )
        await _assert_untouched(client, gateway_services, subject)

    async def test_a_retry_records_the_missing_event_and_vacuums(
        self,
        client: Client,
        gateway_services: GatewayServices,
        fresh_database: str,
        home: Path,
    ) -> None:
        # a key destroyed without its event (an older version, or by hand)
        subject = await _subject_of_caller(client, OLAF, "key-first")
        await erase_subject_key(gateway_services.pool, subject)
        filenode = relation_filenode(fresh_database)
        done = await asyncio.to_thread(
            animus, home, fresh_database, "erase-subject", subject, "--json"
        )
        assert done.returncode == 0, done.stderr
        receipt = json.loads(done.stdout)
        assert (receipt["already_erased"], receipt["repaired"]) == (True, True)
        assert receipt["vacuumed"] is True
        assert relation_filenode(fresh_database) != filenode  # rewritten
        stream = await gateway_services.store.read_stream(subject_stream(subject))
        assert [(e.type, e.position) for e in stream] == [
            ("SubjectErased", receipt["position"])
        ]

        again = await asyncio.to_thread(
            animus, home, fresh_database, "erase-subject", subject
        )
        assert again.returncode == 0, again.stderr
        when = datetime.fromisoformat(receipt["erased_at"])
        assert again.stdout.strip() == (
            f"subject {subject} was already erased at "
            f"{when.isoformat(timespec='seconds')}; SubjectErased at position "
            f"{receipt['position']}; subject_keys vacuumed"
        )


async def _assert_untouched(
    client: Client, services: GatewayServices, subject: str
) -> None:
    """The subject lives on: key, profile, and no SubjectErased event."""
    profile = await client.get(f"/personal-data/subjects/{subject}", headers=OPERATOR)
    assert profile.status_code == 200, profile.text
    assert profile.json()["erased"] is False
    assert profile.json()["email"] == OTHER_EMAIL
    assert await services.store.read_stream(subject_stream(subject)) == []


def relation_filenode(dsn: str) -> int:
    """The file `subject_keys` lives in: VACUUM FULL writes a new one."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_relation_filenode('subject_keys')").fetchone()
    assert row is not None
    return int(row[0])


def subject_key_rows(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM subject_keys").fetchone()
    assert row is not None
    return int(row[0])


def _subject_of(metadata: dict[str, Any]) -> str | None:
    actor = metadata.get("actor")
    return actor.get("subject") if isinstance(actor, dict) else None


async def _subject_of_caller(client: Client, headers: dict[str, str], tag: str) -> str:
    project_id = f"p-{tag}-{SUFFIX}"
    made = await client.post(
        "/projects", json={"project_id": project_id, "name": "P"}, headers=headers
    )
    assert made.status_code == 201, made.text
    project = await client.get(f"/projects/{project_id}", headers=headers)
    subject: str = project.json()["created_by_subject"]
    assert is_subject(subject)
    return subject
