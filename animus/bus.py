"""The bus connection: NATS JetStream streams, publishing and pull consumers.

JetStream defaults are set on purpose here: the dedupe window, the ack wait
and the cap on unacknowledged messages. nats errors become `BusError` at
this one boundary.

A connection is made in the background and retried every half second until
it succeeds; after that the client reconnects by itself. A process that
cannot work without the bus waits for it a bounded time (`connect_bus`); one
that can serve without it (the gateway) goes on and reports not ready.

`Bus.publish_batch` pipelines: it sends a batch's messages back to back on
the one connection (the server handles them in that order) and then waits
for all acknowledgements, so a batch costs one round trip, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
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
    RawStreamMsg,
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


@dataclass(frozen=True, kw_only=True)
class Outgoing:
    """One message of a pipelined batch (`Bus.publish_batch`)."""

    subject: str
    payload: bytes
    msg_id: str
    headers: Mapping[str, str] = field(default_factory=dict)


class _AckInbox:
    """One reply subscription for every pipelined publish of a connection.

    nats-py's own `publish_async` is not used: in 2.16 a publish the server
    refuses (a wrong expected last sequence, say) leaves its future pending
    for ever, because the reply handler raises instead of setting the error.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.waiting: dict[str, asyncio.Future[PublishAck | BusError]] = {}
        self._tokens = itertools.count(1)

    def expect(self) -> tuple[str, asyncio.Future[PublishAck | BusError]]:
        token = str(next(self._tokens))
        future = asyncio.get_running_loop().create_future()
        self.waiting[token] = future
        return f"{self.prefix}.{token}", future

    def forget(self, reply: str) -> None:
        self.waiting.pop(reply.rsplit(".", 1)[1], None)

    async def on_reply(self, msg: Msg) -> None:
        future = self.waiting.pop(msg.subject.rsplit(".", 1)[1], None)
        if future is not None and not future.done():
            future.set_result(_ack_of(msg))


def _ack_of(msg: Msg) -> PublishAck | BusError:
    """A JetStream publish reply as the acknowledgement or the refusal."""
    if msg.headers and msg.headers.get("Status") == "503":
        return BusError("no JetStream stream takes this subject")
    try:
        answer = json.loads(msg.data)
        if "error" in answer:
            error = answer["error"]
            return BusError(
                f"JetStream refused the message: {error.get('description')} "
                f"(err_code {error.get('err_code')})"
            )
        return PublishAck(
            stream=answer["stream"],
            seq=int(answer["seq"]),
            duplicate=bool(answer.get("duplicate")),
        )
    except (ValueError, TypeError, KeyError) as exc:
        return BusError(f"unreadable JetStream acknowledgement: {exc}")


class Bus:
    """One NATS connection with its JetStream context."""

    def __init__(self, nc: Client, *, url: str = "") -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.where = _where(url)
        self.closing = False
        self.failures = 0  # failed attempts since the last success
        self._connecting: asyncio.Task[None] | None = None
        self._acks: _AckInbox | None = None

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

    async def publish_batch(
        self, messages: Sequence[Outgoing], *, timeout: float = 10
    ) -> list[PublishAck | BusError]:
        """Send every message, then wait for all acknowledgements.

        One outcome per message, in order: its acknowledgement, or the
        BusError that stands for it (refused by the server; or not answered
        within `timeout` seconds, or not sent: stored or not, unknown).
        Nothing is raised for a single message; the caller decides what a
        partial batch means.
        """
        try:
            if self._acks is None:
                acks = _AckInbox(self.nc.new_inbox())
                await self.nc.subscribe(f"{acks.prefix}.*", cb=acks.on_reply)
                self._acks = acks
        except nats.errors.Error as exc:
            failed = BusError(f"cannot subscribe to acknowledgements: {exc}")
            return [failed] * len(messages)
        acks = self._acks
        futures: list[asyncio.Future[PublishAck | BusError]] = []
        unsent: BusError | None = None
        try:
            for message in messages:
                reply, future = acks.expect()
                try:
                    await self.nc.publish(
                        message.subject,
                        message.payload,
                        reply=reply,
                        headers={**message.headers, "Nats-Msg-Id": message.msg_id},
                    )
                except nats.errors.Error as exc:
                    acks.forget(reply)
                    unsent = BusError(f"publish to {message.subject} failed: {exc}")
                    break
                futures.append(future)
            if futures:
                await asyncio.wait(futures, timeout=timeout)
        finally:
            for future in futures:
                future.cancel()  # no-op on an answered one
            acks.waiting = {
                token: future
                for token, future in acks.waiting.items()
                if not future.done()
            }
        silent = BusError(f"no acknowledgement within {timeout:g}s")
        outcomes = [
            future.result() if not future.cancelled() else silent for future in futures
        ]
        lost = unsent or BusError("not sent")
        return outcomes + [lost] * (len(messages) - len(outcomes))

    async def last_stored(self, stream: str) -> RawStreamMsg | None:
        """The stream's last message; None when the stream is empty or its
        last message was deleted.

        Raises:
            BusError: JetStream did not answer.
        """
        try:
            info = await self.js.stream_info(stream)
            if not info.state.messages:
                return None
            return await self.js.get_msg(stream, seq=info.state.last_seq)
        except JsNotFound:
            return None
        except nats.errors.Error as exc:
            raise BusError(f"cannot read the end of stream {stream}: {exc}") from exc

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
