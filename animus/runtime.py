"""Run one long-lived process until SIGINT or SIGTERM, then stop it cleanly."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


def settle_heap() -> None:
    """Exempt what exists now from future garbage collections.

    A long-lived process holds its modules, models and app for its whole
    life; the collector's full passes walked them all, time and again, and
    those pauses were the tail of the gateway's latency (p99 about 120 ms
    against 60 ms with them exempted, at p50 35 ms). Call it once the
    process has built what it keeps.
    """
    gc.collect()
    gc.freeze()


async def wait_for_signal() -> None:
    """Return when the process receives SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def run_until_signalled(
    name: str, body: Callable[[asyncio.Event], Awaitable[None]]
) -> None:
    """Run `body(stop)`; set `stop` on a signal and wait for body to finish.

    `body` owns its resources and must return soon after `stop` is set.
    """
    settle_heap()
    stop = asyncio.Event()
    task = asyncio.create_task(body(stop), name=name)
    signal_task = asyncio.create_task(wait_for_signal())
    done, _ = await asyncio.wait(
        {task, signal_task}, return_when=asyncio.FIRST_COMPLETED
    )
    stop.set()
    if task not in done:
        log.info("process_stopping", process=name)
        await task
    else:
        signal_task.cancel()
        task.result()
    log.info("process_stopped", process=name)
