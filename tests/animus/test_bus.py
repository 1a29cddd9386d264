"""Connecting to the bus: bounded for a process that needs it, in the
background for one that can serve without it, and quiet about closing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import nats.errors
import pytest
import structlog

from animus.bus import connect_bus, fetch_batch, open_bus
from animus.embedded import EmbeddedNats, free_port
from animus.errors import BusError

if TYPE_CHECKING:
    from tests.conftest import Services


async def test_a_bounded_wait_gives_up_naming_the_setting_not_the_password() -> None:
    port = free_port()
    loop = asyncio.get_running_loop()
    began = loop.time()

    with pytest.raises(BusError) as failed:
        await connect_bus(f"nats://animus:hunter2@127.0.0.1:{port}", name="t", wait=0.5)

    assert failed.value.detail == (
        f"ANIMUS_NATS_URL: NATS at 127.0.0.1:{port} did not answer within 0.5s "
        "(see ANIMUS_NATS_WAIT_SECONDS)"
    )
    assert loop.time() - began < 3


async def test_a_bus_opened_before_nats_connects_when_it_comes(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats", free_port())
    bus = open_bus(server.url, name="late")
    try:
        await asyncio.sleep(0.2)
        with pytest.raises(BusError, match="not connected"):
            await bus.check()

        server.start()
        await bus.connected(10)
        await bus.check()
    finally:
        await bus.close()
        server.stop()


async def test_closing_while_connecting_stops_trying() -> None:
    bus = open_bus(f"nats://127.0.0.1:{free_port()}", name="t")
    await asyncio.sleep(0.2)

    await asyncio.wait_for(bus.close(), 2)

    assert bus.nc.is_closed


async def test_closing_is_no_disconnection_warning(services: Services) -> None:
    with structlog.testing.capture_logs() as logs:
        bus = await connect_bus(services.nats_url, name="t")
        await bus.close()

    assert [(e["event"], e["log_level"]) for e in logs] == [("bus_closed", "info")]


async def test_failed_attempts_warn_once(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(BusError):
            await connect_bus(f"nats://127.0.0.1:{free_port()}", name="t", wait=1.6)

    errors = [e for e in logs if e["event"] == "bus_error"]
    assert len(errors) >= 2
    assert [e["log_level"] for e in errors][:2] == ["warning", "debug"]


class _TimingOut:
    """A pull subscription whose fetch ends as nats-py's sometimes does."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def fetch(self, batch: int, timeout: float) -> list[object]:
        raise self.error


@pytest.mark.parametrize("error", [TimeoutError(), nats.errors.TimeoutError()])
async def test_a_fetch_that_times_out_either_way_is_an_empty_batch(
    error: BaseException,
) -> None:
    """nats-py 2.x lets a bare asyncio timeout escape `fetch` at times; the
    coordinator used to take it for a failure and drop its subscription."""
    assert await fetch_batch(_TimingOut(error), timeout=0.01) == []  # type: ignore[arg-type]
