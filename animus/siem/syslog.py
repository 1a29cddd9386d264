"""Forwarding the audit records to a syslog collector (RFC 5424 over TCP).

For collectors that speak only syslog: every event, in position order, as
one RFC 5424 message over TCP with octet-counting framing (RFC 6587), or
over TLS (RFC 5425) for a `tls://` address. The message is

    <110>1 <recorded_at> <hostname> <app-name> <procid> <event type>
      [animus@32473 position="…" event_id="…" hash="…" prev_hash="…"
      project="…" type="…"] <the SIEM record as JSON>

facility 13 (log audit), severity 6 (informational); the timestamp is the
event's `recorded_at`. The structured data repeat what a collector needs
to order, deduplicate and link the records without parsing the JSON. A
record longer than `ANIMUS_SYSLOG_MAX_MESSAGE_BYTES` (default 8192, what
RFC 5425 receivers SHOULD accept) is sent as its summary: the record
without `data`, `metadata` and `canonical`, with `"summary": true`; the
hash and the link can still be followed, the full record is one HTTP
export away. The message is UTF-8 without a byte-order mark (MSG-ANY):
collectors such as rsyslog keep a BOM as part of the text, which JSON
parsers then refuse. 32473 is the enterprise number RFC 5612 reserves for
documentation; the SD-ID is fixed by contracts/siem.md.

The formatting, the framing and TLS come from `rfc5424-logging-handler`
(its `Rfc5424SysLogHandler.build_msg` and its socket transports), used
directly rather than as a logging handler: a logging handler swallows send
errors, and the forwarder must know that a record did not leave.

`SyslogForwarder` is a log follower (animus/follower.py) under the
checkpoint name `syslog`, run by the relay process when ANIMUS_SYSLOG_URL
is set; it sends a batch from a worker thread and advances its checkpoint
after the batch was written. Syslog has no acknowledgements: after a
failure the batch is sent again (a collector drops repeats by position),
and a message written into a connection the collector had just closed can
be lost unnoticed; before each batch the forwarder reconnects if the
collector closed the connection, and the positions in the structured data
let the collector see any gap.
"""

from __future__ import annotations

import asyncio
import io
import logging
import select
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from psycopg_pool import AsyncConnectionPool
from rfc5424logging import transport as rfc5424_transport
from rfc5424logging.handler import Rfc5424SysLogHandler

from animus.errors import SyslogError
from animus.follower import BATCH_SIZE, IDLE_INTERVAL, LogFollower
from animus.settings import Settings
from animus.siem.record import record_line
from animus.siem.stream import AuditRecord, read_records

__all__ = [
    "SD_ID",
    "SYSLOG_CHECKPOINT",
    "SyslogForwarder",
    "SyslogSender",
    "SyslogTarget",
]

log = structlog.get_logger(__name__)

SYSLOG_CHECKPOINT = "syslog"
SD_ID = "animus@32473"
FACILITY_LOG_AUDIT = 13
SUMMARY_DROPS = ("data", "metadata", "canonical")
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, kw_only=True)
class SyslogTarget:
    """Where and how to send: the collector and the message header."""

    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    app_name: str = "animus"
    hostname: str | None = None
    max_message_bytes: int = 8192

    @classmethod
    def from_settings(cls, settings: Settings) -> SyslogTarget | None:
        """The target ANIMUS_SYSLOG_URL names, or None when it is unset."""
        if not settings.syslog_url:
            return None
        parts = urlsplit(settings.syslog_url)
        assert parts.hostname and parts.port  # checked when settings load
        return cls(
            host=parts.hostname,
            port=parts.port,
            tls=parts.scheme == "tls",
            ca_file=settings.syslog_ca_file,
            cert_file=settings.syslog_cert_file,
            key_file=settings.syslog_key_file,
            app_name=settings.syslog_app_name,
            hostname=settings.syslog_hostname,
            max_message_bytes=settings.syslog_max_message_bytes,
        )

    @property
    def where(self) -> str:
        return f"{'tls' if self.tls else 'tcp'}://{self.host}:{self.port}"


