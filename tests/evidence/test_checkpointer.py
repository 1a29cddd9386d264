"""The checkpointer: signs every N events and every T seconds, publishes each
checkpoint on the bus, resumes after a restart without signing a size twice
or skipping one, and refuses a wrong key setting with one line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg_pool import AsyncConnectionPool

from animus import merkle
from animus.bus import Bus, connect_bus, fetch_batch
from animus.db import open_pool, with_user
from animus.errors import ConfigurationError
from animus.eventstore import EventStore
from animus.evidence.checkpointer import Checkpointer
from animus.evidence.checkpoints import list_checkpoints
from animus.evidence.keys import signing_key
from animus.evidence.note import verify_checkpoint, vkey_of
from animus.settings import Settings, load_settings
from contracts.bus import CHECKPOINT_SUBJECT, EVIDENCE_STREAM
from tests.evidence.evtest import fill, new_database, stored_leaves

if TYPE_CHECKING:
    from tests.conftest import Services


@pytest.fixture
async def pool(services: Services) -> AsyncIterator[AsyncConnectionPool]:
    async with new_database(services) as dsn:
        pool = await open_pool(with_user(dsn, "animus_app"), max_size=4)
        yield pool
        await pool.close()


@pytest.fixture(scope="module")
async def bus(services: Services) -> AsyncIterator[Bus]:
    bus = await connect_bus(services.nats_url, name="test-checkpointer", wait=10)
    await bus.ensure_streams()
    yield bus
    await bus.close()


class Signer:
    """A fresh key and origin per test, so bus messages tell tests apart."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.origin = f"test-{uuid.uuid4().hex[:8]}.local/log"
        self.vkey = vkey_of(self.key.public_key(), self.origin)

    def checkpointer(
        self, pool: AsyncConnectionPool, bus: Bus | None, **options: Any
    ) -> Checkpointer:
        options = {"every_events": 50, "interval_seconds": 3600} | options
        return Checkpointer(
            pool,
            bus,
            key=self.key,
            origin=self.origin,
            idle_interval=0.02,
            batch_size=64,
            **options,
        )


