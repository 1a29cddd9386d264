"""The SIEM stream on real JetStream: a durable subscriber that goes away and
comes back receives every audit record once and in order; subscribers filter
by project and event type with subject wildcards; a new subscriber starts
after a position; and a record deleted from the stream is reported as a gap
naming its position, by the helper and by `animus siem follow`."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
from typing import Any

from psycopg_pool import AsyncConnectionPool
from siemtest import append_dataset, append_projects, check_schema

from animus.bus import Bus
from animus.eventstore import EventStore
from animus.settings import load_settings
from animus.siem import ChainChecker
from animus.siem.follow import follow, follow_records, subscribe
from animus.siem.stream import POSITION_HEADER, AuditPublisher
from contracts.bus import AUDIT_STREAM


async def published_up_to(publisher: AuditPublisher, position: int) -> None:
    for _ in range(500):
        if publisher.position >= position:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the publisher stopped at {publisher.position}")


async def receive(sub: Any, count: int) -> list[dict[str, Any]]:
    """`count` records (acked), or fewer if the stream runs dry."""
    got: list[dict[str, Any]] = []
    async for record, msg in follow_records(sub, idle_seconds=2.0):
        got.append(record)
        await msg.ack()
        if len(got) == count:
            break
    return got


class TestDurableSubscriber:
    async def test_a_subscriber_that_was_away_gets_every_record_once_in_order(
        self, store: EventStore, bus: Bus, publisher: AuditPublisher
    ) -> None:
        durable = f"siem-{secrets.token_hex(3)}"
        before = await append_projects(store, 5)
        sub = await subscribe(bus, durable=durable)
        first = await receive(sub, 5)
        await sub.unsubscribe()  # the subscriber goes away

        missed = await append_projects(store, 40)
        await published_up_to(publisher, missed[-1].position)

        sub = await subscribe(bus, durable=durable)  # and comes back
        rest = await receive(sub, 1000)
        await sub.unsubscribe()

        got = first + rest
        wanted = [str(e.event_id) for e in before + missed]
        assert [r["event_id"] for r in got] == wanted
        assert [r["position"] for r in got] == list(range(1, 46))
        checker = ChainChecker(after=0)
        assert [f for r in got for f in checker.check(r)] == []
        for record in got:
            check_schema(record)

    async def test_a_republished_batch_is_deduplicated_by_event_id(
        self, bus: Bus, pool: AsyncConnectionPool, publisher: AuditPublisher
    ) -> None:
        before = (await bus.js.stream_info(AUDIT_STREAM)).state.messages
        again = AuditPublisher(bus, pool, name=f"again-{secrets.token_hex(3)}")
        assert await again.run_once() > 0  # a lost checkpoint: all once more
        assert (await bus.js.stream_info(AUDIT_STREAM)).state.messages == before


class TestFilters:
    async def test_a_subscriber_filters_by_project_and_by_event_type(
        self, store: EventStore, bus: Bus, publisher: AuditPublisher
    ) -> None:
        [project] = await append_projects(store, 1)
        project_id = project.project_id or ""
        dataset = await append_dataset(store, project_id)
        await append_projects(store, 3)
        await published_up_to(publisher, dataset.position + 3)

        sub = await subscribe(bus, project_id=project_id)
        mine = await receive(sub, 100)
        await sub.unsubscribe()
        assert [r["position"] for r in mine] == [project.position, dataset.position]

        sub = await subscribe(bus, event_type="DatasetRegistered")
        typed = await receive(sub, 100)
        await sub.unsubscribe()
        assert dataset.position in [r["position"] for r in typed]
        assert {r["type"] for r in typed} == {"DatasetRegistered"}

        msg = await bus.js.get_msg(AUDIT_STREAM, subject=f"animus.audit.{project_id}.>")
        assert msg.headers and msg.headers[POSITION_HEADER] == str(dataset.position)

    async def test_a_new_subscriber_starts_after_a_position(
        self, store: EventStore, bus: Bus, publisher: AuditPublisher
    ) -> None:
        events = await append_projects(store, 10)
        await published_up_to(publisher, events[-1].position)
        after = events[3].position
        sub = await subscribe(bus, after=after)
        got = await receive(sub, 3)
        await sub.unsubscribe()
        assert [r["position"] for r in got] == [after + 1, after + 2, after + 3]


class TestPlantedGap:
    async def test_a_deleted_message_is_reported_with_its_position(
        self,
        store: EventStore,
        bus: Bus,
        publisher: AuditPublisher,
        services: Any,
    ) -> None:
        events = await append_projects(store, 6)
        await published_up_to(publisher, events[-1].position)
        victim = events[2]
        msg = await bus.js.get_msg(
            AUDIT_STREAM, subject=f"animus.audit.{victim.project_id}.ProjectCreated"
        )
        assert await bus.js.delete_msg(AUDIT_STREAM, msg.seq)

        out, err = io.StringIO(), io.StringIO()
        settings = load_settings(nats_url=services.nats_url, environment="test")
        code = await follow(
            settings,
            after=events[0].position - 1,
            project_id=None,
            event_type=None,
            durable=None,
            idle_seconds=1.5,
            out=out,
            err=err,
        )
        assert code == 1
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        positions = [r["position"] for r in lines]
        assert victim.position not in positions
        assert positions[:2] == [events[0].position, events[1].position]
        assert err.getvalue() == (
            f"animus siem: gap at position {victim.position + 1}: "
            f"position {victim.position} is missing\n"
        )