class SyslogSender:
    """Formats records as RFC 5424 messages and writes them, blocking.

    Not thread-safe; the forwarder uses it from one worker thread at a time.
    """

    def __init__(self, target: SyslogTarget) -> None:
        self.target = target
        # formats only: its own transport writes to a buffer nobody reads
        self._formatter = Rfc5424SysLogHandler(
            stream=io.BytesIO(),
            facility=FACILITY_LOG_AUDIT,
            hostname=target.hostname,
            appname=target.app_name,
            msg_as_utf8=False,
            utc_timestamp=True,
        )
        self._transport: Any = None

    def message(self, item: AuditRecord) -> bytes:
        """The RFC 5424 message of one record (before framing)."""
        full = self._build(item, item.line)
        if len(full) <= self.target.max_message_bytes:
            return full
        summary = {k: v for k, v in item.record.items() if k not in SUMMARY_DROPS}
        summary["summary"] = True
        return self._build(item, record_line(summary))

    def send(self, items: Sequence[AuditRecord]) -> None:
        """Write the records in order, connecting first where needed.

        Raises:
            SyslogError: the collector cannot be reached or dropped us.
        """
        messages = [self.message(item) for item in items]
        try:
            if self._transport is not None and _peer_closed(self._transport):
                log.info("syslog_reconnecting", syslog=self.target.where)
                self.close()
            if self._transport is None:
                self._transport = self._connect()
            for message in messages:
                self._transport.transmit(message)
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise SyslogError(f"syslog at {self.target.where}: {exc}") from exc

    def close(self) -> None:
        if self._transport is not None:
            transport, self._transport = self._transport, None
            try:
                transport.close()
            except OSError:
                pass

    def _connect(self) -> Any:
        t = self.target
        framing = rfc5424_transport.FRAMING_OCTET_COUNTING
        if not t.tls:
            return rfc5424_transport.TCPSocketTransport(
                (t.host, t.port), CONNECT_TIMEOUT, framing
            )
        return rfc5424_transport.TLSSocketTransport(
            (t.host, t.port),
            CONNECT_TIMEOUT,
            framing,
            str(t.ca_file) if t.ca_file else None,
            True,
            str(t.cert_file) if t.cert_file else None,
            str(t.key_file) if t.key_file else None,
            None,
        )

    def _build(self, item: AuditRecord, text: str) -> bytes:
        record = logging.LogRecord(
            self.target.app_name, logging.INFO, "", 0, text, None, None
        )
        record.created = datetime.fromisoformat(item.record["recorded_at"]).timestamp()
        record.msgid = item.type  # type: ignore[attr-defined]
        record.structured_data = {  # type: ignore[attr-defined]
            SD_ID: {
                "position": item.position,
                "event_id": item.event_id,
                "hash": item.record["hash"],
                "prev_hash": item.record["prev_hash"],
                "project": item.project_id or "",
                "type": item.type,
            }
        }
        message: bytes = self._formatter.build_msg(record)
        return message


def _peer_closed(transport: Any) -> bool:
    """True when the collector closed the connection (it never writes)."""
    sock: socket.socket = transport.socket
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class SyslogForwarder(LogFollower[AuditRecord]):
    """Forwards every event as a syslog message, from its own checkpoint."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        target: SyslogTarget,
        *,
        name: str = SYSLOG_CHECKPOINT,
        batch_size: int = BATCH_SIZE,
        idle_interval: float = IDLE_INTERVAL,
    ) -> None:
        super().__init__(
            pool, name=name, batch_size=batch_size, idle_interval=idle_interval
        )
        self.sender = SyslogSender(target)

    async def stop(self) -> None:
        await super().stop()
        self.sender.close()

    async def _read(self, after: int, limit: int) -> list[AuditRecord]:
        async with self._pool.connection() as conn:
            return await read_records(conn, after=after, limit=limit)

    async def _deliver(self, items: Sequence[AuditRecord]) -> None:
        await asyncio.to_thread(self.sender.send, items)
