"""The bus connection: NATS JetStream streams, publishing and pull consumers.

JetStream defaults are set on purpose here: the dedupe window, the ack wait
and the cap on unacknowledged messages. nats errors become `BusError` at
this one boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import nats
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError as JsNotFound

from animus.errors import BusError
from contracts.bus import (
    CONTROL_STREAM,
    DEAD_LETTER_PREFIX,
    DEAD_LETTER_STREAM,
    EVENTS_STREAM,
    LAUNCH_STREAM,
    REPORT_STREAM,
)

log = structlog.get_logger(__name__)

DEDUPE_WINDOW_SECONDS = 24 * 3600
ACK_WAIT_SECONDS = 60
MAX_ACK_PENDING = 4096

STREAMS: tuple[StreamConfig, ...] = (
    StreamConfig(
        name=EVENTS_STREAM,
        subjects=["animus.events.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DEDUPE_WINDOW_SECONDS,
    ),
    StreamConfig(
        name=LAUNCH_STREAM,
        subjects=["animus.launch.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DEDUPE_WINDOW_SECONDS,
    ),
    StreamConfig(
        name=CONTROL_STREAM,
        subjects=["animus.control.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DEDUPE_WINDOW_SECONDS,
    ),
    StreamConfig(
        name=REPORT_STREAM,
        subjects=["animus.report.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DEDUPE_WINDOW_SECONDS,
    ),
    StreamConfig(
        name=DEAD_LETTER_STREAM,
        subjects=[DEAD_LETTER_PREFIX + ">"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DEDUPE_WINDOW_SECONDS,
    ),
)


@dataclass(frozen=True, kw_only=True)
class PublishAck:
    stream: str
    seq: int
    duplicate: bool


class Bus:
    """One NATS connection with its JetStream context."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()

    async def ensure_streams(self) -> None:
        """Create or update every stream the platform uses."""
        for config in STREAMS:
            try:
                try:
                    await self.js.stream_info(config.name)
                    await self.js.update_stream(config)
                except JsNotFound:
                    await self.js.add_stream(config)
            except nats.errors.Error as exc:
                raise BusError(f"cannot set up stream {config.name}: {exc}") from exc

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str,
        timeout: float = 10,
        headers: dict[str, str] | None = None,
    ) -> PublishAck:
        """Publish with a dedupe id and wait for the stream's acknowledgement."""
        try:
            ack = await self.js.publish(
                subject,
                payload,
                timeout=timeout,
                headers={**(headers or {}), "Nats-Msg-Id": msg_id},
            )
        except nats.errors.Error as exc:
            raise BusError(f"publish to {subject} failed: {exc}") from exc
        return PublishAck(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))

    async def pull_consumer(
        self,
        *,
        stream: str,
        durable: str,
        subject: str,
        ack_wait: float = ACK_WAIT_SECONDS,
        deliver_new_only: bool = False,
    ) -> JetStreamContext.PullSubscription:
        """Bind a durable pull consumer with explicit acks and set limits."""
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_ack_pending=MAX_ACK_PENDING,
            max_deliver=-1,
            filter_subject=subject,
            deliver_policy=(
                DeliverPolicy.NEW if deliver_new_only else DeliverPolicy.ALL
            ),
        )
        try:
            return await self.js.pull_subscribe(
                subject, durable=durable, stream=stream, config=config
            )
        except nats.errors.Error as exc:
            raise BusError(f"cannot bind consumer {durable}: {exc}") from exc

    async def check(self) -> None:
        """Raise BusError unless JetStream answers."""
        try:
            await self.js.account_info()
        except nats.errors.Error as exc:
            raise BusError(f"JetStream not available: {exc}") from exc

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()


async def connect_bus(url: str, *, name: str) -> Bus:
    """Connect with unlimited reconnects; the client resumes by itself."""

    async def on_error(exc: Exception) -> None:
        log.warning("bus_error", error=str(exc))

    async def on_disconnect() -> None:
        log.warning("bus_disconnected")

    async def on_reconnect() -> None:
        log.info("bus_reconnected")

    try:
        nc = await nats.connect(
            url,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
    except (nats.errors.Error, OSError) as exc:
        raise BusError(f"cannot connect to NATS at {url}: {exc}") from exc
    return Bus(nc)


Handler = Callable[[Msg], Awaitable[None]]


async def fetch_batch(
    sub: JetStreamContext.PullSubscription, *, batch: int = 32, timeout: float = 1.0
) -> list[Msg]:
    """Fetch up to `batch` messages; an empty list when none arrived in time."""
    try:
        return await sub.fetch(batch, timeout=timeout)
    except nats.errors.TimeoutError:
        return []
    except nats.errors.Error as exc:
        raise BusError(f"fetch failed: {exc}") from exc


@asynccontextmanager
async def bus_session(url: str, *, name: str) -> AsyncIterator[Bus]:
    bus = await connect_bus(url, name=name)
    try:
        await bus.ensure_streams()
        yield bus
    finally:
        await bus.close()


def header(msg: Msg, key: str) -> Any:
    return (msg.headers or {}).get(key)


async def settle(action: Callable[..., Awaitable[None]], **kwargs: Any) -> bool:
    """Ack, nak, term or in_progress a message; False when the bus refused.

    A refused settle only means JetStream delivers the message again.
    """
    try:
        await action(**kwargs)
    except nats.errors.Error as exc:
        log.warning("bus_settle_failed", error=str(exc))
        return False
    return True


async def drop_subscription(sub: JetStreamContext.PullSubscription | None) -> None:
    """Forget a subscription; its durable consumer stays on the server."""
    if sub is None:
        return
    with contextlib.suppress(nats.errors.Error):
        await sub.unsubscribe()
