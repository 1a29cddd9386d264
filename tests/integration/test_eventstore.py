"""The event store's invariants on a real PostgreSQL (DESIGN.md, Event store)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import psycopg
import pytest

from animus import verify
from animus.chain import GENESIS_HASH
from animus.db import open_pool, with_user
from animus.errors import StreamVersionConflict
from animus.eventstore import EventStore, NewEvent
from animus.migrate import migrate
from animus.verify import verify_chain
from contracts.events import DatasetRegistered, ProjectCreated


@pytest.fixture(scope="module")
def dsn(services):  # type: ignore[no-untyped-def]
    name = f"animus_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = services.database_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    return url


@pytest.fixture
async def store(dsn: str):  # type: ignore[no-untyped-def]
    pool = await open_pool(with_user(dsn, "animus_app"), max_size=8)
    async with EventStore(pool) as store:
        yield store
    await pool.close()


def project_event(project_id: str) -> NewEvent:
    return NewEvent(
        stream_type="project",
        stream_id=f"project-{project_id}",
        project_id=project_id,
        event=ProjectCreated(project_id=project_id, name=project_id),
    )


def dataset_event(project_id: str, dataset_id: str) -> NewEvent:
    return NewEvent(
        stream_type="dataset",
        stream_id=f"dataset-{project_id}-{dataset_id}",
        project_id=project_id,
        event=DatasetRegistered(
            project_id=project_id, dataset_id=dataset_id, name=dataset_id
        ),
    )


def positions(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT position FROM events ORDER BY 1")]


class TestAppend:
    async def test_eight_concurrent_appenders_give_gap_free_positions(
        self, store: EventStore, dsn: str
    ) -> None:
        # Separate stores (and pools) compete for the chain, as processes do.
        pools = [await open_pool(with_user(dsn, "animus_app")) for _ in range(8)]
        stores = [EventStore(pool) for pool in pools]

        async def appender(s: EventStore, n: int) -> None:
            for i in range(50):
                await s.append([project_event(f"c{n}-{i}-{uuid.uuid4().hex[:6]}")])

        await asyncio.gather(*(appender(s, n) for n, s in enumerate(stores)))
        for s, pool in zip(stores, pools, strict=True):
            await s.stop()
            await pool.close()

        seen = positions(dsn)
        assert seen == list(range(1, len(seen) + 1))
        assert len(seen) >= 400
        result = verify_chain(with_user(dsn, "animus_app"))
        assert result.verified, result.first_break
        assert result.events == len(seen)

    async def test_a_stale_expected_version_raises_a_conflict(
        self, store: EventStore
    ) -> None:
        pid = f"p{uuid.uuid4().hex[:8]}"
        stream = f"project-{pid}"
        await store.append([project_event(pid)], expected_versions={stream: 0})
        head = await store.head_position()
        with pytest.raises(StreamVersionConflict):
            await store.append([project_event(pid)], expected_versions={stream: 0})
        assert await store.head_position() == head

    async def test_one_racing_writer_wins_per_stream_version(
        self, store: EventStore
    ) -> None:
        pid = f"p{uuid.uuid4().hex[:8]}"
        stream = f"project-{pid}"
        outcomes = await asyncio.gather(
            *(
                store.append([project_event(pid)], expected_versions={stream: 0})
                for _ in range(8)
            ),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(winners) == 1
        assert all(
            isinstance(o, StreamVersionConflict) for o in outcomes if o not in winners
        )
        assert [e.stream_version for e in await store.read_stream(stream)] == [1]

    async def test_a_multi_event_append_commits_all_or_nothing(
        self, store: EventStore
    ) -> None:
        pid = f"p{uuid.uuid4().hex[:8]}"
        taken = f"p{uuid.uuid4().hex[:8]}"
        await store.append([project_event(taken)])
        head = await store.head_position()
        with pytest.raises(StreamVersionConflict):
            await store.append(
                [project_event(pid), dataset_event(pid, "d1"), project_event(taken)],
                expected_versions={f"project-{pid}": 0, f"project-{taken}": 0},
            )
        assert await store.head_position() == head
        assert await store.read_stream(f"project-{pid}") == []

        recorded = await store.append(
            [project_event(pid), dataset_event(pid, "d1")],
            expected_versions={f"project-{pid}": 0},
        )
        assert [e.position for e in recorded] == [head + 1, head + 2]
        assert recorded[0].prev_hash != GENESIS_HASH or head == 0
        assert recorded[1].prev_hash == recorded[0].hash

    async def test_metadata_and_payload_read_back_exactly(
        self, store: EventStore
    ) -> None:
        pid = f"p{uuid.uuid4().hex[:8]}"
        meta = {"actor": "alice", "request_id": "r-1", "client_address": "127.0.0.1"}
        event = NewEvent(
            stream_type="project",
            stream_id=f"project-{pid}",
            project_id=pid,
            event=ProjectCreated(project_id=pid, name="\u202eevil 🍷", description="é"),
        )
        [written] = await store.append([event], metadata=meta)
        [read] = await store.read_stream(f"project-{pid}")
        assert read.data["name"] == "\u202eevil 🍷"
        assert read.metadata == meta
        assert read.hash == written.hash


class TestImmutability:
    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE events SET type = 'Forged' WHERE position = 1",
            "DELETE FROM events WHERE position = 1",
            "TRUNCATE events",
        ],
    )
    async def test_the_application_role_cannot_change_events(
        self, store: EventStore, dsn: str, statement: str
    ) -> None:
        await store.append([project_event(f"p{uuid.uuid4().hex[:8]}")])
        with psycopg.connect(with_user(dsn, "animus_app")) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)

    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE events SET type = 'Forged' WHERE position = 1",
            "DELETE FROM events WHERE position = 1",
            "TRUNCATE events",
        ],
    )
    async def test_even_the_owner_is_refused_by_the_triggers(
        self, store: EventStore, dsn: str, statement: str
    ) -> None:
        await store.append([project_event(f"p{uuid.uuid4().hex[:8]}")])
        with psycopg.connect(dsn) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def tamper(dsn: str, *statements: str) -> None:
    """Edit events as a superuser who switched the guards off."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        for statement in statements:
            conn.execute(statement)


