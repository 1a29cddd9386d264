"""Subscribing to the SIEM stream: `animus siem follow`, and its parts.

A subscriber binds a pull consumer on `ANIMUS_AUDIT` filtered by project
and/or event type (`audit_filter`). A named (durable) consumer keeps its
place on the server: a subscriber that disconnects and comes back gets
every record it missed, once, in order. A new consumer starts after a
position: the stream sequence to start from is found by bisection over
the stream (records are in position order), so `--after` costs a few
lookups, not a replay. A cursor beyond the log's head is refused, as the
HTTP export refuses it: it comes from another log (a restored or replaced
database), and waiting after it would hide that.

Each record is checked with `ChainChecker` (animus/siem/record.py); the
command prints the records as NDJSON on stdout and one plain line on
stderr for every gap or change it detects, and exits 1 if it saw one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import IO, Any

import nats
import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError as JsNotFound

from animus.bus import (
    MAX_ACK_PENDING,
    Bus,
    connect_bus,
    drop_subscription,
    fetch_batch,
    settle,
)
from animus.errors import BusError, ConfigurationError
from animus.settings import Settings
from animus.siem.record import ChainChecker
from contracts.bus import AUDIT_PREFIX, AUDIT_STREAM, audit_filter

__all__ = [
    "check_options",
    "consumer_exists",
    "follow_command",
    "follow_records",
    "start_sequence",
    "subscribe",
]

log = structlog.get_logger(__name__)

ACK_WAIT_SECONDS = 60.0
FETCH_BATCH = 256
MAX_CONSUMER_NAME = 255
"""The longest consumer name nats-server takes (JSMaxNameLen)."""
_NOT_IN_NAMES = frozenset(".*>/\\")


def check_options(
    *, after: int, durable: str | None, idle_seconds: float | None
) -> None:
    """Refuse what JetStream or the follower could not use, before connecting.

    A durable name follows NATS's rules for consumer names: printable, no
    whitespace, none of `.` `*` `>` (subject tokens) or `/` `\\` (it names
    a folder on the server), at most 255 characters.

    Raises:
        ConfigurationError: one option is wrong, named as on the command line.
    """
    if after < 0:
        raise ConfigurationError("--after: must be a position, 0 or more")
    if idle_seconds is not None and not idle_seconds >= 0:  # NaN too
        raise ConfigurationError("--idle-exit: must be 0 seconds or more")
    if durable is not None and not _is_consumer_name(durable):
        raise ConfigurationError(
            f"--durable: {durable!r} is not a NATS consumer name: 1 to "
            f"{MAX_CONSUMER_NAME} printable characters without spaces, "
            "'.', '*', '>', '/' or '\\'"
        )


def _is_consumer_name(name: str) -> bool:
    return (
        0 < len(name) <= MAX_CONSUMER_NAME
        and name.isprintable()
        and not any(c.isspace() or c in _NOT_IN_NAMES for c in name)
    )


async def log_head(settings: Settings, bus: Bus) -> int | None:
    """The position of the log's last event, as far as this follower can see.

    From the database when one is set (the HTTP export's check: the stream
    may lag it); else the last record in the stream, all that a subscriber
    with only the bus sees. None when the stream's last message was deleted
    (the head is then unknown).

    Raises:
        TransientStoreError: the database does not answer.
        BusError: JetStream did not answer.
    """
    if settings.database_url or settings.app_database_url:
        from psycopg import AsyncConnection

        from animus.db import app_dsn, translate_db_errors
        from animus.siem.stream import head_position

        with translate_db_errors():
            conn = await AsyncConnection.connect(app_dsn(settings), autocommit=True)
        async with conn:
            return await head_position(conn)
    try:
        state = (await bus.js.stream_info(AUDIT_STREAM)).state
    except nats.errors.Error as exc:
        raise BusError(f"cannot read stream {AUDIT_STREAM}: {exc}") from exc
    if not state.last_seq:
        return 0
    return await _position_from(bus, state.last_seq)


async def start_sequence(bus: Bus, after: int) -> int:
    """The first stream sequence holding a record after position `after`.

    Raises:
        BusError: JetStream did not answer.
    """
    try:
        state = (await bus.js.stream_info(AUDIT_STREAM)).state
    except nats.errors.Error as exc:
        raise BusError(f"cannot read stream {AUDIT_STREAM}: {exc}") from exc
    low, high = state.first_seq, state.last_seq + 1
    while low < high:
        middle = (low + high) // 2
        position = await _position_from(bus, middle)
        if position is None or position > after:
            high = middle
        else:
            low = middle + 1
    return low


async def _position_from(bus: Bus, sequence: int) -> int | None:
    """The position of the first record at or after stream `sequence`."""
    try:
        msg = await bus.js.get_msg(
            AUDIT_STREAM, seq=sequence, subject=AUDIT_PREFIX + ">", next=True
        )
    except JsNotFound:
        return None
    except nats.errors.Error as exc:
        raise BusError(f"cannot read stream {AUDIT_STREAM}: {exc}") from exc
    return int(json.loads(msg.data or b"{}")["position"])


async def subscribe(
    bus: Bus,
    *,
    after: int = 0,
    project_id: str | None = None,
    event_type: str | None = None,
    durable: str | None = None,
) -> JetStreamContext.PullSubscription:
    """A pull subscription on the SIEM stream.

    An existing durable consumer resumes where it stopped (`after` is then
    ignored); a new one starts with the first record after `after`.

    Raises:
        BusError: the stream is missing or JetStream refused the consumer.
    """
    subject = audit_filter(project_id, event_type)
    if durable is not None and await consumer_exists(bus, durable):
        return await _bind(bus, subject, durable, None)
    config = ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_SECONDS,
        max_ack_pending=MAX_ACK_PENDING,
        max_deliver=-1,
        filter_subject=subject,
        deliver_policy=DeliverPolicy.ALL,
    )
    if after > 0:
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = await start_sequence(bus, after)
    return await _bind(bus, subject, durable, config)


async def consumer_exists(bus: Bus, durable: str) -> bool:
    """Whether the durable consumer `durable` exists on the SIEM stream.

    Raises:
        BusError: JetStream did not answer.
    """
    try:
        await bus.js.consumer_info(AUDIT_STREAM, durable)
    except JsNotFound:
        return False
    except nats.errors.Error as exc:
        raise BusError(f"cannot read consumer {durable}: {exc}") from exc
    return True


async def _bind(
    bus: Bus, subject: str, durable: str | None, config: ConsumerConfig | None
) -> JetStreamContext.PullSubscription:
    try:
        return await bus.js.pull_subscribe(
            subject, durable=durable, stream=AUDIT_STREAM, config=config
        )
    except nats.errors.Error as exc:
        raise BusError(f"cannot subscribe to {AUDIT_STREAM}: {exc}") from exc


async def follow_records(
    sub: JetStreamContext.PullSubscription,
    *,
    after: int = 0,
    idle_seconds: float | None = None,
) -> AsyncIterator[tuple[dict[str, Any], Any]]:
    """Records in stream order with their messages; the caller acks each.

    Records at or before `after` are skipped (and acked). Ends after
    `idle_seconds` without a record; None follows for ever.
    """
    quiet_since = time.monotonic()
    while True:
        batch = await fetch_batch(sub, batch=FETCH_BATCH, timeout=1.0)
        if batch:
            quiet_since = time.monotonic()
        elif idle_seconds is not None:
            if time.monotonic() - quiet_since >= idle_seconds:
                return
        for msg in batch:
            record = json.loads(msg.data)
            if int(record.get("position", 0)) <= after:
                await settle(msg.ack)
                continue
            yield record, msg


async def follow(
    settings: Settings,
    *,
    after: int,
    project_id: str | None,
    event_type: str | None,
    durable: str | None,
    idle_seconds: float | None,
    out: IO[str],
    err: IO[str],
) -> int:
    """Print records as NDJSON and findings as plain lines; 1 if any."""
    check_options(after=after, durable=durable, idle_seconds=idle_seconds)
    if not settings.nats_url:
        raise ConfigurationError("ANIMUS_NATS_URL: no NATS server to follow")
    filtered = project_id is not None or event_type is not None
    found = 0
    bus = await connect_bus(
        settings.nats_url, name="animus-siem-follow", wait=settings.nats_wait_seconds
    )
    sub = None
    try:
        # a resumed consumer starts where it stopped, not after `after`
        resumed = durable is not None and await consumer_exists(bus, durable)
        start = None if resumed or not after else after
        if start is not None:
            head = await log_head(settings, bus)
            if head is not None and start > head:
                raise ConfigurationError(
                    f"--after {start} is beyond the log's head (position "
                    f"{head}); this cursor comes from another log"
                )
        checker = ChainChecker(after=start, contiguous=not filtered)
        sub = await subscribe(
            bus,
            after=after,
            project_id=project_id,
            event_type=event_type,
            durable=durable,
        )
        records = follow_records(sub, after=start or 0, idle_seconds=idle_seconds)
        async for record, msg in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            for finding in checker.check(record):
                found += 1
                err.write(f"animus siem: {finding}\n")
                err.flush()
            await settle(msg.ack)
    finally:
        await drop_subscription(sub)  # else closing drains it for 30 s
        await bus.close()
    return 1 if found else 0


def follow_command(settings: Settings, args: argparse.Namespace) -> int:
    """`animus siem follow`: run until Ctrl-C (or --idle-exit)."""
    from animus.stack import resolve_services

    check_options(after=args.after, durable=args.durable, idle_seconds=args.idle_exit)
    try:
        return asyncio.run(
            follow(
                resolve_services(settings),
                after=args.after,
                project_id=args.project,
                event_type=args.type,
                durable=args.durable,
                idle_seconds=args.idle_exit,
                out=sys.stdout,
                err=sys.stderr,
            )
        )
    except KeyboardInterrupt:
        return 0
