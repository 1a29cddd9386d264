"""The auditor's SIEM export: the log as newline-delimited JSON from a cursor.

`GET /audit/events?after=P` streams one SIEM record (`animus-siem/v1`,
contracts/siem.md) per line, in position order, starting after position P,
optionally of one project and one event type, up to `limit` records. The
records are read in batches of BATCH_SIZE, so memory stays bounded however
long the export. With `follow=true` the connection stays open: new events
are streamed as they commit (the log is polled every POLL_SECONDS while
idle; appends send no notification per event), and an empty line is sent
every HEARTBEAT_SECONDS without records so that proxies keep the
connection. Readers skip empty lines.

A cursor beyond the log's head answers 400: it comes from another log (a
restored or replaced database), and following it would hide that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from litestar import get
from litestar.params import QueryParameter
from litestar.response import Stream

from animus.siem.stream import head_position, read_records
from contracts.api import IDENTIFIER_PATTERN
from contracts.bus import PLATFORM_TOKEN
from gateway.auth import PERMISSION_OPT, Permission
from gateway.errors import BadRequest
from gateway.routing import Services, problems
from gateway.services import GatewayServices

NDJSON_MEDIA_TYPE = "application/x-ndjson"
BATCH_SIZE = 1000
POLL_SECONDS = 0.25
HEARTBEAT_SECONDS = 15.0
MAX_LIMIT = 1_000_000
"""The largest `limit`; unset, the export has no limit (records come in
batches, so memory stays bounded either way)."""
EVENT_TYPE_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,127}$"
PROJECT_FILTER_PATTERN = f"(?:{IDENTIFIER_PATTERN})|^{PLATFORM_TOKEN}$"

After = Annotated[
    int,
    QueryParameter(
        ge=0,
        le=2**63 - 1,
        description="The cursor: stream the records after this position (0: all)",
    ),
]
ProjectFilter = Annotated[
    str | None,
    QueryParameter(
        name="project",
        pattern=PROJECT_FILTER_PATTERN,
        description=f"Only this project's events; `{PLATFORM_TOKEN}` for the "
        "events of no project",
    ),
]
TypeFilter = Annotated[
    str | None,
    QueryParameter(
        pattern=EVENT_TYPE_PATTERN,
        description="Only events of this type (e.g. RunCanceled)",
    ),
]
RecordLimit = Annotated[
    int | None,
    QueryParameter(
        ge=1,
        le=MAX_LIMIT,
        description=f"Stop after this many records, at most {MAX_LIMIT} "
        "(unset: all)",
    ),
]
Follow = Annotated[
    bool,
    QueryParameter(
        description="Keep the connection and stream new events as they commit"
    ),
]


@get(
    "/audit/events",
    opt={PERMISSION_OPT: Permission.AUDIT_READ},
    media_type=NDJSON_MEDIA_TYPE,
    responses=problems(400),
)
async def export_audit_events(
    services: Services,
    after: After = 0,
    project: ProjectFilter = None,
    type: TypeFilter = None,  # the query's name: refusals name it as sent
    limit: RecordLimit = None,
    follow: Follow = False,
) -> Stream:
    """The audit log as newline-delimited JSON, one SIEM record per line.

    Records come in position order, after the cursor `after`. Each carries
    its position, hash, previous hash and canonical text, so a reader checks
    the chain itself (contracts/siem.md). With `follow=true` the stream does
    not end: new events arrive as they commit, and an empty line is sent
    while there are none; resume from the last position seen.
    """
    async with services.pool.connection() as conn:
        head = await head_position(conn)
    if after > head:
        raise BadRequest(
            f"after={after} is beyond the log's head (position {head}); "
            "this cursor comes from another log"
        )
    lines = _records(
        services,
        after=after,
        project=project,
        event_type=type,
        limit=limit,
        follow=follow,
    )
    return Stream(
        lines,
        media_type=NDJSON_MEDIA_TYPE,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _records(
    services: GatewayServices,
    *,
    after: int,
    project: str | None,
    event_type: str | None,
    limit: int | None,
    follow: bool,
) -> AsyncIterator[bytes]:
    """Batches of record lines; with a filter, the cursor still moves to
    the head read before each batch, so an idle follower never rescans."""
    cursor, left = after, limit
    quiet_since = time.monotonic()
    while left is None or left > 0:
        size = BATCH_SIZE if left is None else min(BATCH_SIZE, left)
        async with services.pool.connection() as conn:
            head = await head_position(conn)
            records = await read_records(
                conn,
                after=cursor,
                limit=size,
                until=head,
                project_id=project,
                event_type=event_type,
            )
        if records:
            yield "".join(f"{record.line}\n" for record in records).encode()
            if left is not None:
                left -= len(records)
            quiet_since = time.monotonic()
        if len(records) == size:
            cursor = records[-1].position
            continue
        cursor = head  # nothing else up to the head matches
        if not follow:
            return
        if time.monotonic() - quiet_since >= HEARTBEAT_SECONDS:
            yield b"\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_SECONDS)


ROUTES = [export_audit_events]
