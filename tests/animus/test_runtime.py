"""A process stops promptly on SIGTERM: at once while it is still starting
(it cannot notice `stop` then), within a grace period once it runs."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from animus import runtime
from animus.runtime import run_until_signalled


def terminate_soon() -> None:
    asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)


async def test_a_body_still_starting_is_cancelled_and_unwinds() -> None:
    unwound: list[str] = []

    async def body(stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(3600)  # a connection retried forever
        finally:
            unwound.append("closed")

    terminate_soon()
    await asyncio.wait_for(run_until_signalled("starting", body), 5)

    assert unwound == ["closed"]


async def test_a_running_body_returns_by_itself() -> None:
    finished: list[str] = []

    async def body(stop: asyncio.Event) -> None:
        await stop.wait()
        await asyncio.sleep(0.1)  # its own orderly stop
        finished.append("done")

    terminate_soon()
    await asyncio.wait_for(run_until_signalled("running", body), 5)

    assert finished == ["done"]


async def test_a_running_body_that_hangs_is_cancelled_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "STOP_GRACE_SECONDS", 0.5)

    async def body(stop: asyncio.Event) -> None:
        await stop.wait()
        await asyncio.sleep(3600)  # a stop that never ends

    terminate_soon()
    await asyncio.wait_for(run_until_signalled("hanging", body), 5)


async def test_an_error_of_the_body_is_raised() -> None:
    async def body(stop: asyncio.Event) -> None:
        raise RuntimeError("broken at start")

    with pytest.raises(RuntimeError, match="broken at start"):
        await run_until_signalled("broken", body)