class TestVerify:
    @pytest.fixture
    async def tampered_db(self, services):  # type: ignore[no-untyped-def]
        name = f"animus_t_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        url = services.database_url.rsplit("/", 1)[0] + f"/{name}"
        migrate(url)
        pool = await open_pool(with_user(url, "animus_app"))
        async with EventStore(pool) as store:
            for i in range(30):
                await store.append([project_event(f"v{i}")])
        await pool.close()
        return url

    def test_an_untouched_chain_verifies(self, tampered_db: str) -> None:
        result = verify_chain(tampered_db)
        assert result.verified and result.events == 30

    def test_editing_one_events_data_names_that_position(
        self, tampered_db: str
    ) -> None:
        # `data` is generated from the hashed text: a forger must drop that first.
        tamper(
            tampered_db,
            "ALTER TABLE events ALTER COLUMN data DROP EXPRESSION",
            "UPDATE events SET data = jsonb_set(data, '{name}', '\"forged\"') "
            "WHERE position = 17",
        )
        result = verify_chain(tampered_db)
        assert not result.verified
        assert result.first_break is not None
        assert result.first_break.position == 17
        assert "payload" in result.first_break.reason

    def test_editing_the_hashed_text_breaks_the_link(self, tampered_db: str) -> None:
        tamper(
            tampered_db,
            "UPDATE events SET canonical = replace(canonical, '\"v11\"', '\"vX1\"') "
            "WHERE position = 12",
        )
        result = verify_chain(tampered_db)
        assert result.first_break is not None
        assert result.first_break.position == 12
        assert "hash" in result.first_break.reason

    def test_editing_a_scalar_column_is_caught(self, tampered_db: str) -> None:
        tamper(tampered_db, "UPDATE events SET type = 'Forged' WHERE position = 5")
        result = verify_chain(tampered_db)
        assert result.first_break is not None
        assert result.first_break.position == 5

    def test_deleting_an_event_is_caught_as_a_gap(self, tampered_db: str) -> None:
        tamper(tampered_db, "DELETE FROM events WHERE position = 9")
        result = verify_chain(tampered_db)
        assert result.first_break is not None
        assert result.first_break.position == 9
        assert result.first_break.reason == (
            "position is not gap-free: missing, the next stored position is 10"
        )

    @pytest.mark.parametrize("ranges", [7, 10, 1000])
    def test_breaks_at_range_boundaries_are_found(
        self, tampered_db: str, ranges: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Ranges are checked apart; a break on their seams must still show."""
        monkeypatch.setattr(verify, "RANGE_EVENTS", ranges)
        assert verify_chain(tampered_db).events == 30
        tamper(
            tampered_db,
            "UPDATE events SET prev_hash = hash WHERE position = 21",
            "DELETE FROM events WHERE position = 10",
        )
        result = verify_chain(tampered_db)
        assert result.first_break is not None
        assert result.first_break.position == 10
        assert "gap-free: missing" in result.first_break.reason
        assert result.events == result.first_break.position - 1

    def test_swapping_two_events_is_caught_where_the_order_breaks(
        self, tampered_db: str
    ) -> None:
        """Rows 7 and 8 trade places, each with its own text and hashes."""
        tamper(
            tampered_db,
            "UPDATE events SET position = position + 1000 WHERE position IN (7, 8)",
            "UPDATE events SET position = 8 WHERE position = 1007",
            "UPDATE events SET position = 7 WHERE position = 1008",
        )
        result = verify_chain(tampered_db)
        assert result.first_break is not None
        assert result.first_break.position == 7
        assert result.first_break.reason == (
            "prev_hash does not match the previous event's hash"
        )
        assert result.events == 6

    def test_swapping_two_events_payloads_is_caught_at_the_first(
        self, tampered_db: str
    ) -> None:
        """The rows keep their positions; their hashed texts trade places."""
        tamper(
            tampered_db,
            "UPDATE events AS e SET canonical = o.canonical FROM events AS o "
            "WHERE (e.position, o.position) IN ((14, 15), (15, 14))",
        )
        result = verify_chain(tampered_db)
        assert result.first_break is not None
        assert result.first_break.position == 14
        assert result.first_break.reason == (
            "hash does not match sha256(prev_hash || canonical)"
        )

    def test_a_forged_prev_hash_column_is_named(self, tampered_db: str) -> None:
        tamper(tampered_db, "UPDATE events SET prev_hash = hash WHERE position = 21")
        result = verify_chain(tampered_db)
        assert result.first_break is not None
        assert result.first_break.position == 21
        assert "prev_hash" in result.first_break.reason

    def test_animus_verify_prints_the_broken_position(self, tampered_db: str) -> None:
        tamper(
            tampered_db,
            "ALTER TABLE events ALTER COLUMN data DROP EXPRESSION",
            "UPDATE events SET data = '{}' WHERE position = 23",
        )
        done = subprocess.run(
            [sys.executable, "-m", "animus", "verify"],
            env={"ANIMUS_DATABASE_URL": tampered_db, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        assert "position 23" in done.stdout
