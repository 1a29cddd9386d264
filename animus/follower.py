"""Following the event log from a durable checkpoint: the relay's machinery.

A `LogFollower` reads the log after its checkpoint (a row of
`relay_checkpoints`, by name), hands each batch to `_deliver`, and advances
the checkpoint only after the whole batch was delivered. A crash or an
outage of whatever it delivers to therefore delivers at most one batch
again; the receivers deduplicate (JetStream by `Nats-Msg-Id`, a SIEM by
position). The loop and its retries are animus/batchloop.py's. The relay,
the SIEM stream's publisher and the syslog forwarder are followers, each
under its own checkpoint name.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import structlog
from psycopg_pool import AsyncConnectionPool

from animus.batchloop import BatchLoop
from animus.db import translate_db_errors

__all__ = ["LogFollower"]

log = structlog.get_logger(__name__)

BATCH_SIZE = 500
IDLE_INTERVAL = 0.1

_READ_CHECKPOINT = "SELECT position FROM relay_checkpoints WHERE name = %s"
_WRITE_CHECKPOINT = (
    "INSERT INTO relay_checkpoints (name, position) VALUES (%s, %s) "
    "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position"
)


class Positioned(Protocol):
    @property
    def position(self) -> int: ...


T = TypeVar("T", bound=Positioned)


class LogFollower(BatchLoop, Generic[T]):
    """Delivers the log in position order from a durable checkpoint.

    Use as `async with follower:` or call start() and stop(). Subclasses
    read a batch (`_read`) and deliver it (`_deliver`).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        name: str,
        batch_size: int = BATCH_SIZE,
        idle_interval: float = IDLE_INTERVAL,
    ) -> None:
        super().__init__(
            name="relay", batch_size=batch_size, idle_interval=idle_interval, relay=name
        )
        self.name = name
        self._pool = pool
        self.position = 0
        self.published = 0

    def _on_started(self) -> None:
        log.info("relay_started", relay=self.name)

    def _on_stopped(self) -> None:
        # what was delivered past the checkpoint is delivered again on the
        # next start, and deduplicated by the receiver
        log.info("relay_stopped", relay=self.name, position=self.position)

    async def _prepare(self) -> None:
        """Resume from the stored checkpoint."""
        self.position = await self._load_checkpoint()

    async def run_once(self) -> int:
        """Deliver one batch after the checkpoint; the number of events.

        Raises:
            AnimusError: delivery failed (BusError, ...); the checkpoint is
                kept. StoreError: the database failed.
        """
        items = await self._read(self.position, self._batch_size)
        if items:
            await self._deliver(items)
            await self._save_checkpoint(items[-1].position)
            self.published += len(items)
        return len(items)

    @abc.abstractmethod
    async def _read(self, after: int, limit: int) -> Sequence[T]:
        """At most `limit` items after position `after`, in position order."""

    @abc.abstractmethod
    async def _deliver(self, items: Sequence[T]) -> None:
        """Deliver a batch, in order; raise to have it delivered again."""

    async def _load_checkpoint(self) -> int:
        with translate_db_errors():
            async with self._pool.connection() as conn:
                cur = await conn.execute(_READ_CHECKPOINT, (self.name,))
                row = await cur.fetchone()
        position = int(row[0]) if row else 0
        log.info("relay_checkpoint_loaded", relay=self.name, position=position)
        return position

    async def _save_checkpoint(self, position: int) -> None:
        with translate_db_errors():
            async with self._pool.connection() as conn:
                await conn.execute(_WRITE_CHECKPOINT, (self.name, position))
        self.position = position
