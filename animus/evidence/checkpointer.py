"""The checkpointer: extends the Merkle tree and signs tree heads.

It follows the log as the relay does (a short poll; the append path sends no
NOTIFY), hashes each new event's canonical bytes into a leaf, and stores the
nodes that complete (animus/evidence/tree.py). Every
`ANIMUS_CHECKPOINT_EVERY_EVENTS` events, exactly, and at least every
`ANIMUS_CHECKPOINT_INTERVAL_SECONDS` while new events arrive, it signs the
tree head as a checkpoint note (animus/evidence/note.py) and records it in
the transaction that stores the nodes, so a restart never signs a size
twice nor skips one. Then it publishes each recorded checkpoint on
`animus.evidence.checkpoint`; how far that got is row `checkpoint-bus` of
`relay_checkpoints`, so an outage of the bus delays copies but loses none.
"""

from __future__ import annotations

import asyncio
import enum
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from animus.batchloop import BatchLoop
from animus.bus import Bus, bus_session
from animus.db import app_dsn, open_pool, translate_db_errors
from animus.errors import AnimusError, ConfigurationError
from animus.evidence import tree
from animus.evidence.checkpoints import (
    StoredCheckpoint,
    checkpoints_after,
    insert_checkpoint,
)
from animus.evidence.keys import signing_key
from animus.evidence.note import key_hash, sign_checkpoint
from contracts.bus import CHECKPOINT_SUBJECT, SignedCheckpoint

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from animus.settings import Settings

__all__ = ["Checkpointer", "run"]

log = structlog.get_logger(__name__)

BATCH_SIZE = 5000
IDLE_INTERVAL = 0.2
PUBLISHED_NAME = "checkpoint-bus"

_READ_LEAVES = (
    "SELECT position, sha256('\\x00'::bytea || textsend(canonical)), hash "
    "FROM events WHERE position > %s ORDER BY position LIMIT %s"
)
_LAST_SIGNED = (
    "SELECT tree_size, signed_at FROM checkpoints ORDER BY tree_size DESC LIMIT 1"
)
_READ_PROGRESS = "SELECT position FROM relay_checkpoints WHERE name = %s"
_WRITE_PROGRESS = (
    "INSERT INTO relay_checkpoints (name, position) VALUES (%s, %s) "
    "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position"
)


class CheckpointerState(enum.Enum):
    """Where a checkpointer is in its lifecycle."""

    CREATED = "created"  # constructed; nothing runs yet
    RUNNING = "running"  # the loop follows the log
    STOPPING = "stopping"  # stop() was called; the loop is being ended
    STOPPED = "stopped"  # the loop has ended; start() may run it again


