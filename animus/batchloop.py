"""A loop that works through the log one batch at a time, in the background.

The relay's followers and the checkpointer share this shape: a task calls
`run_once()` again and again; a short batch means the log is drained for
now, so the loop idles briefly (the append path sends no NOTIFY); a failure
is logged and retried after a growing delay, and the loop outlives it.
Stopping cancels the task: whatever a batch had not committed is redone on
the next start, which each subclass makes safe (a durable checkpoint, and
receivers that deduplicate).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
from typing import Self

import structlog

from animus.errors import AnimusError

__all__ = ["BatchLoop", "LoopState"]

log = structlog.get_logger(__name__)

RETRY_INITIAL = 0.2
RETRY_MAX = 5.0


class LoopState(enum.Enum):
    """Where a loop is in its lifecycle."""

    CREATED = "created"  # constructed; nothing runs yet
    RUNNING = "running"  # the loop is active
    STOPPING = "stopping"  # stop() was called; the loop is being ended
    STOPPED = "stopped"  # the loop has ended; start() may run it again


class BatchLoop(abc.ABC):
    """Runs `run_once()` in a task until stopped.

    Use as `async with loop:` or call start() and stop(). `name` prefixes
    the log events (`<name>_retrying`, `<name>_batch_failed`); `context` is
    bound to them and, with `name`, names the task.
    """

    def __init__(
        self, *, name: str, batch_size: int, idle_interval: float, **context: str
    ) -> None:
        self._loop_name = name
        self._task_name = "-".join([name, *context.values()])
        self._log = log.bind(**context)
        self._batch_size = batch_size
        self._idle_interval = idle_interval
        self._task: asyncio.Task[None] | None = None
        self._state = LoopState.CREATED

    @property
    def state(self) -> LoopState:
        return self._state

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the loop; a second call while it runs does nothing."""
        if self._task is not None:
            return
        self._state = LoopState.RUNNING
        self._task = asyncio.create_task(self._run(), name=self._task_name)
        self._on_started()

    async def stop(self) -> None:
        """End the loop; what a batch had not committed is redone on start."""
        if self._task is None:
            return
        self._state = LoopState.STOPPING
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._state = LoopState.STOPPED
        self._on_stopped()

    @abc.abstractmethod
    async def run_once(self) -> int:
        """Work through one batch; how many items it held."""

    async def _prepare(self) -> None:  # noqa: B027 - an optional hook
        """Called before the first batch, again until it succeeds."""

    def _on_started(self) -> None:  # noqa: B027 - an optional hook
        """Called once the task runs (to log it)."""

    def _on_stopped(self) -> None:  # noqa: B027 - an optional hook
        """Called once the task has ended (to log it, to reset state)."""

    async def _run(self) -> None:
        delay = RETRY_INITIAL
        prepared = False
        while True:
            try:
                if not prepared:
                    await self._prepare()
                    prepared = True
                count = await self.run_once()
            except AnimusError as exc:
                self._log.warning(f"{self._loop_name}_retrying", error=exc.detail)
            except Exception:  # noqa: BLE001 - the loop must outlive a bad batch
                self._log.exception(f"{self._loop_name}_batch_failed")
            else:
                delay = RETRY_INITIAL
                if count < self._batch_size:
                    await asyncio.sleep(self._idle_interval)
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
