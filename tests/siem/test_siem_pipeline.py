"""The audit publisher sends a batch without waiting for each acknowledgement,
and still stores every record once, in position order: messages lost in the
middle of a batch make the server refuse every later one of the batch (each
expects its predecessor's stream sequence), and the retry resumes after the
stream's last record; a crash after publishing and before the checkpoint
republishes nothing; another log's message at the end of the stream, and a
broker restarted under load, lose and repeat nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from psycopg_pool import AsyncConnectionPool
from siemtest import append_projects

from animus.bus import Bus, Outgoing, PublishAck, connect_bus
from animus.embedded import EmbeddedNats, free_port
from animus.errors import BusError
from animus.eventstore import EventStore
from animus.siem.stream import POSITION_HEADER, AuditPublisher
from contracts.bus import AUDIT_STREAM


class LossyBus(Bus):
    """The real bus, except that the messages at `drop` (indexes into the
    next pipelined batch) never reach the server, as if lost in an outage."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus.nc)
        self.drop: set[int] = set()
        self.outcomes: list[PublishAck | BusError] = []

    async def publish_batch(
        self, messages: Sequence[Outgoing], *, timeout: float = 10
    ) -> list[PublishAck | BusError]:
        drop, self.drop = self.drop, set()
        sent = [m for n, m in enumerate(messages) if n not in drop]
        answers = iter(await super().publish_batch(sent, timeout=timeout))
        self.outcomes = [
            BusError("lost") if n in drop else next(answers)
            for n in range(len(messages))
        ]
        return self.outcomes


async def stream_positions(bus: Bus) -> list[int]:
    """The `Animus-Position` of every message of the stream, in stream order."""
    state = (await bus.js.stream_info(AUDIT_STREAM)).state
    positions = []
    for seq in range(state.first_seq, state.last_seq + 1):
        msg = await bus.js.get_msg(AUDIT_STREAM, seq=seq)
        if msg.headers and POSITION_HEADER in msg.headers:
            positions.append(int(msg.headers[POSITION_HEADER]))
    return positions


async def drain(publisher: AuditPublisher) -> None:
    """Run batches until the log is published, retrying failed ones."""
    for _ in range(50):
        try:
            if not await publisher.run_once():
                return
        except BusError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"the publisher stopped at {publisher.position}")


@pytest.fixture
async def empty_stream(bus: Bus) -> Bus:
    await bus.js.purge_stream(AUDIT_STREAM)
    return bus


async def test_records_lost_mid_batch_are_refused_after_and_retried_in_order(
    store: EventStore, empty_stream: Bus, pool: AsyncConnectionPool
) -> None:
    events = await append_projects(store, 60)
    first = events[0].position
    lossy = LossyBus(empty_stream)
    publisher = AuditPublisher(lossy, pool, name="lossy", batch_size=20)
    publisher.position = first - 1
    await publisher.run_once()  # 20 records, chained from the first one

    lossy.drop = {5, 6}
    with pytest.raises(BusError, match="position"):
        await publisher.run_once()
    refused = lossy.outcomes[7:]
    assert all(isinstance(o, BusError) for o in refused)
    assert all("wrong last sequence" in str(o) for o in refused)
    assert publisher.position == events[19].position  # the checkpoint held
    assert await stream_positions(empty_stream) == list(range(first, first + 25))

    await drain(publisher)
    assert await stream_positions(empty_stream) == [e.position for e in events]
    assert publisher.position == events[-1].position


async def test_a_crash_before_the_checkpoint_republishes_nothing(
    store: EventStore, empty_stream: Bus, pool: AsyncConnectionPool
) -> None:
    events = await append_projects(store, 30)
    first = events[0].position
    publisher = AuditPublisher(empty_stream, pool, name="crash-1", batch_size=50)
    publisher.position = first - 1
    await drain(publisher)
    before = (await empty_stream.js.stream_info(AUDIT_STREAM)).state

    # restarted with a checkpoint that lags what the stream holds
    again = AuditPublisher(empty_stream, pool, name="crash-2", batch_size=7)
    again.position = first - 1
    more = await append_projects(store, 12)
    await drain(again)

    assert again.published == len(events) + len(more)  # read, not sent again
    after = (await empty_stream.js.stream_info(AUDIT_STREAM)).state
    assert after.last_seq == before.last_seq + len(more)  # nothing republished
    assert await stream_positions(empty_stream) == [e.position for e in events + more]


async def test_another_logs_message_at_the_end_is_not_taken_for_ours(
    store: EventStore, empty_stream: Bus, pool: AsyncConnectionPool
) -> None:
    events = await append_projects(store, 10)
    first = events[0].position
    publisher = AuditPublisher(empty_stream, pool, name="foreign-1")
    publisher.position = first - 1
    await drain(publisher)
    # another log's record claims a later position of ours
    await empty_stream.publish(
        "animus.audit.other.ProjectCreated",
        b"{}",
        msg_id="not-one-of-ours",
        headers={POSITION_HEADER: str(events[-1].position + 3)},
    )
    more = await append_projects(store, 10)
    again = AuditPublisher(empty_stream, pool, name="foreign-2")
    again.position = events[-1].position
    await drain(again)
    assert await stream_positions(empty_stream) == [
        *(e.position for e in events),
        events[-1].position + 3,
        *(e.position for e in more),
    ]
    assert again.end is not None and again.end.position == more[-1].position


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def own_bus(broker: EmbeddedNats) -> AsyncIterator[Bus]:
    bus = await connect_bus(broker.url, name="test-audit-restart")
    await bus.ensure_audit_stream(0)
    yield bus
    await bus.close()


async def test_a_broker_restarted_mid_batch_loses_and_repeats_nothing(
    store: EventStore,
    pool: AsyncConnectionPool,
    own_bus: Bus,
    broker: EmbeddedNats,
) -> None:
    events = []
    for _ in range(8):
        events += await append_projects(store, 1000)
    async with AuditPublisher(
        own_bus, pool, name="restart", batch_size=200, ack_timeout=2
    ) as publisher:
        async with asyncio.timeout(30):
            while publisher.position == 0:  # noqa: ASYNC110 - a plain attribute
                await asyncio.sleep(0.002)
        await asyncio.to_thread(broker.stop)  # under way
        stopped_at = publisher.position
        await asyncio.sleep(1.0)
        await asyncio.to_thread(broker.start)
        async with asyncio.timeout(60):
            while publisher.position < events[-1].position:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    assert stopped_at < events[-1].position  # the outage came mid-log
    # this broker's stream holds this log alone: every position, once, in order
    assert await stream_positions(own_bus) == list(range(1, events[-1].position + 1))