class Checkpointer(BatchLoop):
    """Builds the tree and signs checkpoints from where it stopped.

    Use as `async with Checkpointer(...):` or call start() and stop(). With
    `bus` None it signs and records but publishes nothing (tests, tools).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        bus: Bus | None,
        *,
        key: Ed25519PrivateKey,
        origin: str,
        every_events: int,
        interval_seconds: float,
        batch_size: int = BATCH_SIZE,
        idle_interval: float = IDLE_INTERVAL,
    ) -> None:
        super().__init__(
            name="checkpointer", batch_size=batch_size, idle_interval=idle_interval
        )
        self._pool = pool
        self._bus = bus
        self._key = key
        self._origin = origin
        self._key_id = key_hash(origin, key.public_key()).hex()
        self._every = every_events
        self._interval = interval_seconds
        self._builder = tree.TreeBuilder()
        self._built = 0
        self._loaded = False
        self.signed_size = 0  # tree size of the newest checkpoint
        self.signed_at = 0.0  # its time (epoch seconds)
        self.published_size = 0  # newest checkpoint on the bus
        self._chain_head = b""

    @property
    def built_size(self) -> int:
        """Leaves committed to `merkle_nodes` (the builder may run ahead)."""
        return self._built

    def _on_started(self) -> None:
        log.info("checkpointer_started", key_id=self._key_id, origin=self._origin)

    def _on_stopped(self) -> None:
        # what was committed stays; the rest is redone from the stored tree
        self._loaded = False
        log.info("checkpointer_stopped", built=self.built_size, signed=self.signed_size)

    async def run_once(self) -> int:
        """Extend the tree by one batch, sign if due, publish; events added.

        Raises:
            StoreError: the database failed; nothing of the batch is kept.
            BusError: a publish failed; it is retried on the next call.
        """
        with translate_db_errors():
            async with self._pool.connection() as conn:
                if not self._loaded:
                    await self._load(conn)
                added = await self._extend(conn)
        await self._publish()
        return added

    async def _load(self, conn: AsyncConnection[Any]) -> None:
        self._builder = tree.TreeBuilder()
        await self._builder.load(conn)
        self._built = self._builder.size
        cur = await conn.execute(_LAST_SIGNED)
        row = await cur.fetchone()
        self.signed_size = int(row[0]) if row else 0
        self.signed_at = row[1].timestamp() if row else time.time()
        cur = await conn.execute(_READ_PROGRESS, (PUBLISHED_NAME,))
        row = await cur.fetchone()
        self.published_size = int(row[0]) if row else 0
        self._chain_head = b""  # read again when the next checkpoint needs it
        self._loaded = True
        log.info(
            "checkpointer_loaded",
            built=self.built_size,
            signed=self.signed_size,
            published=self.published_size,
        )

    async def _extend(self, conn: AsyncConnection[Any]) -> int:
        """Add the next events (up to the next checkpoint by count) and sign."""
        target = self.signed_size + self._every - self._builder.size
        limit = min(self._batch_size, target) if target > 0 else self._batch_size
        cur = await conn.execute(_READ_LEAVES, (self._builder.size, limit))
        rows = await cur.fetchall()
        if not rows and not self._due():
            return 0
        builder = self._builder
        try:
            async with conn.transaction():
                for position, leaf, chain_hash in rows:
                    if position != builder.size + 1:
                        raise AnimusError(
                            f"position {builder.size + 1} is missing from the log"
                        )
                    builder.append(bytes(leaf))
                    self._chain_head = bytes(chain_hash)
                await builder.flush(conn)
                if self._due():
                    await self._sign(conn)
        except BaseException:
            self._loaded = False  # the builder ran ahead of what was stored
            raise
        self._built = builder.size
        return len(rows)

    def _due(self) -> bool:
        """A checkpoint is due: N events, or T seconds with something new."""
        new = self._builder.size - self.signed_size
        if new <= 0:
            return False
        return new >= self._every or time.time() - self.signed_at >= self._interval

    async def _sign(self, conn: AsyncConnection[Any]) -> None:
        size = self._builder.size
        if not self._chain_head:
            cur = await conn.execute(
                "SELECT hash FROM events WHERE position = %s", (size,)
            )
            row = await cur.fetchone()
            assert row is not None
            self._chain_head = bytes(row[0])
        root = self._builder.root()
        note = sign_checkpoint(self._key, self._origin, size, root, self._chain_head)
        now = datetime.now(UTC)
        checkpoint = StoredCheckpoint(
            tree_size=size,
            root_hash=root,
            chain_head=self._chain_head,
            key_id=self._key_id,
            signed_at=now,
            note=note,
        )
        await insert_checkpoint(conn, checkpoint)
        self.signed_size = size
        self.signed_at = now.timestamp()
        log.info("checkpoint_signed", tree_size=size, key_id=self._key_id)

    async def _publish(self) -> None:
        """Publish every recorded checkpoint the bus has not acknowledged."""
        if self._bus is None or self.published_size >= self.signed_size:
            return
        with translate_db_errors():
            async with self._pool.connection() as conn:
                unpublished = await checkpoints_after(conn, self.published_size)
        for stored in unpublished:
            message = SignedCheckpoint(**stored.as_json())
            await self._bus.publish(
                CHECKPOINT_SUBJECT,
                message.model_dump_json().encode(),
                msg_id=f"checkpoint:{stored.origin}:{stored.tree_size}",
            )
            with translate_db_errors():
                async with self._pool.connection() as conn:
                    await conn.execute(
                        _WRITE_PROGRESS, (PUBLISHED_NAME, stored.tree_size)
                    )
            self.published_size = stored.tree_size


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """The `animus checkpointer` process: sign until `stop` is set."""
    key = signing_key(settings, create=True)
    assert key is not None
    if not settings.nats_url:
        raise ConfigurationError(
            "ANIMUS_NATS_URL: the checkpointer needs a NATS server"
        )
    pool = await open_pool(app_dsn(settings), max_size=2, name="checkpointer")
    try:
        async with (
            bus_session(
                settings.nats_url,
                name="animus-checkpointer",
                wait=settings.nats_wait_seconds,
            ) as bus,
            Checkpointer(
                pool,
                bus,
                key=key,
                origin=settings.checkpoint_origin,
                every_events=settings.checkpoint_every_events,
                interval_seconds=settings.checkpoint_interval_seconds,
            ),
        ):
            await stop.wait()
    finally:
        await pool.close()
