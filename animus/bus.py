"""The bus connection: NATS JetStream streams, publishing and pull consumers.

JetStream defaults are set on purpose here: the dedupe window, the ack wait
and the cap on unacknowledged messages. nats errors become `BusError` at
this one boundary.

A connection is made in the background and retried every half second until
it succeeds; after that the client reconnects by itself. A process that
cannot work without the bus waits for it a bounded time (`connect_bus`); one
that can serve without it (the gateway) goes on and reports not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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
    AUDIT_PREFIX,
    AUDIT_STREAM,
    CONTROL_STREAM,
    DEAD_LETTER_PREFIX,
    DEAD_LETTER_STREAM,
    EVENTS_STREAM,
    EVIDENCE_STREAM,
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
        # signed checkpoints: kept without a time limit, copies outside the db
        name=EVIDENCE_STREAM,
        subjects=["animus.evidence.>"],
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


def audit_stream_config(retention_seconds: float) -> StreamConfig:
    """The SIEM stream: file storage, kept `retention_seconds` (0: for ever).

    Set up by the processes that know the retention setting (the relay, and
    `animus up` before it starts anything), not by `ensure_streams`.
    """
    return StreamConfig(
        name=AUDIT_STREAM,
        subjects=[AUDIT_PREFIX + ">"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=retention_seconds,
        duplicate_window=DEDUPE_WINDOW_SECONDS,
    )


@dataclass(frozen=True, kw_only=True)
class PublishAck:
    stream: str
    seq: int
    duplicate: bool


class Bus:
    """One NATS connection with its JetStream context."""

    def __init__(self, nc: Client, *, url: str = "") -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.where = _where(url)
        self.closing = False
        self.failures = 0  # failed attempts since the last success
        self._connecting: asyncio.Task[None] | None = None

    async def connected(self, timeout: float | None = None) -> None:
        """Wait until the first connection is made, at most `timeout` seconds.

        Raises:
            BusError: NATS did not answer in time; the bus keeps trying.
        """
        if self._connecting is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._connecting), timeout)
        except TimeoutError:
            raise BusError(
                f"ANIMUS_NATS_URL: NATS at {self.where} did not answer within "
                f"{timeout:g}s (see ANIMUS_NATS_WAIT_SECONDS)"
            ) from None
        except (nats.errors.Error, OSError) as exc:
            raise BusError(
                f"ANIMUS_NATS_URL: cannot connect to NATS at {self.where}: {exc}"
            ) from exc

    async def ensure_streams(self) -> None:
        """Create or update every stream the platform uses."""
        for config in STREAMS:
            await self._ensure(config)

    async def _ensure(self, config: StreamConfig) -> None:
        try:
            try:
                await self.js.stream_info(config.name)
                await self.js.update_stream(config)
            except JsNotFound:
                await self.js.add_stream(config)
        except nats.errors.Error as exc:
            raise BusError(f"cannot set up stream {config.name}: {exc}") from exc

    async def ensure_audit_stream(self, retention_seconds: float) -> None:
        """Create or update the SIEM stream with its retention."""
        await self._ensure(audit_stream_config(retention_seconds))

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
        if not self.nc.is_connected:
            raise BusError(f"not connected to NATS at {self.where}")
        try:
            await self.js.account_info()
        except nats.errors.Error as exc:
            raise BusError(f"JetStream not available: {exc}") from exc

    async def close(self) -> None:
        """Drain a live connection; stop trying when none was made yet."""
        self.closing = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self.nc.is_closed:
            return
        if self.nc.is_connected:
            await self.nc.drain()
        else:
            with contextlib.suppress(nats.errors.Error, OSError):
                await self.nc.close()

    # client callbacks: one warning per outage, not one per attempt

    async def _on_error(self, exc: Exception) -> None:
        self.failures += 1
        if self.closing:
            return
        (log.warning if self.failures == 1 else log.debug)(
            "bus_error",
            error=str(exc) or type(exc).__name__,
            nats=self.where,
            attempts=self.failures,
        )

    async def _on_disconnect(self) -> None:
        if self.closing:
            log.info("bus_closed", nats=self.where)  # we closed it ourselves
        else:
            log.warning("bus_disconnected", nats=self.where)

    async def _on_reconnect(self) -> None:
        self.failures = 0
        log.info("bus_reconnected", nats=self.where)


def _where(url: str) -> str:
    """host:port of a NATS URL, without credentials."""
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.hostname:
            return f"{parts.hostname}:{parts.port or 4222}"
    return "the configured address"


def open_bus(url: str, *, name: str) -> Bus:
    """A bus that connects in the background, trying until it is closed.

    `Bus.connected` waits for the first connection; until then `check` fails.
    """
    nc = Client()
    bus = Bus(nc, url=url)

    async def connect() -> None:
        await nc.connect(
            url,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            allow_reconnect=True,
            error_cb=bus._on_error,
            disconnected_cb=bus._on_disconnect,
            reconnected_cb=bus._on_reconnect,
        )
        if bus.failures:
            log.info("bus_connected", nats=bus.where, failed_attempts=bus.failures)
        bus.failures = 0

    bus._connecting = asyncio.create_task(connect(), name=f"{name}-connect")
    return bus


async def connect_bus(url: str, *, name: str, wait: float | None = None) -> Bus:
    """Connect, waiting at most `wait` seconds (None: until connected).

    Raises:
        BusError: NATS did not answer in time; naming ANIMUS_NATS_URL.
    """
    bus = open_bus(url, name=name)
    try:
        await bus.connected(wait)
    except BaseException:
        await bus.close()
        raise
    return bus


Handler = Callable[[Msg], Awaitable[None]]


async def fetch_batch(
    sub: JetStreamContext.PullSubscription, *, batch: int = 32, timeout: float = 1.0
) -> list[Msg]:
    """Fetch up to `batch` messages; an empty list when none arrived in time."""
    try:
        return await sub.fetch(batch, timeout=timeout)
    except (nats.errors.TimeoutError, TimeoutError):
        # nats-py sometimes lets the bare asyncio timeout escape a fetch
        return []
    except nats.errors.Error as exc:
        raise BusError(f"fetch failed: {exc}") from exc


@asynccontextmanager
async def bus_session(
    url: str, *, name: str, wait: float | None = None
) -> AsyncIterator[Bus]:
    """A connected bus with every stream set up; `wait` as in `connect_bus`."""
    bus = await connect_bus(url, name=name, wait=wait)
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