async def until(check: Any, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def sizes(pool: AsyncConnectionPool) -> list[int]:
    async with pool.connection() as conn:
        return sorted(c.tree_size for c in await list_checkpoints(conn, limit=1000))


async def published(bus: Bus, origin: str) -> list[dict[str, Any]]:
    """Every checkpoint of `origin` on the bus, from the stream's start."""
    sub = await bus.pull_consumer(
        stream=EVIDENCE_STREAM,
        durable=f"t{uuid.uuid4().hex[:10]}",
        subject=CHECKPOINT_SUBJECT,
    )
    found = []
    while batch := await fetch_batch(sub, batch=256, timeout=0.5):
        for msg in batch:
            body = json.loads(msg.data)
            if body["origin"] == origin:
                found.append(body)
            await msg.ack()
    await sub.unsubscribe()
    return found


class TestSigning:
    async def test_every_n_events_signs_a_checkpoint_that_verifies(
        self, pool: AsyncConnectionPool
    ) -> None:
        signer = Signer()
        async with EventStore(pool) as store:
            await fill(store, 175, batch=30)
        async with signer.checkpointer(pool, None) as checkpointer:
            await until(lambda: _at_least(checkpointer, 175))
        assert await sizes(pool) == [50, 100, 150]
        async with pool.connection() as conn:
            leaves = await stored_leaves(conn)
            stored = await list_checkpoints(conn)
            cur = await conn.execute("SELECT position, hash FROM events")
            chain = {int(p): bytes(h) for p, h in await cur.fetchall()}
        for checkpoint in stored:
            note = verify_checkpoint(checkpoint.note, signer.vkey)
            assert note.tree_size == checkpoint.tree_size
            assert note.root_hash == merkle.root(leaves[: note.tree_size])
            assert note.chain_head == chain[note.tree_size]
            assert checkpoint.key_id == note.key_id

    async def test_every_t_seconds_signs_what_is_new_and_nothing_when_idle(
        self, pool: AsyncConnectionPool
    ) -> None:
        signer = Signer()
        async with (
            EventStore(pool) as store,
            signer.checkpointer(pool, None, every_events=10_000, interval_seconds=0.5),
        ):
            await fill(store, 7)
            await until(lambda: _sizes_are(pool, [7]))
            await asyncio.sleep(1.2)  # idle: nothing new, nothing signed
            assert await sizes(pool) == [7]
            await fill(store, 3)
            await until(lambda: _sizes_are(pool, [7, 10]))


class TestBusAndRestart:
    async def test_each_checkpoint_is_published_once_and_a_restart_resumes(
        self, pool: AsyncConnectionPool, bus: Bus
    ) -> None:
        signer = Signer()
        async with EventStore(pool) as store:
            await fill(store, 120)
            async with signer.checkpointer(pool, bus) as checkpointer:
                await until(lambda: _published(checkpointer, 100))
            await fill(store, 90)  # while it is down
            async with signer.checkpointer(pool, bus) as checkpointer:
                await until(lambda: _published(checkpointer, 200))
                await until(lambda: _at_least(checkpointer, 210))
        assert await sizes(pool) == [50, 100, 150, 200]
        messages = await published(bus, signer.origin)
        assert [m["tree_size"] for m in messages] == [50, 100, 150, 200]
        for message in messages:
            checkpoint = verify_checkpoint(message["note"], signer.vkey)
            assert checkpoint.root_hex == message["root_hash"]

    async def test_a_checkpoint_recorded_while_the_bus_was_away_is_published_later(
        self, pool: AsyncConnectionPool, bus: Bus
    ) -> None:
        signer = Signer()
        async with EventStore(pool) as store:
            await fill(store, 60)
        async with signer.checkpointer(pool, None) as checkpointer:
            await until(lambda: _at_least(checkpointer, 60))
        async with signer.checkpointer(pool, bus) as checkpointer:
            await until(lambda: _published(checkpointer, 50))
        messages = await published(bus, signer.origin)
        assert [m["tree_size"] for m in messages] == [50]


class TestKeySetting:
    def test_a_malformed_key_is_refused_naming_the_setting(self) -> None:
        with pytest.raises(ConfigurationError) as refused:
            load_settings(checkpoint_signing_key="not a key")
        assert refused.value.detail.startswith("ANIMUS_CHECKPOINT_SIGNING_KEY: must ")
        assert "not a key" not in refused.value.detail

    def test_production_without_a_key_is_refused(self, tmp_path: Path) -> None:
        settings = Settings.model_construct(
            environment="production", checkpoint_signing_key=None, home=tmp_path
        )
        with pytest.raises(ConfigurationError, match="^ANIMUS_CHECKPOINT_SIGNING_KEY"):
            signing_key(settings)

    def test_development_generates_one_key_and_reuses_it(self, tmp_path: Path) -> None:
        settings = load_settings(home=tmp_path)
        assert signing_key(settings) is None
        first = signing_key(settings, create=True)
        again = signing_key(settings, create=True)
        assert first is not None and again is not None
        assert vkey_of(first.public_key(), "a") == vkey_of(again.public_key(), "a")
        path = tmp_path / "keys" / "checkpoint-signing.pem"
        assert path.stat().st_mode & 0o777 == 0o600

    def test_the_process_refuses_a_wrong_key_with_one_line(
        self, tmp_path: Path
    ) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ANIMUS_")}
        done = subprocess.run(
            [sys.executable, "-m", "animus", "checkpointer"],
            env={
                **clean,
                "ANIMUS_HOME": str(tmp_path),
                "ANIMUS_CHECKPOINT_SIGNING_KEY": str(tmp_path / "missing.pem"),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("animus: ANIMUS_CHECKPOINT_SIGNING_KEY: must be")


async def _at_least(checkpointer: Checkpointer, size: int) -> bool:
    return checkpointer.built_size >= size


async def _published(checkpointer: Checkpointer, size: int) -> bool:
    return checkpointer.published_size >= size


async def _sizes_are(pool: AsyncConnectionPool, wanted: list[int]) -> bool:
    return await sizes(pool) == wanted
