"""Following the event log from a durable checkpoint: the relay's machinery.

A `LogFollower` reads the log after its checkpoint (a row of
`relay_checkpoints`, by name), hands each batch to `_deliver`, and advances
the checkpoint only after the whole batch was delivered. A crash or an
outage of whatever it delivers to therefore delivers at most one batch
again; the receivers deduplicate (JetStream by `Nats-Msg-Id`, a SIEM by
position). Failures are retried with a growing delay; the loop outlives
them. The relay, the SIEM stream's publisher and the syslog forwarder are
followers, each under its own checkpoint name.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import structlog
from psycopg_pool import AsyncConnectionPool

from animus.db import translate_db_errors
from animus.errors import AnimusError

__all__ = ["FollowerState", "LogFollower"]

log = structlog.get_logger(__name__)

BATCH_SIZE = 500
IDLE_INTERVAL = 0.1
RETRY_INITIAL = 0.2
RETRY_MAX = 5.0

_READ_CHECKPOINT = "SELECT position FROM relay_checkpoints WHERE name = %s"
_WRITE_CHECKPOINT = (
    "INSERT INTO relay_checkpoints (name, position) VALUES (%s, %s) "
    "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position"
)


class Positioned(Protocol):
    @property
    def position(self) -> int: ...


T = TypeVar("T", bound=Positioned)


class FollowerState(enum.Enum):
    """Where a follower is in its lifecycle."""

    CREATED = "created"  # constructed; nothing runs yet
    RUNNING = "running"  # the loop is active
    STOPPING = "stopping"  # stop() was called; the loop is being ended
    STOPPED = "stopped"  # the loop has ended; start() may run it again


class LogFollower(abc.ABC, Generic[T]):
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
        self.name = name
        self._pool = pool
        self._batch_size = batch_size
        self._idle_interval = idle_interval
        self._task: asyncio.Task[None] | None = None
        self._state = FollowerState.CREATED
        self.position = 0
        self.published = 0

    @property
    def state(self) -> FollowerState:
        return self._state

    async def __aenter__(self) -> LogFollower[T]:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the loop; it resumes from the stored checkpoint."""
        if self._task is not None:
            return
        self._state = FollowerState.RUNNING
        self._task = asyncio.create_task(self._run(), name=f"follower-{self.name}")
        log.info("relay_started", relay=self.name)

    async def stop(self) -> None:
        """End the loop. What was delivered past the checkpoint is delivered
        again on the next start, and deduplicated by the receiver."""
        if self._task is None:
            return
        self._state = FollowerState.STOPPING
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._state = FollowerState.STOPPED
        log.info("relay_stopped", relay=self.name, position=self.position)

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

    async def _run(self) -> None:
        delay = RETRY_INITIAL
        loaded = False
        while True:
            try:
                if not loaded:
                    self.position = await self._load_checkpoint()
                    loaded = True
                count = await self.run_once()
            except AnimusError as exc:
                log.warning("relay_retrying", relay=self.name, error=exc.detail)
            except Exception:  # noqa: BLE001 - the loop must outlive a bad batch
                log.exception("relay_batch_failed", relay=self.name)
            else:
                delay = RETRY_INITIAL
                if count < self._batch_size:
                    await asyncio.sleep(self._idle_interval)
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

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
